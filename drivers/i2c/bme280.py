"""Bosch BME280 (temperature, pressure, humidity) and BMP280 (no humidity) over I2C.

Key components
- :class:`Calibration` and the ``compensate_*`` functions: the datasheet's integer compensation
  (BME280 datasheet section 4.2.3 / 8.2: 32-bit temperature and humidity, 64-bit pressure).
- :class:`BME280Driver` / :class:`BMP280Driver`: checks the chip id (0x60 BME280, 0x58 BMP280), soft-resets, reads the
  calibration (0x88..0xA1, 0xE1..0xE7), configures oversampling and normal mode, then reads the
  burst 0xF7..0xFE at ``rate_hz`` into the ``environment`` component
  ``{temperature °C, pressure Pa, humidity %RH}``.

Example
    bus = EmulatedBus(1); bus.attach(0x76, BME280Model())
    drv = BME280Driver("baro", "drone1", bus=bus, address=0x76, rate_hz=5)
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from drivers.base import PollingDriver
from drivers.config import Table
from drivers.i2c.bus import Bus, shared_bus

REG_CALIB_A = 0x88  # 26 bytes: dig_T1..dig_P9, reserved, dig_H1 (0xA1)
CALIB_A_LEN = 26
REG_CALIB_B = 0xE1  # 7 bytes: dig_H2..dig_H6
CALIB_B_LEN = 7
REG_CHIP_ID = 0xD0
REG_RESET = 0xE0
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_DATA = 0xF7  # press_msb .. hum_lsb
RESET_WORD = 0xB6
CHIP_ID_BME280 = 0x60
CHIP_ID_BMP280 = 0x58
STATUS_IM_UPDATE = 0x01
STATUS_MEASURING = 0x08
MODE_SLEEP = 0b00
MODE_FORCED = 0b01
MODE_NORMAL = 0b11
SKIPPED_20BIT = 0x80000  # data register value when a measurement was skipped / not yet made
SKIPPED_16BIT = 0x8000
OVERSAMPLING = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}  # factor -> osrs_x bits
STARTUP_S = 0.002  # seconds after soft reset (datasheet: 2 ms)
RESET_POLL_TRIES = 10

DEFAULT_ADDRESS = 0x76  # SDO to GND; 0x77 with SDO to VDDIO
DEFAULT_RATE_HZ = 5.0
DEFAULT_OVERSAMPLING = 16


def _trunc_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


@dataclass(frozen=True, slots=True)
class Calibration:
    T1: int
    T2: int
    T3: int
    P1: int
    P2: int
    P3: int
    P4: int
    P5: int
    P6: int
    P7: int
    P8: int
    P9: int
    H1: int = 0
    H2: int = 0
    H3: int = 0
    H4: int = 0
    H5: int = 0
    H6: int = 0

    @classmethod
    def from_registers(cls, a: bytes, b: bytes | None) -> Calibration:
        """Decode 0x88..0xA1 (``a``, 26 bytes) and 0xE1..0xE7 (``b``, 7 bytes, BME280 only)."""
        t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9 = struct.unpack("<HhhHhhhhhhhh", a[:24])
        if b is None:
            return cls(t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9)
        h1 = a[25]
        h2 = struct.unpack("<h", b[0:2])[0]
        h3 = b[2]
        h4 = (b[3] << 4) | (b[4] & 0x0F)
        h5 = (b[5] << 4) | (b[4] >> 4)
        h4 = h4 - 0x1000 if h4 & 0x800 else h4  # signed 12-bit
        h5 = h5 - 0x1000 if h5 & 0x800 else h5
        h6 = struct.unpack("<b", b[6:7])[0]
        return cls(t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, h1, h2, h3, h4, h5, h6)

    def to_registers(self) -> tuple[bytes, bytes]:
        """Encode back into the two register blocks (used by the emulated chip)."""
        a = struct.pack("<HhhHhhhhhhhh", self.T1, self.T2, self.T3, self.P1, self.P2, self.P3,
                        self.P4, self.P5, self.P6, self.P7, self.P8, self.P9)
        a += bytes([0, self.H1 & 0xFF])
        h4, h5 = self.H4 & 0xFFF, self.H5 & 0xFFF
        b = struct.pack("<h", self.H2) + bytes(
            [self.H3 & 0xFF, h4 >> 4, (h4 & 0x0F) | ((h5 & 0x0F) << 4), h5 >> 4]
        ) + struct.pack("<b", self.H6)
        return a, b


def compensate_temperature(adc_t: int, c: Calibration) -> tuple[int, int]:
    """Returns ``(t_fine, temperature in 0.01 °C)``."""
    var1 = (((adc_t >> 3) - (c.T1 << 1)) * c.T2) >> 11
    d = (adc_t >> 4) - c.T1
    var2 = (((d * d) >> 12) * c.T3) >> 14
    t_fine = var1 + var2
    return t_fine, (t_fine * 5 + 128) >> 8


def compensate_pressure(adc_p: int, t_fine: int, c: Calibration) -> int:
    """Pressure in Pa as unsigned Q24.8 (divide by 256); 0 if the calibration is degenerate."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * c.P6
    var2 = var2 + ((var1 * c.P5) << 17)
    var2 = var2 + (c.P4 << 35)
    var1 = ((var1 * var1 * c.P3) >> 8) + ((var1 * c.P2) << 12)
    var1 = (((1 << 47) + var1) * c.P1) >> 33
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    p = _trunc_div(((p << 31) - var2) * 3125, var1)
    var1 = (c.P9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (c.P8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (c.P7 << 4)


def compensate_humidity(adc_h: int, t_fine: int, c: Calibration) -> int:
    """Relative humidity in %RH as unsigned Q22.10 (divide by 1024), clamped to 0..100 %."""
    v = t_fine - 76800
    v = (
        ((((adc_h << 14) - (c.H4 << 20) - (c.H5 * v)) + 16384) >> 15)
        * (((((((v * c.H6) >> 10) * (((v * c.H3) >> 11) + 32768)) >> 10) + 2097152) * c.H2 + 8192)
           >> 14)
    )
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * c.H1) >> 4)
    v = min(max(v, 0), 419430400)
    return v >> 12


