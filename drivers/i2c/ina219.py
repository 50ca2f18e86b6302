"""TI INA219 current/power monitor over I2C, feeding the ``battery`` component.

Key components
- :class:`INA219Driver`: resets the chip (config bit 15) and checks the power-on config value
  0x399F, programs the calibration register from the shunt resistance and the maximum expected
  current (datasheet 8.5.1: ``Cal = trunc(0.04096 / (Current_LSB * R_shunt))``), then reads the bus
  voltage (register 0x02: bits 15..3, 4 mV LSB, bit 1 CNVR, bit 0 OVF) and the current register
  (0x04, signed, ``Current_LSB`` per bit) at ``rate_hz``.
- :class:`VoltageCurve`: state of charge from pack voltage (piecewise linear per cell).
- ``battery`` = ``{voltage V, current A, level 0..1, drain 1/s}``: ``drain`` is the fraction of a
  full pack used per second: ``current / capacity`` when ``capacity_mah`` is set, otherwise the
  smoothed slope of ``level``.

All registers are 16-bit big-endian; they are read and written as 2-byte blocks.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from drivers.base import PollingDriver
from drivers.config import Table
from drivers.i2c.bus import Bus, shared_bus

REG_CONFIG = 0x00
REG_SHUNT = 0x01
REG_BUS = 0x02
REG_POWER = 0x03
REG_CURRENT = 0x04
REG_CALIBRATION = 0x05
CONFIG_RESET = 0x8000
CONFIG_DEFAULT = 0x399F  # 32 V range, PGA /8 (±320 mV), 12-bit ADCs, continuous shunt+bus
BUS_OVF = 0x0001
BUS_CNVR = 0x0002
BUS_LSB_V = 0.004  # volts per bit of (bus register >> 3)
SHUNT_LSB_V = 10e-6  # volts per bit of the shunt register
CAL_NUMERATOR = 0.04096  # datasheet equation 1
POWER_LSB_RATIO = 20  # Power_LSB = 20 * Current_LSB

DEFAULT_ADDRESS = 0x40
DEFAULT_RATE_HZ = 10.0
DEFAULT_SHUNT_OHMS = 0.1
DEFAULT_MAX_CURRENT_A = 3.2
DEFAULT_CELLS = 3
DRAIN_SMOOTHING = 0.1  # EWMA weight of a new level-slope sample

# Resting LiPo voltage per cell -> state of charge.
LIPO_CURVE: tuple[tuple[float, float], ...] = (
    (3.27, 0.0), (3.61, 0.05), (3.69, 0.1), (3.71, 0.15), (3.73, 0.2), (3.75, 0.3), (3.77, 0.4),
    (3.79, 0.5), (3.82, 0.6), (3.87, 0.7), (3.93, 0.8), (4.00, 0.9), (4.20, 1.0),
)


@dataclass(frozen=True)
class VoltageCurve:
    """Piecewise-linear ``(volts per cell, level)`` points, volts increasing; clamped at the ends."""

    points: tuple[tuple[float, float], ...] = LIPO_CURVE
    cells: int = DEFAULT_CELLS

    def __post_init__(self) -> None:
        if len(self.points) < 2 or any(b[0] <= a[0] for a, b in zip(self.points, self.points[1:])):
            raise ValueError("a voltage curve needs at least two points with increasing voltage")
        if self.cells < 1:
            raise ValueError("cells must be >= 1")

    def level(self, pack_volts: float) -> float:
        v = pack_volts / self.cells
        xs = [p[0] for p in self.points]
        if v <= xs[0]:
            return self.points[0][1]
        if v >= xs[-1]:
            return self.points[-1][1]
        i = bisect.bisect_right(xs, v)
        (x0, y0), (x1, y1) = self.points[i - 1], self.points[i]
        return y0 + (y1 - y0) * (v - x0) / (x1 - x0)


def calibration_for(shunt_ohms: float, max_current_a: float) -> tuple[int, float]:
    """``(calibration register, Current_LSB in A)`` per the datasheet."""
    current_lsb = max_current_a / 32768.0
    cal = int(CAL_NUMERATOR / (current_lsb * shunt_ohms)) & 0xFFFE
    if cal == 0:
        raise ValueError("shunt_ohms * max_current_a too large for the calibration register")
    return cal, CAL_NUMERATOR / (cal * shunt_ohms)


def _s16(b: bytes) -> int:
    v = (b[0] << 8) | b[1]
    return v - 0x10000 if v & 0x8000 else v


class INA219Driver(PollingDriver):
    kind: ClassVar[str] = "ina219"

    def __init__(
        self,
        name: str,
        entity: str,
        *,
        bus: Bus,
        address: int = DEFAULT_ADDRESS,
        rate_hz: float = DEFAULT_RATE_HZ,
        shunt_ohms: float = DEFAULT_SHUNT_OHMS,
        max_current_a: float = DEFAULT_MAX_CURRENT_A,
        curve: VoltageCurve | None = None,
        capacity_mah: float | None = None,
        stuck_after: int = 0,
        max_consecutive_errors: int | None = None,
        publish_telemetry: bool = True,
    ) -> None:
        super().__init__(name, entity, rate_hz=rate_hz, stuck_after=stuck_after,
                         max_consecutive_errors=max_consecutive_errors,
                         publish_telemetry=publish_telemetry)
        self.bus = bus
        self.address = address
        self.shunt_ohms = shunt_ohms
        self.calibration, self.current_lsb = calibration_for(shunt_ohms, max_current_a)
        self.curve = curve or VoltageCurve()
        self.capacity_mah = capacity_mah
        self._drain = 0.0
        self._last_level: tuple[float, float] | None = None

    @property
    def where(self) -> str:
        return f"{self.bus.name}:0x{self.address:02x}"

    async def _write16(self, reg: int, value: int) -> None:
        await self.bus.write_block(self.address, reg, [(value >> 8) & 0xFF, value & 0xFF])

    async def _open(self) -> None:
        await self._write16(REG_CONFIG, CONFIG_RESET)
        cfg = await self.bus.read_block(self.address, REG_CONFIG, 2)
        if (cfg[0] << 8 | cfg[1]) != CONFIG_DEFAULT:
            raise ValueError(
                f"config 0x{cfg[0] << 8 | cfg[1]:04x} after reset at 0x{self.address:02x} "
                f"is not an INA219's 0x{CONFIG_DEFAULT:04x}"
            )
        await self._write16(REG_CALIBRATION, self.calibration)
        await self._write16(REG_CONFIG, CONFIG_DEFAULT)

    async def read(self) -> dict[str, float]:
        """``{voltage V, current A, power W, shunt_voltage V}`` from one conversion."""
        # The pointer does not auto-increment: one 2-byte read per register.
        raw = b"".join([await self.bus.read_block(self.address, reg, 2)
                        for reg in (REG_SHUNT, REG_BUS, REG_CURRENT, REG_POWER)])
        self._check_stuck(raw)
        bus_reg = (raw[2] << 8) | raw[3]
        if bus_reg & BUS_OVF:
            raise ValueError("INA219 math overflow (OVF): current or power out of range; "
                             "raise max_current_a")
        return {
            "voltage": (bus_reg >> 3) * BUS_LSB_V,
            "current": _s16(raw[4:6]) * self.current_lsb,
            "power": ((raw[6] << 8) | raw[7]) * self.current_lsb * POWER_LSB_RATIO,
            "shunt_voltage": _s16(raw[0:2]) * SHUNT_LSB_V,
        }

    def _drain_rate(self, current: float, level: float) -> float:
        if self.capacity_mah:
            return current / (self.capacity_mah / 1000.0 * 3600.0)
        now = time.monotonic()
        if self._last_level is not None and now > self._last_level[0]:
            slope = -(level - self._last_level[1]) / (now - self._last_level[0])
            self._drain += DRAIN_SMOOTHING * (slope - self._drain)
        self._last_level = (now, level)
        return self._drain

    async def _poll(self) -> None:
        r = await self.read()
        level = self.curve.level(r["voltage"])
        await self._emit("battery", {
            "voltage": round(r["voltage"], 3),
            "current": round(r["current"], 4),
            "level": round(level, 4),
            "drain": self._drain_rate(r["current"], level),
        })


def _curve(t: Table) -> VoltageCurve:
    cells = t.integer("cells", DEFAULT_CELLS, lo=1, hi=14)
    pts: Sequence[object] | None = t.items("curve", None)
    if pts is None:
        return VoltageCurve(cells=cells)
    try:
        points = tuple((float(p[0]), float(p[1])) for p in pts)  # type: ignore[index]
        return VoltageCurve(points, cells)
    except (TypeError, ValueError, IndexError) as exc:
        raise t.error("curve", f"expected a list of [volts_per_cell, level] pairs ({exc})") from exc


def from_config(t: Table) -> INA219Driver:
    bus = shared_bus(t.integer("bus", 1, lo=0), t.backend)
    address = t.integer("address", DEFAULT_ADDRESS, lo=0x03, hi=0x77)
    shunt = t.number("shunt_ohms", DEFAULT_SHUNT_OHMS, lo=1e-5)
    if t.emulated:
        from drivers.i2c.emulated import ensure_model
        from drivers.i2c.sim_ina219 import INA219Model

        ensure_model(bus, address, lambda: INA219Model(shunt_ohms=shunt))
    return INA219Driver(
        t.name, t.entity, bus=bus, address=address,
        rate_hz=t.number("rate_hz", DEFAULT_RATE_HZ, lo=0.01, hi=1000.0),
        shunt_ohms=shunt,
        max_current_a=t.number("max_current_a", DEFAULT_MAX_CURRENT_A, lo=0.001),
        curve=_curve(t),
        capacity_mah=t.number("capacity_mah", None, lo=1.0),
        stuck_after=t.integer("stuck_after", 0, lo=0),
        max_consecutive_errors=t.integer("max_consecutive_errors", None, lo=0),
        publish_telemetry=t.publish,
    )
