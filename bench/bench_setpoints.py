"""Agent command -> MAVLink setpoint on the wire, and the setpoint stream's rate and jitter
(``python bench/bench_setpoints.py [--quick]``). Real nats-server, the device's command router
with the safety envelope, the real MAVLink driver on a pty, a MAVLink peer (tests/rigs/mavpeer.py)
timestamping every frame it reads.

1. Latency: a ``velocity`` command sent as the agent host sends it (a NATS request through
   :class:`~edge.nats.commands.CommandClient`) until its SET_POSITION_TARGET_LOCAL_NED frame
   arrives at the peer. Baseline, interleaved round by round: a raw nats-py request to a
   responder that writes one pre-encoded MAVLink frame to another pty read by the same kind of
   peer (the floor of NATS + a pty). p50/p99 over every command of the run.
2. Stream: the 10 Hz stream of one velocity setpoint, observed at the peer for a window per
   round; idle vs under CPU load (one busy process per CPU, started for the window), interleaved.
   Rate = frames/s; jitter = p99 of |gap - 100 ms|. The peer runs on the driver's event loop, so
   its timestamps include the loop's own delay in reading the pty (a conservative figure).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test rigs (tests/rigs/)

from drivers.serial.mavlink import MAVLinkDriver  # noqa: E402
from edge.hardware.layer import HardwareLayer  # noqa: E402
from edge.layer import DeviceContext  # noqa: E402
from edge.nats.commands import CommandClient, CommandRouter  # noqa: E402
from edge.safety.config import SafetyConfig  # noqa: E402
from edge.safety.envelope import DEFAULTS  # noqa: E402
from edge.safety.layer import SafetyLayer  # noqa: E402
from edge.world.store import World  # noqa: E402
from harness import Absolute, Comparison, Row, ainterleave, fmt_time, pct, report  # noqa: E402
from rigs.events import CoreEvents  # noqa: E402
from rigs.mavpeer import ARDU_GUIDED, MavPeer  # noqa: E402
from rigs.nats import running_server  # noqa: E402

DEVICE = "bench"
PERIOD_S = 0.1


def _busy(stop_at: float) -> None:
    x = 0
    while time.monotonic() < stop_at:
        x += 1


async def _wait_frame(peer: MavPeer, since: float, vy: float, timeout: float = 2.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        for r in peer.setpoints(since):
            if abs(r.msg.vy - vy) < 1e-3:
                return r.t
        if time.monotonic() > deadline:
            raise TimeoutError("no setpoint frame at the peer")
        await asyncio.sleep(0.0005)


async def run(quick: bool) -> list[Row]:
    rounds = 4 if quick else 10
    k = 10 if quick else 20
    window = 1.0 if quick else 2.0
    with tempfile.TemporaryDirectory(prefix="edge-bench-sp-") as tmp:
        async with running_server(Path(tmp) / "nats") as server:
            nc: Client = await nats.connect(server.url)
            peer, floor_peer = MavPeer("ardupilot"), MavPeer("ardupilot", heartbeat_hz=0)
            await peer.start()
            await floor_peer.start()
            peer.armed, peer.custom_mode, peer.position_ned = True, ARDU_GUIDED, (0.0, 0.0, -10.0)
            world = World(shared=False)
            router = CommandRouter(nc, DEVICE, CoreEvents(nc))
            ctx = DeviceContext(DEVICE, nc, nc.jetstream(), world, Path(tmp), CoreEvents(nc), router)
            drv = MAVLinkDriver("fc", "drone-0", port=peer.port, heartbeat_s=0.5, setpoint_hz=1 / PERIOD_S,
                                setpoint_timeout_s=30.0)
            hardware = HardwareLayer([drv])
            # the envelope checks every command; its stream failsafe is off so the window sees one stream
            safety = SafetyLayer(SafetyConfig(DEFAULTS.with_(failsafe_s=0.0)), ["drone-0"])
            await router.start()
            await safety.start(ctx)
            await hardware.start(ctx)
            client = CommandClient(nc, DEVICE)
            deadline = time.monotonic() + 5
            while not (world.has("drone-0", "flight") and world.get("drone-0", "flight")["armed"]
                       and world.has("drone-0", "position")):
                assert time.monotonic() < deadline, "the driver did not see the peer armed in GUIDED"
                await asyncio.sleep(0.02)

            frame = floor_peer.mav.set_position_target_local_ned_encode(
                0, 1, 1, 1, 0xDC7, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 0, 0).pack(floor_peer.mav)
            wire_fd = os.open(floor_peer.port, os.O_RDWR | os.O_NOCTTY)  # the floor's "driver" end

            async def floor_responder(msg: Msg) -> None:
                os.write(wire_fd, frame)
                await msg.respond(b'{"ok":true}')

            await nc.subscribe("bench.floor", cb=floor_responder)
            await nc.flush()
            lat_edge: list[float] = []
            lat_floor: list[float] = []
            n = 0

            async def edge_side() -> float:
                nonlocal n
                got = []
                for _ in range(k):
                    n += 1
                    vx = 0.5 + (n % 7) * 0.25  # every command differs: its own frame
                    t0 = time.monotonic()
                    res = await client.send("drone-0", "velocity", {"x": vx}, timeout=5, caller="bench")
                    assert res.ok, res.answer
                    got.append(await _wait_frame(peer, t0, vx) - t0)
                lat_edge.extend(got)
                return statistics.median(got)

            async def floor_side() -> float:
                got = []
                for _ in range(k):
                    t0 = time.monotonic()
                    await nc.request("bench.floor", b"{}", timeout=5)
                    got.append(await _wait_frame(floor_peer, t0, 1.0) - t0)
                lat_floor.extend(got)
                return statistics.median(got)

            lat = await ainterleave({"edge": edge_side, "floor": floor_side}, rounds=rounds, measure="value")
            await client.send("drone-0", "velocity", {"x": 1.0}, timeout=5, caller="bench")

            rates: dict[str, list[float]] = {"idle": [], "load": []}

            async def stream_window(load: bool) -> float:
                procs: list[Any] = []
                if load:
                    stop_at = time.monotonic() + window + 0.3
                    procs = [multiprocessing.Process(target=_busy, args=(stop_at,)) for _ in range(os.cpu_count() or 1)]
                    for p in procs:
                        p.start()
                    await asyncio.sleep(0.1)
                t0 = time.monotonic()
                await asyncio.sleep(window)
                frames = [r.t for r in peer.setpoints(t0) if r.t <= t0 + window]
                for p in procs:  # joined off the loop: the stream keeps its schedule meanwhile
                    await asyncio.to_thread(p.join)
                await asyncio.sleep(0.2)  # what was queued in the pty is read before the next window
                gaps = [b - a for a, b in zip(frames, frames[1:])]
                rates["load" if load else "idle"].append(len(frames) / window)
                return pct([abs(g - PERIOD_S) for g in gaps], 99) if gaps else float("nan")

            async def idle() -> float:
                return await stream_window(False)

            async def loaded() -> float:
                return await stream_window(True)

            jitter = await ainterleave({"load": loaded, "idle": idle}, rounds=max(3, rounds // 2), warmup=0,
                                       measure="value")
            print(f"command -> frame: edge p50 {fmt_time(pct(lat_edge, 50))} p99 {fmt_time(pct(lat_edge, 99))} "
                  f"({len(lat_edge)} commands); floor p50 {fmt_time(pct(lat_floor, 50))} "
                  f"p99 {fmt_time(pct(lat_floor, 99))}")
            print(f"stream: idle {statistics.median(rates['idle']):.2f} Hz, load {statistics.median(rates['load']):.2f} Hz")
            rows: list[Row] = [
                Comparison.of("velocity command (NATS request) -> setpoint frame on the pty, median per round",
                              lat, "edge", "floor",
                              note=f"edge p50 {fmt_time(pct(lat_edge, 50))} p99 {fmt_time(pct(lat_edge, 99))}; "
                                   f"floor = raw request + pre-encoded frame write"),
                Comparison.of("10 Hz setpoint stream jitter p99 |gap-100 ms|", jitter, "load", "idle",
                              note=f"rate idle {statistics.median(rates['idle']):.2f} Hz, under load "
                                   f"{statistics.median(rates['load']):.2f} Hz; load = {os.cpu_count()} busy "
                                   f"processes"),
                Absolute.of("10 Hz setpoint stream period (idle)", [1 / r for r in rates["idle"]],
                            note="frames/s at the peer, inverted"),
            ]
            os.close(wire_fd)
            await hardware.stop()
            await safety.stop()
            await router.stop()
            await peer.stop()
            await floor_peer.stop()
            await nc.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rows = asyncio.run(run(args.quick))
    report(rows, command="bench/bench_setpoints.py" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
