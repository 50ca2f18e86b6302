"""Frame-to-decision latency: synthetic camera (with a face) -> face model -> detections -> follow
agent -> velocity command, through a real Runtime, at 15 and 30 frames/s.

Run: ``.venv/bin/python bench/bench_perception.py`` (``--seconds N`` per rate, default 15).

Latency of one decision = time the velocity command is received on NATS minus the capture time of
the frame whose detection event triggered it (both ``time.monotonic()`` on this machine). Frames
dropped by the pipeline while the model was busy are reported from its counters. Real time at a
fixed frame rate through the whole runtime: absolute figures (the provider's own overhead against
a direct invoke is interleaved in bench/bench_inference.py).
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

import nats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.config import parse_config  # noqa: E402
from edge.inference.blazeface import face_model_path  # noqa: E402
from edge.nats.server import NatsServer, ServerOptions  # noqa: E402
from edge.runtime import Runtime  # noqa: E402
from harness import Absolute, Row, report  # noqa: E402


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


async def run_rate(fps: float, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        srv = NatsServer(ServerOptions(store_dir=Path(tmp) / "nats"))
        await srv.start()
        cfg = parse_config({
            "device": {"id": "bench"},
            "nats": {"url": srv.url},
            "entities": [{"id": "cam", "kind": "drone", "components": {"battery": {"level": 1.0}}}],
            "drivers": [{"name": "camera", "kind": "camera", "entity": "cam", "backend": "emulated",
                         "source": "synthetic", "face": True, "fps": fps, "width": 640, "height": 480}],
            "models": [{"name": "face", "path": str(face_model_path())}],
            "vision": [{"model": "face", "entity": "cam"}],
            "agents": [{"kind": "follow", "entity": "cam"}],
            "tools": {"enabled": False},
        }, data_dir=Path(tmp) / "dev")
        rt = Runtime(cfg)
        await rt.start()
        nc = await nats.connect(srv.url)
        pending: list[float] = []
        latencies: list[float] = []

        async def on_detection(msg: Any) -> None:
            pending.append(float(json.loads(msg.data)["captured"]))

        async def on_command(msg: Any) -> None:
            now = time.monotonic()
            if pending:
                latencies.append((now - pending.pop()) * 1000)
                pending.clear()

        await nc.subscribe("edge.bench.evt.cam.detections", cb=on_detection)
        await nc.subscribe("edge.bench.cmd.cam.velocity", cb=on_command)
        await asyncio.sleep(seconds)
        status = rt.status()["inference"]["pipelines"][0]
        await nc.close()
        await rt.stop()
        await srv.stop()
    return {"fps": fps, "decisions": len(latencies), "p50_ms": pct(latencies, 0.5), "p99_ms": pct(latencies, 0.99),
            "processed": status["processed"], "dropped": status["dropped"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    seconds = 6.0 if args.quick else args.seconds
    print(f"frame -> face model -> follow agent -> command, synthetic 640x480 camera, {seconds:.0f} s per rate")
    rows: list[Row] = []
    for fps in (15.0, 30.0):
        r = asyncio.run(run_rate(fps, seconds))
        print(f"    {fps:>4.0f} fps: {r['decisions']} decisions, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; "
              f"frames processed {r['processed']}, dropped {r['dropped']}")
        rows.append(Absolute(f"frame → face model → follow agent → command at {fps:.0f} fps",
                             f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms",
                             f"{r['decisions']} decisions; {r['processed']} frames processed, "
                             f"{r['dropped']} dropped; {seconds:.0f} s"))
    report(rows, command="bench/bench_perception.py")


if __name__ == "__main__":
    main()
