"""Driver benchmarks.

1. Per-sample overhead of the driver pipeline (bus read -> decode -> component update -> subject
   publish) against a bare read loop on the same emulated I2C bus, in the same run; publishing
   to an in-memory context and to a real nats-server (nats-py client).
2. MAVLink telemetry: messages/s the driver sustains from the flight-controller emulator (run in
   its own process, like real hardware) with no backlog growth, at increasing stream rates.
3. Synthetic camera at 640x480: frames/s unpaced, and CPU % of this process at a paced 30 fps.

Run: .venv/bin/python bench/bench_drivers.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers.camera.driver import CameraDriver  # noqa: E402
from drivers.camera.sources import SyntheticSource  # noqa: E402
from drivers.i2c.bme280 import BME280Driver  # noqa: E402
from drivers.i2c.emulated import EmulatedBus  # noqa: E402
from drivers.i2c.mpu6050 import MPU6050Driver  # noqa: E402
from drivers.i2c.sim_bme280 import BME280Model  # noqa: E402
from drivers.i2c.sim_mpu6050 import MPU6050Model  # noqa: E402
from drivers.serial.link import DEFAULT_MAX_BACKLOG  # noqa: E402
from drivers.serial.mavlink import MAVLinkDriver  # noqa: E402
from drivers.testing import RecordingContext  # noqa: E402


class _NatsCtx:
    """DriverContext over nats-py: update() into a dict, publish() on NATS."""

    def __init__(self, nc: Any, device: str) -> None:
        self.nc, self.device = nc, device
        self.state: dict[tuple[str, str], dict[str, Any]] = {}
        self.update_count = self.publish_count = 0

    def update(self, entity: str, component: str, values: Any) -> None:
        self.update_count += 1
        self.state.setdefault((entity, component), {}).update(values)

    async def publish(self, subject: str, payload: bytes) -> None:
        self.publish_count += 1
        await self.nc.publish(subject, payload)

    async def subscribe(self, subject: str, handler: Any) -> Any:
        raise NotImplementedError

    async def serve(self, entity: str, verb: str, handler: Any) -> Any:
        async def unserve() -> None:  # commands are not benchmarked here: nothing to stop serving
            return None

        return unserve


async def _with_nats(fn: Any) -> Any:
    import socket

    import nats

    server = ROOT / ".venv" / "bin" / "nats-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen([str(server), "-js", "-sd", d, "-p", str(port), "-a", "127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:  # server still starting
                    await asyncio.sleep(0.02)
            else:
                raise RuntimeError("nats-server did not start")
            nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=2)
            try:
                return await fn(_NatsCtx(nc, "dev1"))
            finally:
                await nc.drain()
        finally:
            proc.terminate()
            proc.wait()


async def bench_pipeline(n: int, nats_ctx: Any = None) -> list[dict[str, Any]]:
    out = []
    for chip in ("mpu6050", "bme280"):
        bus = EmulatedBus(1)
        drv: MPU6050Driver | BME280Driver
        if chip == "mpu6050":
            bus.attach(0x68, MPU6050Model())
            drv = MPU6050Driver("imu", "drone1", bus=bus, reset_s=0.001)
            addr, reg, length = 0x68, 0x3B, 14
        else:
            bus.attach(0x76, BME280Model())
            drv = BME280Driver("baro", "drone1", bus=bus)
            addr, reg, length = 0x76, 0xF7, 8
        ctx: Any = nats_ctx or RecordingContext("dev1", keep=0)
        await drv.start(ctx)
        await drv.stop()  # configured chip, no polling task: we drive _poll ourselves
        drv._ctx = ctx
        ctx.publish_count = ctx.update_count = 0
        best_bare = best_pipe = float("inf")
        for _ in range(3):  # interleaved, best of 3
            t = time.perf_counter()
            for _ in range(n):
                await bus.read_block(addr, reg, length)
            best_bare = min(best_bare, (time.perf_counter() - t) / n)
            t = time.perf_counter()
            for _ in range(n):
                await drv._poll()
            best_pipe = min(best_pipe, (time.perf_counter() - t) / n)
        assert ctx.publish_count >= n and ctx.update_count >= n
        out.append({
            "chip": chip,
            "context": "nats" if nats_ctx is not None else "in-memory",
            "bare_read_us": round(best_bare * 1e6, 2),
            "pipeline_us": round(best_pipe * 1e6, 2),
            "overhead_us": round((best_pipe - best_bare) * 1e6, 2),
            "pipeline_samples_per_s": round(1 / best_pipe),
        })
    return out


async def bench_mavlink(rates: list[float], seconds: float) -> list[dict[str, Any]]:
    out = []
    for rate in rates:
        with tempfile.TemporaryDirectory() as d:
            link = os.path.join(d, "fc")
            proc = subprocess.Popen(
                [sys.executable, "-m", "drivers.serial.sim_fc", "--link", link, "--rate-hz", str(rate),
                 "--heartbeat-hz", "5", "--duration-s", str(seconds + 15)],
                cwd=ROOT, stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            proc.stdout.readline()  # "ready ..."
            ctx = RecordingContext("dev1", keep=0)
            drv = MAVLinkDriver("fc", "drone1", port=link, link_timeout_s=3)
            await drv.start(ctx)
            assert drv.link is not None
            await asyncio.sleep(0.5)
            m0, t0 = drv.messages, time.monotonic()
            backlog = []
            for _ in range(int(seconds * 10)):
                await asyncio.sleep(0.1)
                backlog.append(drv.link.backlog_bytes)  # sampled every 0.1 s
            m1, t1 = drv.messages, time.monotonic()
            await drv.stop()
            proc.send_signal(signal.SIGINT)  # lets the emulator print its counters
            tail = proc.communicate(timeout=10)[0].strip().splitlines()
            stats = dict(zip(tail[-1].split()[::2], map(int, tail[-1].split()[1::2]))) if tail else {}
            half = len(backlog) // 2
            out.append({
                "stream_msgs_per_s": rate * 5,
                "received_msgs_per_s": round((m1 - m0) / (t1 - t0)),
                "backlog_bytes_first_half_max": max(backlog[:half]),
                "backlog_bytes_second_half_max": max(backlog[half:]),
                "emulator_sent": stats.get("sent", -1),
                "emulator_dropped": stats.get("dropped", -1),
                "emulator_max_out_buffer": stats.get("max_out_buffer", -1),
                "bad_bytes": drv.bad_bytes,
            })
    return out


FIREHOSE = r"""
import os, sys, time
from drivers.serial.link import link_pty, open_pty
from drivers.serial.mavcodec import MavCodec
c = MavCodec(1, 1)
m = c.mav
hb = c.encode(m.heartbeat_encode(2, 3, 0, 0, 3))
block = b"".join(c.encode(m.global_position_int_encode(i, 1, 2, 3, 4, 5, 6, 7, 8)) +
                 c.encode(m.attitude_encode(i, 0.1, 0.2, 0.3, 0, 0, 0)) for i in range(50)) + hb
