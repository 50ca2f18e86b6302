"""InvenSense MPU-6050 (3-axis accelerometer + 3-axis gyro) over I2C.

Key components
- :class:`MPU6050Driver`: checks WHO_AM_I (0x75 = 0x68), resets the chip (PWR_MGMT_1 bit 7),
  wakes it (clears the SLEEP bit 6, selects the X-gyro PLL clock), sets the sample-rate divider,
  the digital low-pass filter and the full-scale ranges (GYRO_CONFIG / ACCEL_CONFIG bits 4:3),
  reads them back, then reads the 14 big-endian bytes 0x3B..0x48 at ``rate_hz`` into the ``imu``
  component ``{ax, ay, az m/s², gx, gy, gz rad/s, temperature °C}``.

Example
    drv = MPU6050Driver("imu", "drone1", bus=bus, address=0x68, accel_range_g=4, gyro_range_dps=500)
"""

from __future__ import annotations

import asyncio
import math
import struct
from typing import ClassVar

from drivers.base import PollingDriver
from drivers.config import Table
from drivers.i2c.bus import Bus, shared_bus

REG_SMPLRT_DIV = 0x19
REG_CONFIG = 0x1A
REG_GYRO_CONFIG = 0x1B
REG_ACCEL_CONFIG = 0x1C
REG_ACCEL_XOUT_H = 0x3B  # 14 bytes: accel xyz, temp, gyro xyz (big-endian int16)
DATA_LEN = 14
REG_PWR_MGMT_1 = 0x6B
REG_WHO_AM_I = 0x75
WHO_AM_I = 0x68
PWR_DEVICE_RESET = 0x80
PWR_SLEEP = 0x40
PWR_CLK_PLL_XGYRO = 0x01
RESET_S = 0.1  # seconds the chip needs after DEVICE_RESET (datasheet: 100 ms)

ACCEL_RANGES_G = {2: 0, 4: 1, 8: 2, 16: 3}  # full scale (g) -> AFS_SEL
GYRO_RANGES_DPS = {250: 0, 500: 1, 1000: 2, 2000: 3}  # full scale (°/s) -> FS_SEL
STANDARD_GRAVITY = 9.80665  # m/s² per g
TEMP_SENSITIVITY = 340.0  # LSB per °C
TEMP_OFFSET_C = 36.53  # °C at raw 0
DLPF_44HZ = 3  # CONFIG.DLPF_CFG for 44 Hz accel / 42 Hz gyro bandwidth

DEFAULT_ADDRESS = 0x68  # AD0 low; 0x69 with AD0 high
DEFAULT_RATE_HZ = 50.0
DEFAULT_ACCEL_RANGE_G = 4
DEFAULT_GYRO_RANGE_DPS = 500
FULL_SCALE_LSB = 32768.0
#: Gyro sensitivity per FS_SEL range, LSB per °/s (register map 4.19, product spec 6.1): the
#: datasheet's rounded values, not 32768 / range (which would be 131.07 ... 16.38).
GYRO_LSB_PER_DPS = {250: 131.0, 500: 65.5, 1000: 32.8, 2000: 16.4}


def accel_lsb_per_g(range_g: int) -> float:
    return FULL_SCALE_LSB / range_g


def gyro_lsb_per_dps(range_dps: int) -> float:
    return GYRO_LSB_PER_DPS[range_dps]


