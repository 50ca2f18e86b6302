"""build_driver: every kind from config, and errors that name the key and the file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from drivers.camera.driver import CameraDriver
from drivers.config import KINDS, build_driver
from drivers.gpio.outputs import PWMOutputDriver
from drivers.i2c.bus import SMBusBus, forget_shared_buses
from drivers.i2c.emulated import EmulatedBus
from drivers.i2c.bme280 import BME280Driver
from drivers.i2c.ina219 import INA219Driver
from drivers.i2c.mpu6050 import MPU6050Driver
from drivers.testing import RecordingContext
from edge.errors import ConfigError

SAMPLE = Path(__file__).resolve().parents[2] / "docs" / "drivers" / "pi-drone.toml"


@pytest.fixture(autouse=True)
def _fresh_buses() -> None:
    forget_shared_buses()


def test_sample_config_builds_every_driver() -> None:
    data = tomllib.loads(SAMPLE.read_text())
    drivers = [build_driver(t["name"], t, file=str(SAMPLE)) for t in data["drivers"]]
    assert {d.kind for d in drivers} >= set(KINDS) - {"bmp280"}
    power = next(d for d in drivers if d.name == "power")
    assert isinstance(power, INA219Driver) and power.curve.cells == 4 and power.capacity_mah == 5200
    assert isinstance(power.bus, SMBusBus) and power.bus.number == 1
    gimbal = next(d for d in drivers if d.name == "gimbal")
    assert isinstance(gimbal, PWMOutputDriver) and gimbal.max_angle_deg == 45
    cam = next(d for d in drivers if d.name == "camera")
    assert isinstance(cam, CameraDriver) and cam.snapshot_s == 10


@pytest.mark.parametrize(
    ("table", "key", "text"),
    [
        ({"entity": "d"}, "drivers[0].kind", "missing required key 'kind'"),
        ({"kind": "bme280"}, "drivers[0].entity", "missing required key 'entity'"),
        ({"kind": "warp_drive", "entity": "d"}, "drivers[0].kind", "unknown driver kind"),
        ({"kind": "bme280", "entity": "d", "adress": 0x76}, "drivers[0].adress", "unknown key"),
        ({"kind": "bme280", "entity": "d", "rate_hz": "fast"}, "drivers[0].rate_hz", "a number"),
        ({"kind": "bme280", "entity": "d", "rate_hz": 0}, "drivers[0].rate_hz", "must be within"),
        ({"kind": "bme280", "entity": "d", "backend": "fake"}, "drivers[0].backend", "one of"),
        ({"kind": "mpu6050", "entity": "d", "accel_range_g": 3}, "drivers[0].accel_range_g", "one of"),
        ({"kind": "mavlink", "entity": "d"}, "drivers[0].port", "missing required key 'port'"),
        ({"kind": "led", "entity": "d", "pin": True}, "drivers[0].pin", "expected an integer, got true"),
        ({"kind": "ina219", "entity": "d", "curve": [[1]]}, "drivers[0].curve", "pairs"),
        ({"kind": "camera", "entity": "d", "source": "file"}, "drivers[0].path", "missing"),
        ({"kind": "pwm", "entity": "d", "pin": 3, "min_pulse_ms": 2.5}, "drivers[0].kind", "min_pulse"),
    ],
)
def test_config_errors_name_key_and_file(table: dict[str, object], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as ei:
        build_driver("x", table, file="/etc/edge/device.toml")
    err = ei.value
    assert err.key == key and err.file == "/etc/edge/device.toml"
    assert text in str(err) and "/etc/edge/device.toml" in str(err)


async def test_emulated_i2c_from_config_shares_one_bus() -> None:
    baro = build_driver("baro", {"kind": "bme280", "entity": "d", "backend": "emulated", "rate_hz": 20})
    imu = build_driver("imu", {"kind": "mpu6050", "entity": "d", "backend": "emulated"})
    assert isinstance(baro, BME280Driver) and isinstance(imu, MPU6050Driver)
    bus = baro.bus
    assert isinstance(bus, EmulatedBus) and bus is imu.bus
    assert set(bus.models) == {0x76, 0x68}
    ctx = RecordingContext()
    await baro.start(ctx)
    await ctx.wait_for(lambda: bool(ctx.component("d", "environment")))
    await baro.stop()
    assert abs(float(ctx.component("d", "environment")["temperature"]) - 21.0) <= 0.01
