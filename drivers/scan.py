"""``edge hw scan``: find chips on an I2C bus and guess what they are.

Each address 0x03..0x77 is probed with a receive-byte transaction; an address that ACKs is then
identified by its id register where the candidates have one (BME280/BMP280 chip id at 0xD0,
MPU-6050 WHO_AM_I at 0x75) or by a known power-on value (INA219 config 0x399F). Probing only
reads: no register is written.

Example
    for address, guess in await scan(shared_bus(1, "real")):
        print(f"0x{address:02x} {guess}")
"""

from __future__ import annotations

import logging

from drivers.i2c import bme280, ina219, mpu6050
from drivers.i2c.bus import I2C_MAX_ADDRESS, I2C_MIN_ADDRESS, Bus

log = logging.getLogger("edge.drivers.scan")

UNKNOWN = "unknown"
_BOSCH_IDS = {bme280.CHIP_ID_BME280: "bme280", bme280.CHIP_ID_BMP280: "bmp280",
              0x56: "bmp280 (sample)", 0x57: "bmp280 (sample)", 0x61: "bme680"}
_INVENSENSE_IDS = {0x68: "mpu6050", 0x70: "mpu6500", 0x71: "mpu9250", 0x73: "mpu9255"}


async def _identify(bus: Bus, address: int) -> str:
    try:
        if address in (0x76, 0x77):
            return _BOSCH_IDS.get(await bus.read_byte_data(address, bme280.REG_CHIP_ID), UNKNOWN)
        if address in (0x68, 0x69):
            who = await bus.read_byte_data(address, mpu6050.REG_WHO_AM_I)
            return _INVENSENSE_IDS.get(who, UNKNOWN)
        if 0x40 <= address <= 0x4F:
            cfg = await bus.read_block(address, ina219.REG_CONFIG, 2)
            return "ina219" if (cfg[0] << 8 | cfg[1]) == ina219.CONFIG_DEFAULT else "ina219?"
    except OSError as exc:
        log.debug("identifying 0x%02x failed: %s", address, exc)
    return UNKNOWN


async def scan(bus: Bus) -> list[tuple[int, str]]:
    """Addresses that acknowledge, each with a guess of the chip (``"unknown"`` if no guess)."""
    found = []
    for address in range(I2C_MIN_ADDRESS, I2C_MAX_ADDRESS + 1):
        try:
            await bus.read_byte(address)
        except OSError:
            continue
        found.append((address, await _identify(bus, address)))
    return found
