"""The demo's closed loop: time from the face appearing off-centre in drone-0's camera to it being
within 10 % of the frame centre, through the real runtime (emulated flight controller flying
MAVLink setpoints, camera looking down from it, face model, follow agent).

Run: ``.venv/bin/python bench/bench_closed_loop.py`` (``--rounds N``, default 3; ``--quick``: 1).

Each round starts a fresh demo device (no fleet drones; the agent's velocity commands go through the
safety envelope and the MAVLink driver's setpoint stream), waits for drone-0 to be in the air with
the face detected (the first detection's offset from the centre is reported), then times until a
detection is within 10 % of the centre on both axes (max(|cx - 0.5|, |cy - 0.5|) < 0.1). Real time
in a flying emulation: an absolute figure (the loop is limited by the vehicle's acceleration and
the agent's gain, not by the CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.config import NatsConfig, embedded_default  # noqa: E402
from edge.demo.fleet import apply_demo  # noqa: E402
from edge.nats.server import NatsServer, ServerOptions  # noqa: E402
from edge.runtime import Runtime  # noqa: E402
from harness import Absolute, Row, report  # noqa: E402

TIMEOUT_S = 60.0
CENTRED = 0.10


def offset(det: dict[str, Any]) -> float | None:
    items = det.get("items") or []
    if not items:
        return None
    x0, y0, x1, y1 = items[0]["box"]
    return float(max(abs((x0 + x1) / 2 - 0.5), abs((y0 + y1) / 2 - 0.5)))


async def one_round() -> tuple[float, float, float]:
    """(seconds to centre, first offset, seconds from start to the first detection)."""
    with tempfile.TemporaryDirectory() as tmp:
        srv = NatsServer(ServerOptions(store_dir=Path(tmp) / "nats"))
        await srv.start()
        cfg = apply_demo(embedded_default(data_dir=Path(tmp) / "demo", drones=0))
        cfg.nats = NatsConfig(url=srv.url)
        rt = Runtime(cfg)
        t_start = time.monotonic()
        await rt.start()
        try:
            w = rt.world
            first: tuple[float, float] | None = None
            deadline = time.monotonic() + TIMEOUT_S
            while time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                if "drone-0" not in w or not w.has("drone-0", "detections") or not w.has("drone-0", "flight"):
                    continue
                off = offset(w.get("drone-0", "detections"))
                if off is None or not w.get("drone-0", "flight")["armed"]:
                    continue
                now = time.monotonic()
                if first is None:
                    first = (now, off)
                elif off < CENTRED:
                    return now - first[0], first[1], first[0] - t_start
            raise TimeoutError(f"the face was not centred within {TIMEOUT_S} s (first seen: {first})")
        finally:
            await rt.stop()
            await srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    print(f"demo closed loop: face off-centre -> within {CENTRED:.0%} of the frame centre, {rounds} rounds")
    times, offsets = [], []
    for r in range(rounds):
        dt, off, seen = asyncio.run(one_round())
        print(f"    round {r + 1}: first seen {seen:.1f} s after start, {off:.2f} off centre; centred in {dt:.2f} s")
        times.append(dt)
        offsets.append(off)
    rows: list[Row] = [Absolute("demo closed loop: face off-centre → within 10 % of the frame centre",
                                f"median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f})",
                                f"{rounds} rounds; first offsets {', '.join(f'{o:.2f}' for o in offsets)} of the frame")]
    report(rows, command="bench/bench_closed_loop.py")


if __name__ == "__main__":
    main()
