"""I2C chip drivers against the register-level emulated chips."""

from __future__ import annotations

import math

import pytest

from drivers.i2c import bme280 as bme
from drivers.i2c.bme280 import BME280Driver, BMP280Driver
from drivers.i2c.emulated import EmulatedBus
from drivers.i2c.ina219 import INA219Driver, VoltageCurve, calibration_for
from drivers.i2c.mpu6050 import MPU6050Driver
from drivers.i2c.sim_bme280 import BME280Model
from drivers.i2c.sim_ina219 import INA219Model
from drivers.i2c.sim_mpu6050 import MPU6050Model
from drivers.scan import scan
from drivers.testing import RecordingContext
from edge.errors import DriverError

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def bus() -> EmulatedBus:
    return EmulatedBus(1)


@pytest.mark.parametrize(
    ("t", "p", "h"),
    [(21.0, 101325.0, 45.0), (-20.37, 85000.0, 5.0), (45.5, 108000.25, 99.0), (0.0, 30000.0, 0.5)],
)
async def test_bme280_round_trip_within_datasheet_resolution(bus: EmulatedBus, t: float, p: float,
                                                             h: float) -> None:
    model = bus.attach(0x76, BME280Model())
    assert isinstance(model, BME280Model)
    model.set(temperature=t, pressure=p, humidity=h)
    drv = BME280Driver("baro", "drone1", bus=bus, address=0x76, oversampling=16)
    await drv.start(RecordingContext())
    try:
        r = await drv.read()
    finally:
        await drv.stop()
    assert abs(r["temperature"] - t) <= 0.01  # output resolution 0.01 °C
    assert abs(r["pressure"] - p) <= 0.2  # ~0.16 Pa per LSB at 20 bits
    assert abs(r["humidity"] - h) <= 0.01  # 1/1024 %RH output, ~0.008 %RH per ADC LSB


async def test_bme280_low_oversampling_gives_coarser_steps(bus: EmulatedBus) -> None:
    model = bus.attach(0x76, BME280Model())
    assert isinstance(model, BME280Model)
    model.set(temperature=21.003)
    drv = BME280Driver("baro", "drone1", bus=bus, address=0x76, oversampling=1)
    await drv.start(RecordingContext())
    raw = await bus.read_block(0x76, bme.REG_DATA, 6)
    await drv.stop()
    assert raw[5] & 0xF0 == 0 and raw[2] & 0xF0 == 0  # 16-bit: the xlsb nibbles are zero
    assert bus.models[0x76].regs[bme.REG_CTRL_MEAS] == (1 << 5) | (1 << 2) | bme.MODE_NORMAL


async def test_bme280_calibration_encoding_round_trips() -> None:
    from drivers.i2c.sim_bme280 import DEFAULT_CALIBRATION

    a, b = DEFAULT_CALIBRATION.to_registers()
    assert bme.Calibration.from_registers(a, b) == DEFAULT_CALIBRATION
    negative = bme.Calibration(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, -14, 15, -300, -7, -8)
    assert bme.Calibration.from_registers(*negative.to_registers()) == negative


def test_compensation_matches_datasheet_example() -> None:
    # Datasheet (BMP280 3.12): adc_T 519888 -> 25.08 °C, adc_P 415148 -> ~100653 Pa.
    from drivers.i2c.sim_bme280 import DEFAULT_CALIBRATION as cal

    t_fine, t = bme.compensate_temperature(519888, cal)
    assert t == 2508
    p = bme.compensate_pressure(415148, t_fine, cal) / 256.0
    assert abs(p - 100653.27) < 1.0


async def test_bme280_publishes_environment(bus: EmulatedBus) -> None:
    bus.attach(0x77, BME280Model())
    ctx = RecordingContext("dev1")
    drv = BME280Driver("baro", "drone1", bus=bus, address=0x77, rate_hz=50)
    await drv.start(ctx)
    await ctx.wait_for(lambda: len(ctx.published_on("edge.dev1.tele.drone1.environment")) >= 3)
    await drv.stop()
    env = ctx.component("drone1", "environment")
    assert set(env) == {"temperature", "pressure", "humidity"}
    assert abs(float(env["pressure"]) - 101325.0) < 0.2
    assert drv.health().samples >= 3 and drv.health().errors == 0


