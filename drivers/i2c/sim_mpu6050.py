"""Emulated MPU-6050: WHO_AM_I, sleep/reset in PWR_MGMT_1, full-scale ranges, big-endian data.

Physical values are set with ``set(ax=…, gz=…, temperature=…)`` (m/s², rad/s, °C) or a ``script``
function of time; at each read of the data registers (while awake and not ``stuck``) they are
encoded with the configured ranges, saturating at full scale like the chip, plus optional Gaussian
noise (``noise_lsb``) so consecutive samples differ as on real hardware. Asleep (power-on state),
the data registers keep their last values (zero after reset).
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Callable

from drivers.i2c import mpu6050 as chip
from drivers.i2c.emulated import ChipModel

Script = Callable[[float], dict[str, float]]
DEFAULT_NOISE_LSB = 2.0  # standard deviation of sensor noise, LSB
_READ_ONLY = {chip.REG_WHO_AM_I, *range(chip.REG_ACCEL_XOUT_H, chip.REG_ACCEL_XOUT_H + chip.DATA_LEN)}
_ACCEL_FS = {v: k for k, v in chip.ACCEL_RANGES_G.items()}
_GYRO_FS = {v: k for k, v in chip.GYRO_RANGES_DPS.items()}


def _clamp16(x: float) -> int:
    return max(-32768, min(32767, round(x)))


class MPU6050Model(ChipModel):
    name = "mpu6050"

    def __init__(self, *, script: Script | None = None, noise_lsb: float = DEFAULT_NOISE_LSB,
                 seed: int = 1) -> None:
        self.values = {"ax": 0.0, "ay": 0.0, "az": chip.STANDARD_GRAVITY,
                       "gx": 0.0, "gy": 0.0, "gz": 0.0, "temperature": 25.0}
        self.script = script
        self.noise_lsb = noise_lsb
        self._rng = random.Random(seed)
        self._t0 = time.monotonic()
        self.samples = 0
        super().__init__()

    def set(self, **values: float) -> None:
        unknown = set(values) - set(self.values)
        if unknown:
            raise KeyError(f"unknown quantity {sorted(unknown)}")
        self.values.update(values)

    def reset(self) -> None:
        self.regs[:] = bytes(256)
        self.regs[chip.REG_WHO_AM_I] = chip.WHO_AM_I
        self.regs[chip.REG_PWR_MGMT_1] = chip.PWR_SLEEP

    def writable(self, register: int) -> bool:
        return register not in _READ_ONLY

    def after_write(self, register: int, value: int) -> None:
        if register == chip.REG_PWR_MGMT_1 and value & chip.PWR_DEVICE_RESET:
            self.reset()  # DEVICE_RESET self-clears; the chip comes back asleep

    @property
    def asleep(self) -> bool:
        return bool(self.regs[chip.REG_PWR_MGMT_1] & chip.PWR_SLEEP)

    def before_read(self, register: int, length: int) -> None:
        first, last = chip.REG_ACCEL_XOUT_H, chip.REG_ACCEL_XOUT_H + chip.DATA_LEN - 1
        if register <= last and register + length - 1 >= first and not self.asleep and not self.stuck:
            self._sample()

    def _noise(self) -> float:
        return self._rng.gauss(0.0, self.noise_lsb) if self.noise_lsb > 0 else 0.0

    def _sample(self) -> None:
        if self.script is not None:
            self.values.update(self.script(time.monotonic() - self._t0))
        v = self.values
        self.samples += 1
        a_lsb = chip.accel_lsb_per_g(_ACCEL_FS[(self.regs[chip.REG_ACCEL_CONFIG] >> 3) & 3])
        g_lsb = chip.gyro_lsb_per_dps(_GYRO_FS[(self.regs[chip.REG_GYRO_CONFIG] >> 3) & 3])
        acc = [_clamp16(v[k] / chip.STANDARD_GRAVITY * a_lsb + self._noise()) for k in ("ax", "ay", "az")]
        gyr = [_clamp16(math.degrees(v[k]) * g_lsb + self._noise()) for k in ("gx", "gy", "gz")]
        temp = _clamp16((v["temperature"] - chip.TEMP_OFFSET_C) * chip.TEMP_SENSITIVITY)
        raw = struct.pack(">hhhhhhh", *acc, temp, *gyr)
        self.regs[chip.REG_ACCEL_XOUT_H:chip.REG_ACCEL_XOUT_H + chip.DATA_LEN] = raw
