"""The Rust and Zig example components in a real device (embedded nats-server, sandbox worker,
world, JetStream KV), and the ABI promises docs/abi.md makes about them: the dt an edge_tick
gets is the measured time since the last tick, publishing from edge_init reaches NATS, and a
component's KV outlives an unload and is handed back at the next load."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sandbox_support import DEVICE, Recorder, build_module, demo, wait_for

from edge.config import DeviceConfig, EntitySpec
from edge.runtime import Runtime
from edge.wasm.layer import COMPONENT_KV_BUCKET, WasmTickRunner
from edge.wasm.pool import SandboxPool
from edge.world.scheduler import MAX_DT_FACTOR, TickLoop
from edge.world.store import World

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    build_module().build(["rust_geofence", "zig_odometer"])


def odometer_total(rec: Recorder) -> float:
    value: float = struct.unpack("<d", rec.kv[("zig_odometer", "total_m")])[0]
    return value


async def test_dt_is_the_measured_time_since_the_last_tick_capped_at_five_periods() -> None:
    rec = Recorder()
    world = World()
    world.spawn("e", components={"velocity": {"x": 1.0, "y": 0.0, "z": 0.0}})  # 1 m/s
    m = demo("zig_odometer")
    async with SandboxPool(DEVICE, rec, workers=1) as pool:
        await pool.load(m)
        loop = TickLoop(world, WasmTickRunner(pool, m.name), read=m.read, write=m.write,
                        hz=m.tick_hz)
        period = 1.0 / m.tick_hz
        started = asyncio.get_running_loop().time()
        loop.start()
        await asyncio.sleep(1.0)
        time.sleep(3 * period)  # block the event loop: the next tick comes late
        await asyncio.sleep(1.0)
        last_tick = asyncio.get_running_loop().time()
        time.sleep(20 * period)  # longer than the cap: that tick advances 5 periods only
        await asyncio.sleep(0.5 * period)
        await loop.stop()
        await pool.flush()
        # the odometer adds speed * dt per tick: its total is the sum of the dts it was given
        total = odometer_total(rec)
        ticks = loop.stats.ticks
        assert loop.stats.overruns >= 2
        # measured dts add up to the time the loop ran, minus what the cap cut off (and at most
        # one period of the start); nominal dts would add up to ticks * period, ~1 s less
        expected = (last_tick - started) + MAX_DT_FACTOR * period
        assert expected - 2 * period <= total <= expected + 2 * period, (total, expected, ticks)
        assert total > ticks * period + 2 * period


@pytest.fixture
async def device(tmp_path: Path, components_dir: Path) -> AsyncIterator[Runtime]:
    cfg = DeviceConfig(device="sdk", data_dir=tmp_path / "data")
    cfg.components = [components_dir / "rust_geofence" / "manifest.toml",
                      components_dir / "zig_odometer" / "manifest.toml"]
    cfg.entities = [EntitySpec("rover", components={"position": {"x": 60.0, "y": 0.0, "z": 0.0},
                                                    "velocity": {"x": 2.0, "y": 0.0, "z": 0.0}})]
    rt = Runtime(cfg)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


async def test_both_run_on_a_device_and_their_kv_outlives_an_unload(
        device: Runtime, components_dir: Path) -> None:
    assert device.nc is not None and device.js is not None
    states = {c["name"]: c["state"] for c in device.components_status()}
    assert states == {"rust_geofence": "running", "zig_odometer": "running"}
    # the geofence turned the rover (60 m out, heading out) back; its breach is in its KV
    await wait_for(lambda: device.world.get("rover", "velocity")["x"] == -2.0)
    kv = await device.js.key_value(COMPONENT_KV_BUCKET)

    async def breaches() -> int:
        try:
            return int.from_bytes((await kv.get("rust_geofence.breaches")).value or b"", "little")
        except Exception:
            return 0

    for _ in range(50):
        if await breaches() == 1:
            break
        await asyncio.sleep(0.1)
    assert await breaches() == 1

    # publishing from edge_init: load the geofence again and watch its armed event
    sub = await device.nc.subscribe("edge.sdk.evt.geofence.armed")
    await device.unload_component("rust_geofence")
    await device.load_component(str(components_dir / "rust_geofence" / "manifest.toml"))
    msg = await sub.next_msg(timeout=5)
    assert json.loads(msg.data) == {"radius_m": 50.0}
    await sub.unsubscribe()

    # the odometer's total outlives an unload and comes back at the next load
    await asyncio.sleep(0.5)
    await device.unload_component("zig_odometer")

    async def stored_total() -> float:
        value: float = struct.unpack("<d", (await kv.get("zig_odometer.total_m")).value or b"")[0]
        return value

    # the host writes KV behind the calls: wait until the last writes have landed
    stored = await stored_total()
    for _ in range(25):
        await asyncio.sleep(0.2)
        again = await stored_total()
        if again == stored:
            break
        stored = again
    assert stored > 0.0
    await kv.put("zig_odometer.total_m", struct.pack("<d", 1000.0))  # edited while unloaded
    await device.load_component(str(components_dir / "zig_odometer" / "manifest.toml"))
    reply = await device.nc.subscribe("edge.sdk.evt.odometer.total")
    await device.nc.publish("edge.sdk.cmd.odometer", b"report")
    msg = await reply.next_msg(timeout=5)
    total = json.loads(msg.data)["total_m"]
    assert 1000.0 <= total < 1010.0