async def test_bmp280_has_no_humidity(bus: EmulatedBus) -> None:
    bus.attach(0x76, BME280Model(humidity=False))
    ctx = RecordingContext()
    drv = BMP280Driver("baro", "drone1", bus=bus, address=0x76)
    await drv.start(ctx)
    r = await drv.read()
    await drv.stop()
    assert set(r) == {"temperature", "pressure"}
    assert drv.kind == "bmp280"


async def test_bme280_wrong_chip_is_refused(bus: EmulatedBus) -> None:
    bus.attach(0x76, BME280Model(humidity=False))  # a BMP280 where a BME280 is configured
    drv = BME280Driver("baro", "drone1", bus=bus, address=0x76)
    with pytest.raises(DriverError, match="chip id 0x58") as ei:
        await drv.start(RecordingContext())
    assert ei.value.device == "i2c-1:0x76"
    assert drv.health().state == "failed"


async def test_bme280_sleep_mode_reads_reset_values(bus: EmulatedBus) -> None:
    bus.attach(0x76, BME280Model())
    raw = await bus.read_block(0x76, bme.REG_DATA, 8)
    assert raw == bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])
    # forced mode: one conversion, then back to sleep
    await bus.write_byte_data(0x76, bme.REG_CTRL_HUM, 1)
    await bus.write_byte_data(0x76, bme.REG_CTRL_MEAS, (1 << 5) | (1 << 2) | bme.MODE_FORCED)
    assert await bus.read_byte_data(0x76, bme.REG_CTRL_MEAS) & 0x03 == bme.MODE_SLEEP
    raw = await bus.read_block(0x76, bme.REG_DATA, 8)
    assert raw[0] != 0x80 or raw[1] != 0


async def test_mpu6050_scales_by_configured_range(bus: EmulatedBus) -> None:
    model = bus.attach(0x68, MPU6050Model(noise_lsb=0))
    assert isinstance(model, MPU6050Model)
    model.set(ax=3.0 * 9.80665, ay=-1.0, az=9.80665, gx=math.radians(300), gy=0.1, gz=-0.2,
              temperature=31.0)
    for accel_g, gyro_dps in ((4, 500), (16, 2000)):
        drv = MPU6050Driver("imu", "drone1", bus=bus, accel_range_g=accel_g, gyro_range_dps=gyro_dps,
                            reset_s=0.001)
        await drv.start(RecordingContext())
        r = await drv.read()
        await drv.stop()
        a_res = 9.80665 * accel_g / 32768
        g_res = math.radians(gyro_dps) / 32768
        assert abs(r["ax"] - 3.0 * 9.80665) <= a_res and abs(r["ay"] + 1.0) <= a_res
        assert abs(r["gx"] - math.radians(300)) <= g_res and abs(r["gz"] + 0.2) <= g_res
        assert abs(r["temperature"] - 31.0) < 0.01
        cfg = await bus.read_block(0x68, 0x1B, 2)
        assert cfg[0] >> 3 & 3 == {500: 1, 2000: 3}[gyro_dps] and cfg[1] >> 3 & 3 == {4: 1, 16: 3}[accel_g]


async def test_mpu6050_saturates_at_full_scale(bus: EmulatedBus) -> None:
    model = bus.attach(0x68, MPU6050Model(noise_lsb=0))
    assert isinstance(model, MPU6050Model)
    model.set(ax=5.0 * 9.80665)  # 5 g on a ±2 g range
    drv = MPU6050Driver("imu", "drone1", bus=bus, accel_range_g=2, reset_s=0.001)
    await drv.start(RecordingContext())
    r = await drv.read()
    await drv.stop()
    assert abs(r["ax"] - 32767 * 2 * 9.80665 / 32768) < 1e-6


