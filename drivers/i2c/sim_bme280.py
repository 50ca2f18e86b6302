"""Emulated BME280 / BMP280: answers register reads and writes like the chip.

The model holds physical values (``set(temperature=…, pressure=…, humidity=…)`` or a ``script``
function of time) and, at each conversion, encodes them into the raw ADC values that the
datasheet's compensation formulas turn back into those values: it searches the ADC code whose
compensated output is nearest (the formulas are monotonic), at the resolution the configured
oversampling gives (16 bits at x1 up to 20 bits at x16). So a driver reading it goes through the
same integer arithmetic as on the real chip.

Behaviour: chip id at 0xD0; soft reset by writing 0xB6 to 0xE0; calibration at 0x88..0xA1 and
0xE1..0xE7 (read-only); ``ctrl_hum`` is latched only by a write to ``ctrl_meas``; sleep mode keeps
the data registers at their reset value 0x80000 / 0x8000; forced mode converts once and returns to
sleep; normal mode converts continuously (here: before each read of the data registers). A skipped
measurement (oversampling 0) reads 0x80000 / 0x8000.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from drivers.i2c import bme280 as chip
from drivers.i2c.emulated import ChipModel

Script = Callable[[float], dict[str, float]]

# A plausible factory calibration (the datasheet's worked example for T and P).
DEFAULT_CALIBRATION = chip.Calibration(
    T1=27504, T2=26435, T3=-1000,
    P1=36477, P2=-10685, P3=3024, P4=2855, P5=140, P6=-7, P7=15500, P8=-14600, P9=6000,
    H1=75, H2=362, H3=0, H4=313, H5=50, H6=30,
)
DEFAULT_TEMPERATURE_C = 21.0
DEFAULT_PRESSURE_PA = 101325.0
DEFAULT_HUMIDITY_RH = 45.0

_DATA_FIRST, _DATA_LAST = chip.REG_DATA, chip.REG_DATA + 7
_WRITABLE = {chip.REG_RESET, chip.REG_CTRL_HUM, chip.REG_CTRL_MEAS, chip.REG_CONFIG}
_OSRS_BITS = {1: 16, 2: 17, 3: 18, 4: 19, 5: 20}  # osrs field -> ADC resolution in bits


def nearest_code(f: Callable[[int], float], target: float, bits: int, step_bits: int,
                 increasing: bool) -> int:
    """The code in ``[0, 2**bits)``, a multiple of ``2**step_bits``, whose ``f`` is nearest ``target``."""
    lo, hi = 0, (1 << (bits - step_bits)) - 1
    while lo < hi:  # first q with f(q) >= target (increasing) or <= target (decreasing)
        mid = (lo + hi) // 2
        v = f(mid << step_bits)
        if (v >= target) if increasing else (v <= target):
            hi = mid
        else:
            lo = mid + 1
    best = min((q for q in (lo - 1, lo) if q >= 0), key=lambda q: abs(f(q << step_bits) - target))
    return best << step_bits


class BME280Model(ChipModel):
    """Emulated BME280 (``humidity=True``, id 0x60) or BMP280 (``humidity=False``, id 0x58)."""

    name = "bme280"

    def __init__(self, *, humidity: bool = True, calibration: chip.Calibration = DEFAULT_CALIBRATION,
                 script: Script | None = None) -> None:
        self.has_humidity = humidity
        self.calibration = calibration
        self.script = script
        self.values = {
            "temperature": DEFAULT_TEMPERATURE_C,
            "pressure": DEFAULT_PRESSURE_PA,
            "humidity": DEFAULT_HUMIDITY_RH,
        }
        self.conversions = 0
        self._t0 = time.monotonic()
        self._osrs_h = 0
        self._memo_key: tuple[float, float, float, int, int] | None = None
        self._memo_raw = (chip.SKIPPED_20BIT, chip.SKIPPED_20BIT, chip.SKIPPED_16BIT)
        super().__init__()
        if not humidity:
            self.name = "bmp280"

    def set(self, **values: float) -> None:
        """Set physical values: ``temperature`` °C, ``pressure`` Pa, ``humidity`` %RH."""
        unknown = set(values) - set(self.values)
        if unknown:
            raise KeyError(f"unknown quantity {sorted(unknown)}")
        self.values.update(values)

    def reset(self) -> None:
        self.regs[:] = bytes(256)
        self.regs[chip.REG_CHIP_ID] = chip.CHIP_ID_BME280 if self.has_humidity else chip.CHIP_ID_BMP280
        a, b = self.calibration.to_registers()
        self.regs[chip.REG_CALIB_A:chip.REG_CALIB_A + len(a)] = a
        if self.has_humidity:
            self.regs[chip.REG_CALIB_B:chip.REG_CALIB_B + len(b)] = b
        self._write_raw(chip.SKIPPED_20BIT, chip.SKIPPED_20BIT, chip.SKIPPED_16BIT)
        self._osrs_h = 0

    def writable(self, register: int) -> bool:
        if register == chip.REG_CTRL_HUM and not self.has_humidity:
            return False
        return register in _WRITABLE

    def after_write(self, register: int, value: int) -> None:
        if register == chip.REG_RESET:
            if value == chip.RESET_WORD:
                self.reset()
            self.regs[chip.REG_RESET] = 0
        elif register == chip.REG_CTRL_MEAS:
            self._osrs_h = self.regs[chip.REG_CTRL_HUM] & 0x07
            mode = value & 0x03
            if mode == chip.MODE_FORCED or mode == 0b10:
                self._convert()
                self.regs[chip.REG_CTRL_MEAS] = value & ~0x03  # back to sleep
            elif mode == chip.MODE_NORMAL:
                self._convert()

    def before_read(self, register: int, length: int) -> None:
        last = register + length - 1
        touches_data = register <= _DATA_LAST and last >= _DATA_FIRST
        if touches_data and (self.regs[chip.REG_CTRL_MEAS] & 0x03) == chip.MODE_NORMAL:
            self._convert()

    # ----- encoding ------------------------------------------------------------------------------
    def _current(self) -> dict[str, float]:
        if self.script is not None:
            self.values.update(self.script(time.monotonic() - self._t0))
        return self.values

    def _convert(self) -> None:
        if self.stuck:
            return
        self.conversions += 1
        v = self._current()
        ctrl = self.regs[chip.REG_CTRL_MEAS]
        key = (v["temperature"], v["pressure"], v["humidity"], ctrl, self._osrs_h)
        if key == self._memo_key:  # same inputs: same codes (the search costs ~0.2 ms)
            self._write_raw(*self._memo_raw)
            return
        osrs_t, osrs_p = (ctrl >> 5) & 0x07, (ctrl >> 2) & 0x07
        cal = self.calibration
        adc_t, adc_p, adc_h = chip.SKIPPED_20BIT, chip.SKIPPED_20BIT, chip.SKIPPED_16BIT
        if osrs_t:
            bits = _OSRS_BITS[min(osrs_t, 5)]
            adc_t = nearest_code(lambda c: chip.compensate_temperature(c, cal)[1] / 100.0,
                                 v["temperature"], 20, 20 - bits, True)
        t_fine = chip.compensate_temperature(
            adc_t if osrs_t else self.encode_temperature(v["temperature"]), cal)[0]
        if osrs_p:
            bits = _OSRS_BITS[min(osrs_p, 5)]
            adc_p = nearest_code(lambda c: chip.compensate_pressure(c, t_fine, cal) / 256.0,
                                 v["pressure"], 20, 20 - bits, False)
        if self.has_humidity and self._osrs_h:
            adc_h = nearest_code(lambda c: chip.compensate_humidity(c, t_fine, cal) / 1024.0,
                                 v["humidity"], 16, 0, True)
        self._memo_key, self._memo_raw = key, (adc_p, adc_t, adc_h)
        self._write_raw(adc_p, adc_t, adc_h)

    def encode_temperature(self, celsius: float) -> int:
        return nearest_code(lambda c: chip.compensate_temperature(c, self.calibration)[1] / 100.0,
                            celsius, 20, 0, True)

    def _write_raw(self, adc_p: int, adc_t: int, adc_h: int) -> None:
        r = self.regs
        base = chip.REG_DATA
        r[base + 0], r[base + 1], r[base + 2] = adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4
        r[base + 3], r[base + 4], r[base + 5] = adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4
        if self.has_humidity:
            r[base + 6], r[base + 7] = adc_h >> 8, adc_h & 0xFF