class BME280Driver(PollingDriver):
    """A BME280 (or BMP280 with ``humidity=False``) feeding the ``environment`` component."""

    kind: ClassVar[str] = "bme280"

    def __init__(
        self,
        name: str,
        entity: str,
        *,
        bus: Bus,
        address: int = DEFAULT_ADDRESS,
        rate_hz: float = DEFAULT_RATE_HZ,
        oversampling: int = DEFAULT_OVERSAMPLING,
        humidity: bool = True,
        stuck_after: int = 0,
        max_consecutive_errors: int | None = None,
        publish_telemetry: bool = True,
    ) -> None:
        super().__init__(name, entity, rate_hz=rate_hz, stuck_after=stuck_after,
                         max_consecutive_errors=max_consecutive_errors,
                         publish_telemetry=publish_telemetry)
        if oversampling not in OVERSAMPLING or oversampling == 0:
            raise ValueError(f"oversampling must be one of 1, 2, 4, 8, 16; got {oversampling}")
        self.bus = bus
        self.address = address
        self.oversampling = oversampling
        self.humidity = humidity
        self.expected_id = CHIP_ID_BME280 if humidity else CHIP_ID_BMP280
        self.calibration: Calibration | None = None

    @property
    def where(self) -> str:
        return f"{self.bus.name}:0x{self.address:02x}"

    def measurement_time_s(self) -> float:
        """Typical time of one measurement (datasheet 9.1) for the configured oversampling."""
        o = self.oversampling
        ms = 1.0 + 2.0 * o + (2.0 * o + 0.5) + ((2.0 * o + 0.5) if self.humidity else 0.0)
        return ms / 1000.0

    async def _open(self) -> None:
        chip_id = await self.bus.read_byte_data(self.address, REG_CHIP_ID)
        if chip_id != self.expected_id:
            raise ValueError(
                f"chip id 0x{chip_id:02x} at 0x{self.address:02x} is not a {self.kind} "
                f"(expected 0x{self.expected_id:02x})"
            )
        await self.bus.write_byte_data(self.address, REG_RESET, RESET_WORD)
        for _ in range(RESET_POLL_TRIES):
            await asyncio.sleep(STARTUP_S)
            if not await self.bus.read_byte_data(self.address, REG_STATUS) & STATUS_IM_UPDATE:
                break
        a = await self.bus.read_block(self.address, REG_CALIB_A, CALIB_A_LEN)
        b = await self.bus.read_block(self.address, REG_CALIB_B, CALIB_B_LEN) if self.humidity else None
        self.calibration = Calibration.from_registers(a, b)
        osrs = OVERSAMPLING[self.oversampling]
        if self.humidity:  # ctrl_hum takes effect only after a write to ctrl_meas
            await self.bus.write_byte_data(self.address, REG_CTRL_HUM, osrs)
        await self.bus.write_byte_data(self.address, REG_CONFIG, 0)  # t_sb 0.5 ms, no IIR filter
        await self.bus.write_byte_data(self.address, REG_CTRL_MEAS, (osrs << 5) | (osrs << 2) | MODE_NORMAL)
        await asyncio.sleep(self.measurement_time_s())

    async def read(self) -> dict[str, float]:
        """One reading: ``{temperature °C, pressure Pa[, humidity %RH]}``."""
        n = 8 if self.humidity else 6
        raw = await self.bus.read_block(self.address, REG_DATA, n)
        self._check_stuck(raw)
        adc_p = (raw[0] << 12) | (raw[1] << 4) | (raw[2] >> 4)
        adc_t = (raw[3] << 12) | (raw[4] << 4) | (raw[5] >> 4)
        if adc_t == SKIPPED_20BIT or adc_p == SKIPPED_20BIT:
            raise ValueError("no measurement available yet (data registers hold the reset value)")
        cal = self.calibration
        if cal is None:
            raise RuntimeError("read() before the chip was opened")
        t_fine, t_centi = compensate_temperature(adc_t, cal)
        out = {"temperature": t_centi / 100.0, "pressure": compensate_pressure(adc_p, t_fine, cal) / 256.0}
        if self.humidity:
            adc_h = (raw[6] << 8) | raw[7]
            if adc_h == SKIPPED_16BIT:
                raise ValueError("no humidity measurement available yet")
            out["humidity"] = compensate_humidity(adc_h, t_fine, cal) / 1024.0
        return out

    async def _poll(self) -> None:
        await self._emit("environment", await self.read())