async def test_mpu6050_asleep_after_reset_until_woken(bus: EmulatedBus) -> None:
    model = bus.attach(0x68, MPU6050Model())
    assert await bus.read_byte_data(0x68, 0x75) == 0x68
    assert await bus.read_byte_data(0x68, 0x6B) == 0x40  # SLEEP after power-on
    assert await bus.read_block(0x68, 0x3B, 14) == bytes(14)  # no samples while asleep
    await bus.write_byte_data(0x68, 0x75, 0x00)  # WHO_AM_I is read-only
    assert await bus.read_byte_data(0x68, 0x75) == 0x68
    await bus.write_byte_data(0x68, 0x6B, 0x01)
    assert (await bus.read_block(0x68, 0x3B, 14))[4:6] != b"\x00\x00"
    assert isinstance(model, MPU6050Model) and model.samples == 1


async def test_ina219_current_from_calibration(bus: EmulatedBus) -> None:
    model = bus.attach(0x40, INA219Model(shunt_ohms=0.1))
    assert isinstance(model, INA219Model)
    model.set(voltage=11.1, current=1.5)
    drv = INA219Driver("power", "drone1", bus=bus, shunt_ohms=0.1, max_current_a=3.2)
    await drv.start(RecordingContext())
    r = await drv.read()
    cal = (await bus.read_block(0x40, 0x05, 2))
    await drv.stop()
    expected_cal, lsb = calibration_for(0.1, 3.2)
    assert (cal[0] << 8 | cal[1]) == expected_cal == 4194  # trunc(0.04096 / (3.2/32768 * 0.1))
    assert abs(r["voltage"] - 11.1) <= 0.004
    assert abs(r["current"] - 1.5) <= 2 * lsb
    assert abs(r["shunt_voltage"] - 0.15) < 1e-5
    assert abs(r["power"] - 11.1 * 1.5) < 0.1


async def test_ina219_feeds_battery_with_level_and_drain(bus: EmulatedBus) -> None:
    model = bus.attach(0x40, INA219Model())
    assert isinstance(model, INA219Model)
    model.set(voltage=3 * 3.79, current=2.0)
    ctx = RecordingContext()
    drv = INA219Driver("power", "drone1", bus=bus, rate_hz=50, capacity_mah=2000)
    await drv.start(ctx)
    await ctx.wait_for(lambda: drv.health().samples >= 2)
    await drv.stop()
    b = ctx.component("drone1", "battery")
    assert abs(float(b["level"]) - 0.5) < 0.01
    assert abs(float(b["drain"]) - 2.0 / (2.0 * 3600)) < 1e-5
    assert VoltageCurve().level(4.3 * 3) == 1.0 and VoltageCurve().level(3.0 * 3) == 0.0


async def test_ina219_overflow_is_an_error_not_a_value(bus: EmulatedBus) -> None:
    model = bus.attach(0x40, INA219Model(shunt_ohms=0.1))
    assert isinstance(model, INA219Model)
    model.set(current=5.0)  # 500 mV across the shunt: beyond the ±320 mV PGA range
    drv = INA219Driver("power", "drone1", bus=bus)
    await drv.start(RecordingContext())
    with pytest.raises(ValueError, match="overflow"):
        await drv.read()
    await drv.stop()


async def test_scan_finds_and_identifies(bus: EmulatedBus) -> None:
    bus.attach(0x76, BME280Model())
    bus.attach(0x77, BME280Model(humidity=False))
    bus.attach(0x68, MPU6050Model())
    bus.attach(0x40, INA219Model())
    found = await scan(bus)
    assert found == [(0x40, "ina219"), (0x68, "mpu6050"), (0x76, "bme280"), (0x77, "bmp280")]
    bus.fault(0x68, nack=True)
    assert [a for a, _ in await scan(bus)] == [0x40, 0x76, 0x77]
