"""Driver benchmarks.

1. Per-sample cost of the driver pipeline (bus read -> decode -> component update -> subject
   publish) against a bare read loop on the same emulated I2C bus, interleaved round by round
   (bench/harness.py); publishing to an in-memory context and to a real nats-server (nats-py).
2. MAVLink telemetry: messages/s the driver sustains from the flight-controller emulator (run in
   its own process, like real hardware) with no backlog growth, at increasing stream rates.
3. Synthetic camera at 640x480: frames/s unpaced, and CPU % of this process at a paced 30 fps.
2 and 3 run in real time against an external rate: absolute figures, labelled so.

Run: .venv/bin/python bench/bench_drivers.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the test rigs (tests/rigs/)

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
from rigs.nats import running_server  # noqa: E402
from harness import Absolute, Comparison, Row, ainterleave, report  # noqa: E402


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
    import nats

    with tempfile.TemporaryDirectory() as d:
        async with running_server(Path(d)) as srv:
            nc = await nats.connect(srv.url, connect_timeout=2)
            try:
                return await fn(_NatsCtx(nc, "dev1"))
            finally:
                await nc.drain()


async def bench_pipeline(per_round: int, rounds: int, nats_ctx: Any = None) -> list[Row]:
    rows: list[Row] = []
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

        async def bare(bus: EmulatedBus = bus, addr: int = addr, reg: int = reg,
                       length: int = length) -> None:
            await bus.read_block(addr, reg, length)

        s = await ainterleave({"pipeline": drv._poll, "bare read": bare}, rounds=rounds,
                              inner=per_round)
        assert ctx.publish_count >= rounds * per_round and ctx.update_count >= rounds * per_round
        extra = [p - b for p, b in zip(s["pipeline"], s["bare read"], strict=True)]
        context = "nats-server" if nats_ctx is not None else "in-memory context"
        rows.append(Comparison.of(f"I2C {chip} read → decode → update → publish ({context})", s,
                                  "pipeline", "bare read", op="samples",
                                  note=f"+{statistics.median(extra) * 1e6:.1f} µs a sample (median "
                                       f"of per-round differences); {per_round} samples a round"))
    return rows


#: messages the emulator streams each tick with one pack and no setpoint: GLOBAL_POSITION_INT,
#: LOCAL_POSITION_NED, ATTITUDE, VFR_HUD, SYS_STATUS, BATTERY_STATUS
STREAMED_PER_TICK = 6


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
            # the driver asks for its streams at telemetry_hz (SET_MESSAGE_INTERVAL, which the
            # emulator honours): ask for the emulator's own rate
            drv = MAVLinkDriver("fc", "drone1", port=link, link_timeout_s=3, telemetry_hz=rate)
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
                "stream_msgs_per_s": rate * STREAMED_PER_TICK,
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


def mavlink_rows(result: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for r in result["mavlink"]:
        rows.append(Absolute(
            f"MAVLink telemetry into components, {r['stream_msgs_per_s']:,.0f} msg/s offered",
            f"received {r['received_msgs_per_s']:,} msg/s",
            f"emulator's own rate (separate process); backlog max {r['backlog_bytes_first_half_max']}"
            f"→{r['backlog_bytes_second_half_max']} B (1st→2nd half), dropped "
            f"{r['emulator_dropped']}, bad bytes {r['bad_bytes']}"))
    f = result["mavlink_firehose"]
    rows.append(Absolute("MAVLink driver ceiling (pre-encoded frames as fast as the pty takes them)",
                         f"{f['received_msgs_per_s']:,} msg/s",
                         f"backlog peak {f['backlog_peak_bytes']} B (cap {f['backlog_cap_bytes']}), "
                         f"reader pauses {f['reader_pauses']}, bad bytes {f['bad_bytes']}"))
    c = result["camera_640x480"]
    rows.append(Absolute("synthetic camera 640×480",
                         f"paced 30 fps: {c['paced_30fps']['fps']} fps at "
                         f"{c['paced_30fps']['cpu_percent_of_one_core']} % of a core; unpaced "
                         f"{c['unpaced']['fps']} fps", "real time, one run"))
    return rows


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    per_round, rounds = (200, 10) if a.quick else (500, 30)
    secs = 1.5 if a.quick else 4.0
    rates = [100.0, 400.0] if a.quick else [100.0, 400.0, 1000.0, 2000.0]
    pipeline = await bench_pipeline(per_round, rounds)
    pipeline += await _with_nats(lambda c: bench_pipeline(per_round, rounds, c))
    result: dict[str, Any] = {
        "mavlink": await bench_mavlink(rates, secs),
        "mavlink_firehose": await bench_firehose(secs),
        "camera_640x480": await bench_camera(secs),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    if a.json:
        result["pipeline"] = [asdict(r) for r in pipeline]
        print(json.dumps(result, indent=2))
        return
    report(pipeline + mavlink_rows(result), command="bench/bench_drivers.py")


if __name__ == "__main__":
    asyncio.run(main())
