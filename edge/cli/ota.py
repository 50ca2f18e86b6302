"""``edge ota`` (fleet side: keygen, publish, publish-model, publish-config, publish-policy,
rotate, upload, desire, report) and the ``ota`` lines of ``edge status``."""

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
    config = ota.get("config") or {}
    if config.get("fragments"):
        lines.append(f"       config fragments: {', '.join(config['fragments'])}")
    if config.get("pending_restart"):
        lines.append(f"       pending restart: [{'], ['.join(config['pending_restart'])}] (applies at the next start)")
    if config.get("error"):
        lines.append(f"       config fragments not in force: {config['error']}")
    policy = ota.get("policy")
    if policy:
        lines.append(f"       policy {policy['name']}@{policy['version']} (sha256 {str(policy['sha256'])[:16]})")
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
    pc = s.add_parser("publish-config", help="sign a device config fragment (TOML) as a new target")
    pc.add_argument("path")
    pc.add_argument("--name", default=None, help="the fragment's name (default: the file's stem)")
    pc.add_argument("--version", required=True)
    pc.add_argument("--repo", default="fleet")
    pp = s.add_parser("publish-policy", help="sign a policy file (docs/policy.md) as a new target")
    pp.add_argument("path")
    pp.add_argument("--name", default=None, help="the policy's name (default: the file's stem)")
    pp.add_argument("--version", required=True)
    pp.add_argument("--repo", default="fleet")
    r = s.add_parser("rotate", help="replace a role's keys in a new root version")
    r.add_argument("role")
    r.add_argument("--repo", default="fleet")
    r.add_argument("--count", type=int, default=1)
    u = s.add_parser("upload", help="copy metadata and targets into the hub's object store")
    u.add_argument("--repo", default="fleet")
    u.add_argument("--hub", default="nats://127.0.0.1:4222")
    d = s.add_parser("desire", help="set what a device should run: NAME=VERSION ... (model:NAME=V, "
                                    "config:NAME=V, policy:NAME=V for the other kinds)")
    d.add_argument("device")
    d.add_argument("revision")
    d.add_argument("components", nargs="*")
    d.add_argument("--hub", default="nats://127.0.0.1:4222")
    _fleet_policy_args(d)
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
    _fleet_policy_args(st)
    ss = rs.add_parser("status", help="per-device progress of a rollout")
    ss.add_argument("id", nargs="?", default="current")
    ss.add_argument("--json", action="store_true")
    ss.add_argument("--hub", default="nats://127.0.0.1:4222")


def _fleet_policy_args(p: Any) -> None:
    p.add_argument("--policy", default=None, metavar="FILE",
                   help="fleet policy file: decide deploy per device before its desired state is written")
    p.add_argument("--operator", default="cloud", help="who deploys (the policy's operator:<name>)")


def parse_artifacts(items: list[str]) -> dict[str, str]:
    from edge.ota.errors import OtaError

    out: dict[str, str] = {}
    for item in items:
        name, _, version = item.partition("=")
        if not name or not version:
            raise OtaError(f"{item!r}: use NAME=VERSION (model:NAME, config:NAME or policy:NAME for other kinds)")
        out[name] = version
    return out


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
    if cmd in ("publish-config", "publish-policy"):
        from edge.ota.fragments import pack_fragment
        from edge.ota.policies import pack_policy

        path = Path(args.path)
        kind = "config" if cmd == "publish-config" else "policy"
        data = (pack_fragment if kind == "config" else pack_policy)(path)
        tpath = fleet.publish(args.repo, data, kind=kind, name=args.name or path.stem, version=args.version)
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
            comps = parse_artifacts(args.components)
            hub.desired_document(args.revision, comps)  # malformed: refused before the policy is read
            if args.policy is not None:
                from edge.ota.rollout import check_deploy, get_labels
                from edge.policy.hub import FleetPolicy

                why = check_deploy(FleetPolicy.from_file(args.policy), args.operator, args.device, comps,
                                   await get_labels(js, args.device))
                if why is not None:
                    raise OtaError(f"operator '{args.operator}' may not deploy to device '{args.device}': {why}; "
                                   "its desired state is unchanged", reason="denied")
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
        comps = parse_artifacts(args.components)
        if args.replay_check:  # [replay] the component candidates over a device's recorded window first
            from edge.cli.replay import EXIT_DIVERGED
            from edge.replay.check import rollout_check

            # models, config fragments and policies (kind:NAME) are not re-run by a replay
            wasm = {n: v for n, v in comps.items() if ":" not in n}
            if not wasm:
                raise OtaError("--replay-check needs a component in the rollout: a replay re-runs "
                               "components, not models, config fragments or policies")
            verdict = await rollout_check(nc, args.replay_check, wasm)
            print(verdict.sentence())
            if not verdict.identical and not args.allow_divergence:
                print(f"rollout {args.id} not started: the candidates diverge on {verdict.device}'s "
                      "records (--allow-divergence starts it anyway)")
                return EXIT_DIVERGED
        spec = rollout.RolloutSpec(args.id, rollout.parse_selector(args.selector), comps, canary=args.canary,
                                   batch=args.batch, max_failure_pct=args.max_failure,
                                   probation_s=args.probation, device_timeout_s=args.device_timeout,
                                   policy_file=args.policy, operator=args.operator)
        rec = await rollout.run_rollout(js, spec, on_progress=lambda r: print(render_rollout(r).splitlines()[0]))
        print(render_rollout(rec))
        return 0 if rec.status == "completed" else 1
    finally:
        await nc.close()
