"""Benchmark of the edge-to-cloud link with real nats-server processes on loopback.

Measures, in one run:
1. JetStream publish on the device, interleaved round by round (bench/harness.py): batched acks
   (edge.nats.publisher.Publisher) against awaiting each ack (``js.publish``) and against nats
   core publish (no ack, the ceiling), time per message.
2. Bytes on the wire per telemetry message over the leaf link (counted by the relay between
   device and hub, both directions), and the hub's own in_bytes from /varz.
3. Catch-up after an outage: the link is cut, ``rate * duration`` telemetry messages are
   published (a backlog of ``duration`` seconds at ``rate`` msg/s, generated as fast as possible),
   the link returns, and we time until the hub holds all of them.

2 and 3 are single timed runs: absolute figures, labelled so.
Targets: hub complete within 60 s of link return; batched >= 10x one-at-a-time. A missed target
is reported in the rows; ``--strict`` makes it the exit status.

    python bench/bench_sync.py [--quick] [--duration-s 600] [--rate 100] [--payload 64] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test rigs (tests/rigs/)

from edge.nats.publisher import Publisher  # noqa: E402
from rigs.link import SyncRig  # noqa: E402
from harness import Absolute, Comparison, Row, ainterleave, report  # noqa: E402

DEFAULT_DURATION_S = 600
DEFAULT_RATE_HZ = 100
DEFAULT_PAYLOAD_BYTES = 64
BATCHED_N = 5_000  # messages a round, batched acks and core publish
ONE_BY_ONE_N = 500  # messages a round, one ack at a time
PUBLISH_ROUNDS = 7  # interleaved rounds (3 with --quick)
QUICK_DURATION_S = 60
WIRE_N = 5_000
CATCH_UP_TARGET_S = 60.0
SPEEDUP_TARGET = 10.0


async def bench_publish(rig: SyncRig, payload: bytes, rounds: int) -> tuple[dict[str, float], Row, Row]:
    """Same server, subject shape, payload and Msg-Id header for the JetStream ways of publishing."""
    nc = rig.dev_nc["dev1"]
    js = nc.jetstream()
    r = 0
    async with Publisher(nc) as pub:

        async def one_by_one() -> float:
            t0 = time.perf_counter()
            for i in range(ONE_BY_ONE_N):
                await js.publish("edge.dev1.tele.one", payload, headers={"Nats-Msg-Id": f"o{r}-{i}"})
            return (time.perf_counter() - t0) / ONE_BY_ONE_N

        async def batched() -> float:
            nonlocal r
            r += 1
            t0 = time.perf_counter()
            for i in range(BATCHED_N):
                await pub.publish("edge.dev1.tele.batch", payload, msg_id=f"b{r}-{i}")
            await pub.flush(60)
            return (time.perf_counter() - t0) / BATCHED_N

        async def core() -> float:  # a subject no stream captures: no ack, no storage
            t0 = time.perf_counter()
            for _ in range(BATCHED_N):
                await nc.publish("bench.core.publish", payload)
            await nc.flush()
            return (time.perf_counter() - t0) / BATCHED_N

        s = await ainterleave({"batched acks (Publisher)": batched, "one ack at a time": one_by_one,
                               "core publish (no ack)": core}, rounds=rounds, measure="value")
    vs_one = Comparison.of("JetStream publish on the device, 64-byte payload", s,
                           "batched acks (Publisher)", "one ack at a time", op="msg",
                           note=f"target ≤ {1 / SPEEDUP_TARGET:.2f}× ({SPEEDUP_TARGET:.0f}× faster)")
    vs_core = Comparison.of("JetStream publish on the device vs nats core publish", s,
                            "batched acks (Publisher)", "core publish (no ack)", op="msg")
    return {
        "one_at_a_time_msg_s": 1 / vs_one.baseline_median_s,
        "batched_msg_s": 1 / vs_one.candidate_median_s,
        "core_publish_msg_s": 1 / vs_core.baseline_median_s,
        "speedup": 1 / vs_one.ratio_median,
        "speedup_min": 1 / vs_one.ratio_max,
        "speedup_max": 1 / vs_one.ratio_min,
    }, vs_one, vs_core


async def settle(rig: SyncRig) -> int:
    """Wait until the hub holds every telemetry message the device has; return the count."""
    want = (await rig.dev_js().stream_info("TELE")).state.messages
    await rig.wait_hub_count("TELE", want, timeout=300)
    return want


async def bench_wire(rig: SyncRig, payload: bytes) -> dict[str, float]:
    link = rig.links["dev1"]
    base = await settle(rig)
    varz0 = await rig.hub.monitor("varz")
    up0, down0 = link.up_bytes, link.down_bytes
    async with Publisher(rig.dev_nc["dev1"]) as pub:
        for i in range(WIRE_N):
            await pub.publish("edge.dev1.tele.imu", payload, msg_id=f"w{i}")
        await pub.flush(60)
    await rig.wait_hub_count("TELE", base + WIRE_N, timeout=120)
    await asyncio.sleep(1.0)  # let trailing flow-control / heartbeats settle
    varz1 = await rig.hub.monitor("varz")
    up, down = link.up_bytes - up0, link.down_bytes - down0
    return {
        "payload_bytes": len(payload),
        "wire_up_bytes_per_msg": up / WIRE_N,
        "wire_down_bytes_per_msg": down / WIRE_N,
        "wire_total_bytes_per_msg": (up + down) / WIRE_N,
        "hub_in_bytes_per_msg": (varz1["in_bytes"] - varz0["in_bytes"]) / WIRE_N,
    }


async def bench_catch_up(rig: SyncRig, payload: bytes, n: int) -> dict[str, float]:
    link = rig.links["dev1"]
    base = await settle(rig)
    await link.cut()
    t0 = time.perf_counter()
    async with Publisher(rig.dev_nc["dev1"]) as pub:
        for i in range(n):
            await pub.publish(f"edge.dev1.tele.s{i % 8}", payload, msg_id=f"c{i}")
        await pub.flush(120)
    backlog_s = time.perf_counter() - t0
    assert await rig.hub_count("TELE") == base
    up0 = link.up_bytes
    await link.restore()
    t_link = time.perf_counter()
    first: float | None = None
    while True:
        got = await rig.hub_count("TELE") - base
        if got > 0 and first is None:
            first = time.perf_counter() - t_link
        if got >= n:
            break
        if time.perf_counter() - t_link > 600:
            raise RuntimeError(f"hub has {got} of {n} after 600 s")
        await asyncio.sleep(0.02)
    total = time.perf_counter() - t_link
    return {
        "backlog_messages": n,
        "backlog_publish_s": backlog_s,
        "first_message_after_link_s": first or 0.0,
        "hub_complete_after_link_s": total,
        "catch_up_msg_s": n / total,
        "catch_up_wire_bytes_per_msg": (link.up_bytes - up0) / n,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    payload = b"x" * args.payload
    n = int(args.duration_s * args.rate)
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        rig = SyncRig(
            Path(tmp),
            hub_monitor=True,
            compression=args.compression,
            stream_cfg={"tele_max_bytes": max(64 * 1024 * 1024, n * (args.payload + 200) * 2)},
        )
        try:
            await rig.start()
            publish, vs_one, vs_core = await bench_publish(rig, payload, args.rounds)
            result: dict[str, Any] = {"publish": publish}
            result["wire"] = await bench_wire(rig, payload)
            result["catch_up"] = await bench_catch_up(rig, payload, n)
        finally:
            await rig.close()
    result["wire"]["compression"] = args.compression
    result["rows"] = [vs_one, vs_core]
    result["targets"] = {
        "hub_complete_within_60s": result["catch_up"]["hub_complete_after_link_s"] <= CATCH_UP_TARGET_S,
        "batched_10x": result["publish"]["speedup"] >= SPEEDUP_TARGET,
    }
    return result


def rows_of(result: dict[str, Any], args: argparse.Namespace) -> list[Row]:
    w, c, t = result["wire"], result["catch_up"], result["targets"]
    rows: list[Row] = list(result["rows"])
    rows.append(Absolute(
        f"bytes on the wire per {w['payload_bytes']}-byte telemetry message (leaf link, {w['compression']})",
        f"{w['wire_up_bytes_per_msg']:.1f} B up, {w['wire_down_bytes_per_msg']:.1f} B down",
        f"hub in_bytes {w['hub_in_bytes_per_msg']:.1f} B a message; one run of {WIRE_N:,}"))
    rows.append(Absolute(
        f"hub catch-up after a {args.duration_s:.0f} s outage at {args.rate:.0f} msg/s "
        f"({c['backlog_messages']:,} messages)",
        f"hub complete {c['hub_complete_after_link_s']:.2f} s after the link returns "
        f"({c['catch_up_msg_s']:,.0f} msg/s)",
        f"target ≤ {CATCH_UP_TARGET_S:.0f} s: {'met' if t['hub_complete_within_60s'] else 'MISSED'}; "
        f"{c['catch_up_wire_bytes_per_msg']:.1f} B a message on the wire; one run"))
    return rows


def _print(result: dict[str, Any]) -> None:
    for section, values in result.items():
        if section == "rows":
            continue
        print(f"[{section}]")
        for k, v in values.items():
            print(f"  {k:34s} {v:,.2f}" if isinstance(v, float) else f"  {k:34s} {v}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"a {QUICK_DURATION_S} s outage and 3 publish rounds")
    ap.add_argument(
        "--duration-s",
        type=float,
        default=None,
        help=f"outage length to simulate, seconds (backlog = rate * duration; default {DEFAULT_DURATION_S})",
    )
    ap.add_argument("--rate", type=float, default=DEFAULT_RATE_HZ, help="telemetry msg/s")
    ap.add_argument("--payload", type=int, default=DEFAULT_PAYLOAD_BYTES, help="payload bytes")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved publish rounds")
    ap.add_argument(
        "--compression",
        default="s2_auto",
        help="leaf link compression: off, s2_auto, s2_fast, s2_better, s2_best",
    )
    ap.add_argument("--json", action="store_true", help="print JSON only")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ns = ap.parse_args()
    if ns.duration_s is None:
        ns.duration_s = QUICK_DURATION_S if ns.quick else DEFAULT_DURATION_S
    if ns.rounds is None:
        ns.rounds = 3 if ns.quick else PUBLISH_ROUNDS
    res = asyncio.run(main(ns))
    rows = rows_of(res, ns)
    if ns.json:
        res["rows"] = [r.cells() for r in rows]
        print(json.dumps(res, indent=2))
    else:
        _print(res)
        report(rows, command="bench/bench_sync.py")
    sys.exit(1 if ns.strict and not all(res["targets"].values()) else 0)
