"""Faults on I2C devices, and the supervisor's restart-with-backoff behaviour."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from drivers.base import DriverState
from drivers.i2c.bme280 import BME280Driver
from drivers.i2c.bus import SMBusBus
from drivers.i2c.emulated import EmulatedBus
from drivers.i2c.mpu6050 import MPU6050Driver
from drivers.i2c.sim_bme280 import BME280Model
from drivers.i2c.sim_mpu6050 import MPU6050Model
from drivers.supervisor import DriverSupervisor
from drivers.testing import RecordingContext
from edge.errors import DriverError

pytestmark = pytest.mark.timeout(20)


def _imu(bus: EmulatedBus, **kw: object) -> MPU6050Driver:
    return MPU6050Driver("imu", "drone1", bus=bus, rate_hz=100, reset_s=0.001, **kw)  # type: ignore[arg-type]


async def test_missing_device_nack_at_startup() -> None:
    bus = EmulatedBus(1)  # nothing attached: every address NACKs
    drv = BME280Driver("baro", "drone1", bus=bus, address=0x76)
    with pytest.raises(DriverError) as ei:
        await drv.start(RecordingContext())
    assert ei.value.device == "i2c-1:0x76"
    assert "No such device" in str(ei.value.cause) or "ENXIO" in str(ei.value.cause) \
        or "address 0x76" in str(ei.value.cause)
    h = drv.health()
    assert h.state == "failed" and h.errors == 1 and h.last_error is not None


async def test_real_backend_missing_bus_file() -> None:
    drv = BME280Driver("baro", "drone1", bus=SMBusBus(97), address=0x76)
    with pytest.raises(DriverError, match="FileNotFoundError") as ei:
        await drv.start(RecordingContext())
    assert ei.value.device == "i2c-97:0x76"
    await drv.stop()


async def test_io_error_mid_stream_is_counted_then_fails() -> None:
    bus = EmulatedBus(1)
    bus.attach(0x68, MPU6050Model())
    drv = _imu(bus)
    ctx = RecordingContext()
    await drv.start(ctx)
    bus.fault(0x68, io_error_after=5)
    err = await asyncio.wait_for(drv.wait_failed(), 5)
    h = drv.health()
    assert h.state == "failed"
    assert h.errors == drv.max_consecutive_errors + 1  # tolerated, then failed
    assert "Input/output error" in (h.last_error or "")
    assert err.device == "i2c-1:0x68" and "reads in a row" in err.message
    await drv.stop()


async def test_transient_error_is_tolerated() -> None:
    bus = EmulatedBus(1)
    bus.attach(0x68, MPU6050Model())
    drv = _imu(bus, max_consecutive_errors=1000)
    ctx = RecordingContext()
    await drv.start(ctx)
    f = bus.fault(0x68, io_error_after=0)
    await ctx.wait_for(lambda: drv.health().errors >= 2)
    bus.clear_fault(0x68)
    n = drv.health().samples
    await ctx.wait_for(lambda: drv.health().samples >= n + 5)
    assert drv.health().state == "running" and f.reads == 0
    await drv.stop()


async def test_stuck_data_fails_the_driver() -> None:
    bus = EmulatedBus(1)
    model = bus.attach(0x68, MPU6050Model())
    drv = _imu(bus, stuck_after=10)
    await drv.start(RecordingContext())
    await asyncio.sleep(0.1)
    assert drv.health().state == "running"  # noisy data is never identical
    model.stuck = True
    err = await asyncio.wait_for(drv.wait_failed(), 5)
    assert err.cause == "data stuck"
    await drv.stop()


async def test_supervisor_retries_with_backoff_and_others_keep_running() -> None:
    bus = EmulatedBus(1)
    bus.attach(0x68, MPU6050Model())
    ctx = RecordingContext()
    baro = BME280Driver("baro", "drone1", bus=bus, address=0x76, rate_hz=20)  # missing at start
    imu = _imu(bus)
    sup = DriverSupervisor(ctx, [baro, imu], backoff_initial_s=0.05, backoff_max_s=0.4)
    await sup.start()
    try:
        await ctx.wait_for(lambda: baro.restarts >= 3)
        st = {s.name: s for s in sup.status()}
        assert st["baro"].failure_device == "i2c-1:0x76"
        assert "0x76" in (st["baro"].failure_cause or "")
        assert st["baro"].health.state in ("backoff", "failed", "starting")
        assert st["imu"].health.state == "running" and st["imu"].failure_cause is None
        assert imu.health().samples > 0 and imu.restarts == 0
        # the chip appears: the next retry succeeds
        bus.attach(0x76, BME280Model())
        await ctx.wait_for(lambda: baro.state is DriverState.RUNNING, timeout=3)
        await ctx.wait_for(lambda: baro.health().samples >= 2)
        d = sup.status()[0].to_dict()
        assert d["state"] == "running" and d["restarts"] >= 3
    finally:
        await sup.stop()
    assert baro.state is DriverState.STOPPED and imu.state is DriverState.STOPPED


async def test_supervisor_backoff_doubles_up_to_cap() -> None:
    bus = EmulatedBus(1)
    ctx = RecordingContext()
    baro = BME280Driver("baro", "drone1", bus=bus, address=0x76)
    starts: list[float] = []
    orig = baro._open

    async def timed_open() -> None:
        starts.append(time.monotonic())
        await orig()

    baro._open = timed_open  # type: ignore[method-assign]
    sup = DriverSupervisor(ctx, [baro], backoff_initial_s=0.05, backoff_max_s=0.2)
    await sup.start()
    await ctx.wait_for(lambda: len(starts) >= 6, timeout=5)
    retry = sup.status()[0].retry_in_s
    await sup.stop()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert 0.04 <= gaps[0] < 0.09 and 0.09 <= gaps[1] < 0.16  # 0.05, 0.1
    assert all(0.19 <= g < 0.3 for g in gaps[2:5])  # capped at 0.2
    assert retry is None or retry <= 0.2


async def test_supervisor_restarts_after_mid_stream_failure() -> None:
    bus = EmulatedBus(1)
    bus.attach(0x68, MPU6050Model())
    ctx = RecordingContext()
    imu = _imu(bus)
    sup = DriverSupervisor(ctx, [imu], backoff_initial_s=0.05)
    await sup.start()
    try:
        f = bus.fault(0x68, io_error_after=3)
        await ctx.wait_for(lambda: imu.restarts >= 1 and sup.status()[0].failure_cause is not None)
        assert "Input/output error" in (sup.status()[0].failure_cause or "")
        bus.clear_fault(0x68)
        await ctx.wait_for(lambda: imu.state is DriverState.RUNNING and imu.health().samples > f.reads + 5)
    finally:
        await sup.stop()
