"""Emulated INA219: 16-bit big-endian registers computed the way the chip does.

The model holds the physical bus voltage (V) and load current (A) and its own shunt resistor
(``shunt_ohms``). A conversion (continuous mode) happens before a read of the shunt register, or
of the bus register once CNVR was cleared by a power read; it
sets the shunt register to ``I * R / 10 µV`` saturated at the PGA range, the bus register to
``V / 4 mV << 3`` with CNVR, the current register to ``shunt * Cal / 4096`` and the power
register to ``current * bus / 5000`` (datasheet 8.5). With a zero calibration register, current
and power read 0. The register pointer does not auto-increment. A value over the bus range or an overflowing calculation sets OVF. Writing bit
15 of the config register resets every register (config reads 0x399F again).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from drivers.i2c import ina219 as chip
from drivers.i2c.emulated import ChipModel

Script = Callable[[float], dict[str, float]]
_PGA_LIMIT = {0: 4000, 1: 8000, 2: 16000, 3: 32000}  # PG bits -> shunt register full scale
_BUS_RANGE_V = {0: 16.0, 1: 32.0}


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


class INA219Model(ChipModel):
    name = "ina219"

    def __init__(self, *, shunt_ohms: float = chip.DEFAULT_SHUNT_OHMS, script: Script | None = None) -> None:
        self.shunt_ohms = shunt_ohms
        self.script = script
        self.values = {"voltage": 12.0, "current": 1.0}
        self._t0 = time.monotonic()
        self.conversions = 0
        super().__init__()

    def set(self, **values: float) -> None:
        unknown = set(values) - set(self.values)
        if unknown:
            raise KeyError(f"unknown quantity {sorted(unknown)}")
        self.values.update(values)

    def _get16(self, reg: int) -> int:
        return (self.regs[2 * reg] << 8) | self.regs[2 * reg + 1]

    def _set16(self, reg: int, value: int) -> None:
        value &= 0xFFFF
        self.regs[2 * reg], self.regs[2 * reg + 1] = value >> 8, value & 0xFF

    # The chip has 16-bit registers addressed by a pointer; the model stores register r at
    # bytes 2r, 2r+1 and maps the pointer accordingly in read()/write().
    def reset(self) -> None:
        self.regs[:] = bytes(256)
        self._set16(chip.REG_CONFIG, chip.CONFIG_DEFAULT)

    def read(self, register: int, length: int) -> bytes:
        """The pointer does not auto-increment: a longer read repeats the register's two bytes."""
        continuous = (self._get16(chip.REG_CONFIG) & 0x7) == 0x7
        fresh = register == chip.REG_SHUNT or (
            register == chip.REG_BUS and not self._get16(chip.REG_BUS) & chip.BUS_CNVR)
        if continuous and fresh and not self.stuck:
            self._convert()
        base = 2 * register if register <= 0x05 else None
        out = bytes(0xFF if base is None else self.regs[base + (i % 2)] for i in range(length))
        if register == chip.REG_POWER:
            self._set16(chip.REG_BUS, self._get16(chip.REG_BUS) & ~chip.BUS_CNVR)  # clears CNVR
        self.pointer = register
        return out

    def write(self, register: int, data: list[int] | tuple[int, ...] | bytes) -> None:  # type: ignore[override]
        if len(data) != 2 or register not in (chip.REG_CONFIG, chip.REG_CALIBRATION):
            self.pointer = register  # pointer-only write or a read-only register
            return
        value = (data[0] << 8) | data[1]
        if register == chip.REG_CONFIG:
            if value & chip.CONFIG_RESET:
                self.reset()
                return
            self._set16(chip.REG_CONFIG, value)
        else:
            self._set16(chip.REG_CALIBRATION, value & 0xFFFE)

    def _convert(self) -> None:
        if self.script is not None:
            self.values.update(self.script(time.monotonic() - self._t0))
        self.conversions += 1
        cfg = self._get16(chip.REG_CONFIG)
        limit = _PGA_LIMIT[(cfg >> 11) & 3]
        shunt = round(self.values["current"] * self.shunt_ohms / chip.SHUNT_LSB_V)
        ovf = abs(shunt) > limit
        shunt = max(-limit, min(limit, shunt))
        volts = max(0.0, self.values["voltage"])
        bus_range = _BUS_RANGE_V[(cfg >> 13) & 1]
        bus_bits = min(round(volts / chip.BUS_LSB_V), int(bus_range / chip.BUS_LSB_V), 0x1FFF)
        ovf = ovf or volts > bus_range
        cal = self._get16(chip.REG_CALIBRATION)
        current = _trunc_div(shunt * cal, 4096)
        if not -32768 <= current <= 32767:
            ovf, current = True, max(-32768, min(32767, current))
        power = min(abs(current) * bus_bits // 5000, 0xFFFF)
        self._set16(chip.REG_SHUNT, shunt)
        self._set16(chip.REG_BUS, (bus_bits << 3) | chip.BUS_CNVR | (chip.BUS_OVF if ovf else 0))
        self._set16(chip.REG_CURRENT, current)
        self._set16(chip.REG_POWER, power)
