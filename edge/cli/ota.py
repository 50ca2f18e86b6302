"""``edge ota`` (fleet side: keygen, publish, rotate, upload, desire, report) and the ``ota``
lines of ``edge status``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def status_lines(ota: dict[str, Any] | None) -> list[str]:
    """The ``ota`` lines of ``edge status``: versions, the probation, the last error."""
    if not ota:
        return []
    active = ", ".join(f"{k} {v}" for k, v in ota.get("active", {}).items()) or "nothing"
    lines = [f"ota    revision {ota.get('revision') or '-'}: {active}"]
    prob = ota.get("probation")
    if prob:
        lines.append(f"       on probation: revision {prob['revision']}, {prob['remaining_s']} s left")
    for key, reason in (ota.get("bad") or {}).items():
        lines.append(f"       bad {key}: {reason}")
    if ota.get("waiting"):
        lines.append(f"       waiting: {ota['waiting']}")
    err = ota.get("last_error")
    if err:
        lines.append(f"       update refused ({err.get('reason')}): {err.get('message')}")
    return lines


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ota", help="signed over-the-air updates (docs/ota.md)")
    s = p.add_subparsers(dest="ota_cmd", required=True)
    k = s.add_parser("keygen", help="create a fleet repository: keys and root metadata")
    k.add_argument("--repo", default="fleet")
    k.add_argument("--threshold", action="append", default=[], metavar="ROLE=N",
                   help="signatures a role needs (keys made), e.g. root=2")
    pub = s.add_parser("publish", help="sign a component (its manifest.toml) as a new target")
    pub.add_argument("path")
    pub.add_argument("--version", required=True)
    pub.add_argument("--repo", default="fleet")
    pm = s.add_parser("publish-model", help="sign a .tflite model (with a probe made from it) as a new target")
    pm.add_argument("path")
    pm.add_argument("--name", required=True)
    pm.add_argument("--version", required=True)
    pm.add_argument("--repo", default="fleet")
    r = s.add_parser("rotate", help="replace a role's keys in a new root version")
    r.add_argument("role")
    r.add_argument("--repo", default="fleet")
    r.add_argument("--count", type=int, default=1)
    u = s.add_parser("upload", help="copy metadata and targets into the hub's object store")
    u.add_argument("--repo", default="fleet")
    u.add_argument("--hub", default="nats://127.0.0.1:4222")
    d = s.add_parser("desire", help="set what a device should run: NAME=VERSION ...")
    d.add_argument("device")
    d.add_argument("revision")
    d.add_argument("components", nargs="*")
    d.add_argument("--hub", default="nats://127.0.0.1:4222")
    rep = s.add_parser("report", help="what a device reports it runs")
    rep.add_argument("device")
    rep.add_argument("--hub", default="nats://127.0.0.1:4222")
    lab = s.add_parser("label", help="set a device's labels (what rollout selectors match): K=V ...")
    lab.add_argument("device")
    lab.add_argument("labels", nargs="*")
    lab.add_argument("--hub", default="nats://127.0.0.1:4222")

    ro = sub.add_parser("rollout", help="take an update across a fleet, batch by batch (docs/ota.md)")
    rs = ro.add_subparsers(dest="rollout_cmd", required=True)
    st = rs.add_parser("start", help="run a rollout until it completes, halts or is superseded")
    st.add_argument("id", help="the rollout id (also the devices' desired revision)")
    st.add_argument("components", nargs="+", metavar="NAME=VERSION")
    st.add_argument("--selector", default="", help="device labels, k=v,k2=v2 (default: every labelled device)")
    st.add_argument("--canary", type=int, default=1)
    st.add_argument("--batch", type=int, default=5)
    st.add_argument("--max-failure", type=float, default=20.0, help="percent of devices tried")
    st.add_argument("--probation", type=float, default=None, help="seconds on probation (default: the device's)")
    st.add_argument("--device-timeout", type=float, default=300.0, help="seconds a device may take to report")
    st.add_argument("--hub", default="nats://127.0.0.1:4222")
    st.add_argument("--replay-check", metavar="DEVICE[:WINDOW]", help="first replay the device's recorded "
                    "window (FROM[..TO], default -10m) with the published targets; refuse to start if it "
                    "diverges (docs/replay.md)")
    st.add_argument("--allow-divergence", action="store_true", help="start even if the replay check diverges")
    ss = rs.add_parser("status", help="per-device progress of a rollout")
    ss.add_argument("id", nargs="?", default="current")
    ss.add_argument("--json", action="store_true")
    ss.add_argument("--hub", default="nats://127.0.0.1:4222")


def progress_bar(counts: dict[str, int], total: int, width: int = 30) -> str:
    done = counts.get("committed", 0)
    bad = counts.get("failed", 0) + counts.get("timed_out", 0)
    n_done = round(width * done / total) if total else 0
    n_bad = round(width * bad / total) if total else 0
    return "[" + "#" * n_done + "x" * n_bad + "." * max(0, width - n_done - n_bad) + "]"


def render_rollout(rec: Any) -> str:
    import sys

    total = len(rec.devices)
    counts = rec.counts()
    head = f"rollout {rec.spec['id']}: {rec.status}"
    if sys.stdout.isatty():
        head += "  " + progress_bar(counts, total)
    head += "  " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f" of {total}"
    lines = [head]
    if rec.halt_reason:
        lines.append(f"  {rec.halt_reason}")
    for d, p in sorted(rec.devices.items()):
        lines.append(f"  {d:<20} {p.state:<10} batch {p.batch if p.batch >= 0 else '-'}  {p.reason}".rstrip())
    return "\n".join(lines)


async def dispatch(args: argparse.Namespace) -> int:
    if args.command == "rollout":
        return await _rollout(args)
    from edge.ota import repo as fleet
    from edge.ota.bundle import pack
    from edge.ota.errors import OtaError

    cmd = args.ota_cmd
    if cmd == "keygen":
        th: dict[str, int] = {}
        for item in args.threshold:
            role, _, n = item.partition("=")
            if role not in fleet.ROLES or not n.isdigit() or int(n) < 1:
                raise OtaError(f"--threshold {item!r}: use ROLE=N with a role of {', '.join(fleet.ROLES)}")
            th[role] = int(n)
        fleet.keygen(args.repo, thresholds=th)
        print(f"fleet repository in {args.repo}; give devices {args.repo}/metadata/1.root.json as ota.root")
        return 0
    if cmd == "publish":
        data, meta = pack(Path(args.path), version=args.version)
        tpath = fleet.publish(args.repo, data, kind="component", name=str(meta["name"]),
                              version=args.version, custom={"contract": meta["contract"]})
        print(f"signed {tpath} ({len(data)} bytes)")
        return 0
    if cmd == "publish-model":
        from edge.ota.models import pack_model

        data = pack_model(Path(args.path).read_bytes())
        tpath = fleet.publish(args.repo, data, kind="model", name=args.name, version=args.version)
        print(f"signed {tpath} ({len(data)} bytes)")
        return 0
    if cmd == "rotate":
        print(f"root version {fleet.rotate(args.repo, args.role, count=args.count)}")
        return 0
    return await _remote(args)


async def _remote(args: argparse.Namespace) -> int:
    import nats

    from edge.ota import hub, repo as fleet
    from edge.ota.errors import OtaError

    nc = await nats.connect(args.hub, connect_timeout=5)
    try:
        js = nc.jetstream()
        if args.ota_cmd == "upload":
            print(f"{await fleet.upload(js, args.repo)} objects written")
        elif args.ota_cmd == "desire":
            comps: dict[str, str] = {}
            for item in args.components:
                name, _, version = item.partition("=")
                if not name or not version:
                    raise OtaError(f"{item!r}: use NAME=VERSION")
                comps[name] = version
            await hub.set_desired(js, args.device, args.revision, comps)
        elif args.ota_cmd == "report":
            print(json.dumps(await hub.get_report(js, args.device), indent=2))
        elif args.ota_cmd == "label":
            from edge.ota.rollout import parse_selector, set_labels

            await set_labels(js, args.device, parse_selector(",".join(args.labels)))
    finally:
        await nc.close()
    return 0


async def _rollout(args: argparse.Namespace) -> int:
    import nats

    from edge.ota import rollout
    from edge.ota.errors import OtaError

    nc = await nats.connect(args.hub, connect_timeout=5)
    try:
        js = nc.jetstream()
        if args.rollout_cmd == "status":
            rec = await rollout.refresh_late(js, args.id)
            if rec is None:
                raise OtaError(f"no rollout {args.id!r} on the hub")
            if args.json:
                print(rec.to_json().decode())
            else:
                print(render_rollout(rec))
            return 0
        comps: dict[str, str] = {}
        for item in args.components:
            name, _, version = item.partition("=")
            if not name or not version:
                raise OtaError(f"{item!r}: use NAME=VERSION")
            comps[name] = version
        if args.replay_check:  # [replay] the candidates over a device's recorded window first
            from edge.cli.replay import EXIT_DIVERGED
            from edge.replay.check import rollout_check

            verdict = await rollout_check(nc, args.replay_check, comps)
            print(verdict.sentence())
            if not verdict.identical and not args.allow_divergence:
                print(f"rollout {args.id} not started: the candidates diverge on {verdict.device}'s "
                      "records (--allow-divergence starts it anyway)")
                return EXIT_DIVERGED
        spec = rollout.RolloutSpec(args.id, rollout.parse_selector(args.selector), comps, canary=args.canary,
                                   batch=args.batch, max_failure_pct=args.max_failure,
                                   probation_s=args.probation, device_timeout_s=args.device_timeout)
        rec = await rollout.run_rollout(js, spec, on_progress=lambda r: print(render_rollout(r).splitlines()[0]))
        print(render_rollout(rec))
        return 0 if rec.status == "completed" else 1
    finally:
        await nc.close()