class BMP280Driver(BME280Driver):
    """A BMP280: the BME280 without humidity (chip id 0x58)."""

    kind: ClassVar[str] = "bmp280"

    def __init__(self, name: str, entity: str, *, bus: Bus, **kw: Any) -> None:
        kw["humidity"] = False
        super().__init__(name, entity, bus=bus, **kw)


def from_config(t: Table) -> BME280Driver:
    bmp = t.data.get("kind") == "bmp280"
    bus = shared_bus(t.integer("bus", 1, lo=0), t.backend)
    address = t.integer("address", DEFAULT_ADDRESS, lo=0x03, hi=0x77)
    if t.emulated:
        from drivers.i2c.emulated import ensure_model
        from drivers.i2c.sim_bme280 import BME280Model

        ensure_model(bus, address, lambda: BME280Model(humidity=not bmp))
    cls = BMP280Driver if bmp else BME280Driver
    return cls(
        t.name,
        t.entity,
        bus=bus,
        address=address,
        rate_hz=t.number("rate_hz", DEFAULT_RATE_HZ, lo=0.01, hi=200.0),
        oversampling=t.integer("oversampling", DEFAULT_OVERSAMPLING),
        stuck_after=t.integer("stuck_after", 0, lo=0),
        max_consecutive_errors=t.integer("max_consecutive_errors", None, lo=0),
        publish_telemetry=t.publish,
    )