master, slave, path = open_pty()
os.set_blocking(master, True)
link_pty(path, sys.argv[1])
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
frames = 0
while time.monotonic() < end:
    os.write(master, block)
    frames += 101
print("sent", frames, flush=True)
"""


async def bench_firehose(seconds: float) -> dict[str, Any]:
    """The driver's own ceiling: a writer that sends pre-encoded frames as fast as the pty takes
    them (it blocks when the driver falls behind: backpressure, as a UART would overrun)."""
    with tempfile.TemporaryDirectory() as d:
        link = os.path.join(d, "fc")
        proc = subprocess.Popen([sys.executable, "-c", FIREHOSE, link, str(seconds + 8)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()
        ctx = RecordingContext("dev1", keep=0)
        drv = MAVLinkDriver("fc", "drone1", port=link, link_timeout_s=3)
        await drv.start(ctx)
        assert drv.link is not None
        await asyncio.sleep(0.3)
        m0, t0 = drv.messages, time.monotonic()
        for _ in range(int(seconds * 10)):
            await asyncio.sleep(0.1)
        m1, t1 = drv.messages, time.monotonic()
        peak = drv.link.max_backlog_bytes
        pauses = drv.link.reader_pauses
        await drv.stop()
        proc.kill()
        proc.wait()
        return {"received_msgs_per_s": round((m1 - m0) / (t1 - t0)), "backlog_peak_bytes": peak,
                "backlog_cap_bytes": DEFAULT_MAX_BACKLOG,
                "reader_pauses": pauses, "bad_bytes": drv.bad_bytes}


async def bench_camera(seconds: float) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for label, fps in (("unpaced", 10_000.0), ("paced_30fps", 30.0)):
        ctx = RecordingContext("dev1", keep=0)
        cam = CameraDriver("cam", "drone1", source=SyntheticSource(640, 480, fps))
        await cam.start(ctx)
        await asyncio.sleep(0.3)
        s0, c0, t0 = cam.seq, time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        s1, c1, t1 = cam.seq, time.process_time(), time.monotonic()
        await cam.stop()
        res[label] = {"fps": round((s1 - s0) / (t1 - t0), 1),
                      "cpu_percent_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 1)}
    return res


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    n = 2000 if a.quick else 20000
    secs = 1.5 if a.quick else 4.0
    rates = [100.0, 400.0] if a.quick else [100.0, 400.0, 1000.0, 2000.0]
    result: dict[str, Any] = {
        "pipeline": await bench_pipeline(n) + await _with_nats(lambda c: bench_pipeline(n, c)),
        "mavlink": await bench_mavlink(rates, secs),
        "mavlink_firehose": await bench_firehose(secs),
        "camera_640x480": await bench_camera(secs),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print("I2C pipeline (per sample, best of 3):")
    for r in result["pipeline"]:
        print(f"  {r['chip']:8s} {r['context']:9s} bare read {r['bare_read_us']:7.1f} us   pipeline {r['pipeline_us']:7.1f} us"
              f"   overhead {r['overhead_us']:6.1f} us   ({r['pipeline_samples_per_s']}/s)")
    print("MAVLink telemetry (emulator in its own process):")
    for r in result["mavlink"]:
        print(f"  stream {r['stream_msgs_per_s']:7.0f}/s  received {r['received_msgs_per_s']:6d}/s  backlog max "
              f"{r['backlog_bytes_first_half_max']}->{r['backlog_bytes_second_half_max']} B  "
              f"emulator dropped {r['emulator_dropped']}  bad bytes {r['bad_bytes']}")
    f = result["mavlink_firehose"]
    print(f"  firehose (driver ceiling): {f['received_msgs_per_s']}/s, backlog peak {f['backlog_peak_bytes']} B"
          f" (cap {f['backlog_cap_bytes']}), reader pauses {f['reader_pauses']}, bad bytes {f['bad_bytes']}")
    c = result["camera_640x480"]
    print(f"Synthetic camera 640x480: unpaced {c['unpaced']['fps']} fps "
          f"({c['unpaced']['cpu_percent_of_one_core']} % CPU); paced 30 fps: "
          f"{c['paced_30fps']['fps']} fps at {c['paced_30fps']['cpu_percent_of_one_core']} % CPU")


if __name__ == "__main__":
    asyncio.run(main())
