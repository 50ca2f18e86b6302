"""Loss and duplicates over a fault mix, and catch-up after a hub kill -9 (real nats-server
processes on loopback; tests/rigs/faults.py counts every message by sequence on both sides).

1. Fault mix: ``--faults`` faults (default 20) cycling through hub clean stop, hub kill -9,
   device nats-server kill -9, link flaps and a long outage that overruns the device's TELE
   budget, in a shuffled order, while the device publishes events and telemetry at ``--rate``
   msg/s each. Reported: faults, messages, lost, duplicated (targets: 0 and 0), TELE evicted.
2. Catch-up after hub kill -9: from the hub's restart (it accepts clients) until the first
   message published meanwhile is stored on the hub, per kill in the mix (target < 2 s).
3. With ``--cluster``: the same over a three-node hub cluster with node kill -9 and device kills.
4. With ``--kills N``: N hub kill -9s in a row (nothing else), catch-up min/median/max over them.

The hub runs what ``edge cloud run`` runs beside it (the repairer and the source watch,
``edge/sync/hub/repair.py``, ``reattach.py``); ``--bare`` runs the hub alone (the sourcing as
nats-server does it). ``--netns`` (root) puts the device in a network namespace behind a veth
link and adds ``dangle`` faults: a link cut neither side is told about (no FIN/RST), half of them
with a hub kill -9 while it dangles (tests/rigs/netns.py). ``--hub-stop-s`` sets how long a clean
hub stop lasts (the issue's 30 s). Reported apart from loss: events the repairer backfilled (the
sourcing skipped them) and stalled sources re-attached.

Single timed runs: absolute figures, labelled so. ``--strict`` makes a missed target the exit
status (loss or duplicates always do).

    python bench/bench_faults.py [--quick] [--faults 20] [--rate 100] [--seed 1] [--cluster]
        [--netns] [--hub-stop-s 30] [--kills 10] [--bare] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test rigs (tests/rigs/)

from rigs.cluster import ClusterRig  # noqa: E402
from rigs.faults import FAULT_KINDS, NETNS_FAULT_KINDS, FaultMix, MixResult, fault_plan  # noqa: E402
from rigs.link import SyncRig  # noqa: E402
from rigs.netns import NetnsSyncRig, netns_available  # noqa: E402
from harness import Absolute, report  # noqa: E402

DEFAULT_FAULTS = 20
QUICK_FAULTS = 6
CATCH_UP_TARGET_S = 2.0


def summary(res: MixResult, took_s: float) -> dict[str, object]:
    return {
        "faults": len(res.faults),
        "kinds": {k: res.faults.count(k) for k in sorted(set(res.faults))},
        "events": res.published["EVT"],
        "telemetry": res.published["TELE"],
        "lost": res.lost,
        "duplicated": res.duplicated,
        "tele_evicted_on_device": res.evicted_tele,
        "catch_up_s": [round(x, 3) for x in res.catch_up_s],
        "repaired": res.repaired,
        "reattached": res.reattached,
        "seconds": round(took_s, 1),
    }


async def run_mix(base: Path, n: int, rate: float, seed: int, *, netns: bool = False, keepers: bool = True,
                  hub_stop_s: float | None = None, kinds: tuple[str, ...] | None = None) -> tuple[MixResult, float]:
    cfg = {"tele_max_bytes": 200_000, "evt_max_bytes": 8_000_000}
    rig = NetnsSyncRig(base, stream_cfg=cfg) if netns else SyncRig(base, stream_cfg=cfg)
    await rig.start()
    try:
        await rig.devices["dev1"].supervise()
        t0 = time.monotonic()
        stop = (hub_stop_s * 0.9, hub_stop_s * 1.1) if hub_stop_s else None
        mix = FaultMix(rig, rate_hz=rate, seed=seed, outage_msgs=3000, hub_stop_s=stop, keepers=keepers)
        plan = fault_plan(n, kinds or (NETNS_FAULT_KINDS if netns else FAULT_KINDS), seed)
        res = await mix.run(plan)
        return res, time.monotonic() - t0
    finally:
        await rig.close()


async def run_cluster(base: Path, n: int, rate: float, seed: int) -> tuple[MixResult, float]:
    rig = ClusterRig(base)
    await rig.start()
    try:
        await rig.devices["dev1"].supervise()
        t0 = time.monotonic()
        mix = FaultMix(rig, rate_hz=rate, seed=seed)  # type: ignore[arg-type]
        res = await mix.run(fault_plan(n, ("node_kill", "device_kill"), seed), settle_s=90)
        return res, time.monotonic() - t0
    finally:
        await rig.close()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_FAULTS} faults")
    ap.add_argument("--faults", type=int, default=DEFAULT_FAULTS)
    ap.add_argument("--rate", type=float, default=100.0, help="events and telemetry per second, each")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cluster", action="store_true", help="also run the mix over a three-node hub cluster")
    ap.add_argument("--strict", action="store_true", help="a missed catch-up target fails the run")
    ap.add_argument("--netns", action="store_true", help="device in a network namespace, dangling cuts (root)")
    ap.add_argument("--hub-stop-s", type=float, default=None, help="length of a clean hub stop (default 0.3-1.5 s)")
    ap.add_argument("--kills", type=int, default=0, help="also N hub kill -9s in a row: catch-up spread")
    ap.add_argument("--bare", action="store_true", help="the hub without its repairer and source watch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = QUICK_FAULTS if args.quick else args.faults
    if args.netns and (why := netns_available()):
        print(f"--netns: {why}")
        return 2
    keepers = not args.bare
    out: dict[str, object] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-faults-") as tmp:
        res, took = await run_mix(Path(tmp) / "mix", n, args.rate, args.seed, netns=args.netns, keepers=keepers,
                                  hub_stop_s=args.hub_stop_s)
        out["single"] = s = summary(res, took)
        what = "fault mix (hub stop/kill -9, device kill -9, flaps, outage over budget"
        what += ", dangling cuts)" if args.netns else ")"
        rows.append(Absolute(what + ("" if keepers else ", bare hub"),
                             f"{s['faults']} faults, {s['events']} events + {s['telemetry']} telemetry: "
                             f"lost {s['lost']}, duplicated {s['duplicated']}",
                             note=f"{s['tele_evicted_on_device']} telemetry evicted on the device (counted); "
                                  f"backfilled {s['repaired']}, re-attached {s['reattached']}; {s['seconds']} s"))
        kills = [x for x, f in zip(res.catch_up_s, [f for f in res.faults if f in ("hub_stop", "hub_kill")],
                                   strict=False) if f == "hub_kill"]
        if kills:
            rows.append(Absolute.of("catch-up after hub kill -9 (restart to first new message on the hub)",
                                    kills, note=f"target < {CATCH_UP_TARGET_S:.0f} s"))
            out["catch_up_kill_median_s"] = statistics.median(kills)
        if args.kills:
            kres, ktook = await run_mix(Path(tmp) / "kills", args.kills, args.rate, args.seed, netns=args.netns,
                                        keepers=keepers, kinds=("hub_kill",))
            out["kills"] = k = summary(kres, ktook)
            rows.append(Absolute.of(f"catch-up after hub kill -9, {args.kills} kills in a row"
                                    + ("" if keepers else ", bare hub"), kres.catch_up_s,
                                    note=f"target < {CATCH_UP_TARGET_S:.0f} s every time; lost {k['lost']}, "
                                         f"duplicated {k['duplicated']}, re-attached {k['reattached']}"))
            out["catch_up_kills_max_s"] = max(kres.catch_up_s)
        if args.cluster:
            cres, ctook = await run_cluster(Path(tmp) / "cluster", max(4, n // 3), args.rate, args.seed)
            out["cluster"] = c = summary(cres, ctook)
            rows.append(Absolute("fault mix over a 3-node hub cluster (node kill -9, device kill -9)",
                                 f"{c['faults']} faults, {c['events']} events: lost {c['lost']}, "
                                 f"duplicated {c['duplicated']}", note=f"{c['seconds']} s"))
    if args.json:
        print(json.dumps(out, indent=2))
    report(rows, command="bench/bench_faults.py" + (" --quick" if args.quick else ""))
    bad = [k for k in ("single", "kills", "cluster") if k in out and (out[k]["lost"] or out[k]["duplicated"])]  # type: ignore[index]
    if bad:
        print(f"LOSS OR DUPLICATES in: {', '.join(bad)}")
        return 1
    worst = max((v for k, v in out.items() if k in ("catch_up_kill_median_s", "catch_up_kills_max_s")
                 and isinstance(v, float)), default=0.0)
    if args.strict and worst >= CATCH_UP_TARGET_S:
        print(f"catch-up target missed: {worst:.2f} s")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