class MPU6050Driver(PollingDriver):
    """An MPU-6050 feeding the ``imu`` component."""

    kind: ClassVar[str] = "mpu6050"

    def __init__(
        self,
        name: str,
        entity: str,
        *,
        bus: Bus,
        address: int = DEFAULT_ADDRESS,
        rate_hz: float = DEFAULT_RATE_HZ,
        accel_range_g: int = DEFAULT_ACCEL_RANGE_G,
        gyro_range_dps: int = DEFAULT_GYRO_RANGE_DPS,
        stuck_after: int = 0,
        max_consecutive_errors: int | None = None,
        publish_telemetry: bool = True,
        reset_s: float = RESET_S,
    ) -> None:
        super().__init__(name, entity, rate_hz=rate_hz, stuck_after=stuck_after,
                         max_consecutive_errors=max_consecutive_errors,
                         publish_telemetry=publish_telemetry)
        if accel_range_g not in ACCEL_RANGES_G:
            raise ValueError(f"accel_range_g must be one of {sorted(ACCEL_RANGES_G)}; got {accel_range_g}")
        if gyro_range_dps not in GYRO_RANGES_DPS:
            raise ValueError(f"gyro_range_dps must be one of {sorted(GYRO_RANGES_DPS)}; got {gyro_range_dps}")
        self.bus = bus
        self.address = address
        self.accel_range_g = accel_range_g
        self.gyro_range_dps = gyro_range_dps
        self.reset_s = reset_s
        self._accel_scale = STANDARD_GRAVITY / accel_lsb_per_g(accel_range_g)  # m/s² per LSB
        self._gyro_scale = math.radians(1.0) / gyro_lsb_per_dps(gyro_range_dps)  # rad/s per LSB

    @property
    def where(self) -> str:
        return f"{self.bus.name}:0x{self.address:02x}"

    async def _open(self) -> None:
        who = await self.bus.read_byte_data(self.address, REG_WHO_AM_I)
        if who != WHO_AM_I:
            raise ValueError(f"WHO_AM_I 0x{who:02x} at 0x{self.address:02x} is not an MPU-6050 (0x68)")
        await self.bus.write_byte_data(self.address, REG_PWR_MGMT_1, PWR_DEVICE_RESET)
        await asyncio.sleep(self.reset_s)
        await self.bus.write_byte_data(self.address, REG_PWR_MGMT_1, PWR_CLK_PLL_XGYRO)  # wake
        divider = max(0, min(255, round(1000.0 / self.rate_hz) - 1))  # 1 kHz internal rate with DLPF
        await self.bus.write_byte_data(self.address, REG_SMPLRT_DIV, divider)
        await self.bus.write_byte_data(self.address, REG_CONFIG, DLPF_44HZ)
        gyro_cfg = GYRO_RANGES_DPS[self.gyro_range_dps] << 3
        accel_cfg = ACCEL_RANGES_G[self.accel_range_g] << 3
        await self.bus.write_byte_data(self.address, REG_GYRO_CONFIG, gyro_cfg)
        await self.bus.write_byte_data(self.address, REG_ACCEL_CONFIG, accel_cfg)
        back = await self.bus.read_block(self.address, REG_GYRO_CONFIG, 2)
        pwr = await self.bus.read_byte_data(self.address, REG_PWR_MGMT_1)
        if (back[0] & 0x18) != gyro_cfg or (back[1] & 0x18) != accel_cfg or pwr & PWR_SLEEP:
            raise ValueError("configuration did not stick (read back differs); check wiring/power")

    async def read(self) -> dict[str, float]:
        raw = await self.bus.read_block(self.address, REG_ACCEL_XOUT_H, DATA_LEN)
        self._check_stuck(raw)
        ax, ay, az, t, gx, gy, gz = struct.unpack(">hhhhhhh", raw)
        a, g = self._accel_scale, self._gyro_scale
        return {
            "ax": ax * a, "ay": ay * a, "az": az * a,
            "gx": gx * g, "gy": gy * g, "gz": gz * g,
            "temperature": t / TEMP_SENSITIVITY + TEMP_OFFSET_C,
        }

    async def _poll(self) -> None:
        await self._emit("imu", await self.read())


def from_config(t: Table) -> MPU6050Driver:
    address = t.integer("address", DEFAULT_ADDRESS, lo=0x03, hi=0x77)
    bus = shared_bus(t.integer("bus", 1, lo=0), t.backend)
    if t.emulated:
        from drivers.i2c.emulated import ensure_model
        from drivers.i2c.sim_mpu6050 import MPU6050Model

        ensure_model(bus, address, MPU6050Model)
    accel = t.integer("accel_range_g", DEFAULT_ACCEL_RANGE_G, choices=sorted(ACCEL_RANGES_G), unit="g")
    gyro = t.integer("gyro_range_dps", DEFAULT_GYRO_RANGE_DPS, choices=sorted(GYRO_RANGES_DPS), unit="deg/s")
    return MPU6050Driver(
        t.name, t.entity, bus=bus, address=address,
        rate_hz=t.number("rate_hz", DEFAULT_RATE_HZ, lo=0.01, hi=1000.0),
        accel_range_g=accel, gyro_range_dps=gyro,
        stuck_after=t.integer("stuck_after", 0, lo=0),
        max_consecutive_errors=t.integer("max_consecutive_errors", None, lo=0),
        publish_telemetry=t.publish,
    )
