"""Command groups of the hardware and sync layers: ``edge hw``, ``edge cloud``, ``edge fleet``."""

from __future__ import annotations

import argparse
from typing import Any

from edge.errors import DriverError, EdgeError


def register(sub: Any) -> None:
    """Add the extra command groups to the ``edge`` parser."""
    hw = sub.add_parser("hw", help="hardware helpers")
    hsub = hw.add_subparsers(dest="verb", required=True)
    scan = hsub.add_parser("scan", help="list the devices that answer on an I2C bus")
    scan.add_argument("--bus", type=int, default=1, help="I2C bus number (/dev/i2c-N)")
    scan.add_argument(
        "--emulated", action="store_true", help="scan an emulated bus holding the demo's chips (no hardware needed)"
    )
    from edge.cli import cloud

    cloud.register(sub)


async def dispatch(args: argparse.Namespace) -> int:
    if args.command == "hw" and args.verb == "scan":
        return await hw_scan(args.bus, emulated=args.emulated)
    from edge.cli import cloud

    if args.command in ("cloud", "fleet"):
        return await cloud.dispatch(args)
    raise EdgeError(f"unknown command {args.command!r}")


async def hw_scan(number: int, *, emulated: bool) -> int:
    from drivers.i2c.bus import shared_bus
    from drivers.scan import scan

    if emulated:
        from drivers.i2c.emulated import EmulatedBus
        from drivers.i2c.sim_bme280 import BME280Model
        from drivers.i2c.sim_ina219 import INA219Model
        from drivers.i2c.sim_mpu6050 import MPU6050Model

        bus: Any = EmulatedBus(number)
        bus.attach(0x76, BME280Model())
        bus.attach(0x68, MPU6050Model())
        bus.attach(0x40, INA219Model())
    else:
        import os

        if not os.path.exists(f"/dev/i2c-{number}"):
            raise DriverError(
                f"no I2C bus /dev/i2c-{number} (on a Pi: enable I2C with raspi-config, or try --emulated)",
                device=f"i2c-{number}",
                cause="missing",
            )
        bus = shared_bus(number, "real")
    try:
        found = await scan(bus)
    except OSError as err:
        raise DriverError(f"cannot scan I2C bus {number}: {err}", device=f"i2c-{number}", cause=str(err)) from None
    finally:
        close = getattr(bus, "close", None)
        if close is not None:
            result = close()
            if hasattr(result, "__await__"):
                await result
    where = f"{'emulated ' if emulated else ''}i2c-{number}"
    if not found:
        print(f"{where}: no device answered")
    for address, guess in found:
        print(f"{where} 0x{address:02x} {guess}")
    return 0
