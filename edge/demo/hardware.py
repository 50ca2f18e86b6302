"""The emulated drone used by the runtime's embedded demo (and by the driver benchmarks).

Key components
- :func:`demo_hardware`: the drivers of a small quadcopter, all on emulated backends:
  ``emulators`` (runs the flight controller and GPS emulators), ``fc`` (MAVLink on a pty),
  ``gps`` (NMEA on a pty), ``imu`` (MPU-6050 on an emulated I2C bus), ``power`` (INA219) and
  ``camera`` (synthetic 640x480). Start them with a :class:`~drivers.supervisor.DriverSupervisor`
  (or one by one, ``emulators`` first); stop them in reverse order.
- :class:`EmulatorsDriver`: a driver whose "hardware" is the emulators. Starting it creates the
  ptys behind stable symlinks (``<rundir>/fc``, ``<rundir>/gps``) and starts streaming; stopping
  it closes them (the serial drivers then fail and are restarted by the supervisor once the
  emulators are back). The IMU and the power monitor are scripted from the emulated flight
  controller's state, and the GPS reports its position, so all sensors tell one story.

Example
    drivers = demo_hardware("dev1", "drone1")
    sup = DriverSupervisor(ctx, drivers)
    await sup.start()
    frames = next(d for d in drivers if d.name == "camera").frames   # for inference
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from typing import ClassVar

from drivers.base import Driver
from drivers.camera.driver import CameraDriver
from drivers.camera.sources import SyntheticSource
from drivers.i2c.emulated import EmulatedBus
from drivers.i2c.ina219 import INA219Driver
from drivers.i2c.mpu6050 import STANDARD_GRAVITY, MPU6050Driver
from drivers.i2c.sim_ina219 import INA219Model
from drivers.i2c.sim_mpu6050 import MPU6050Model
from drivers.serial.mavlink import MAVLinkDriver
from drivers.serial.nmea import NMEAGPSDriver
from drivers.serial.sim_fc import SimFlightController
from drivers.serial.sim_gps import SimGPS

DEMO_FC_RATE_HZ = 10.0
DEMO_GPS_RATE_HZ = 5.0
DEMO_IMU_RATE_HZ = 50.0
DEMO_POWER_RATE_HZ = 5.0
DEMO_CAMERA_FPS = 15.0
DEMO_SHUNT_OHMS = 0.01  # a 0.01 ohm shunt reads up to 32 A on the ±320 mV range
DEMO_MAX_CURRENT_A = 30.0
DEMO_CAPACITY_MAH = 5000.0


class EmulatorsDriver(Driver):
    """Runs the emulated flight controller and GPS behind stable pty symlinks in ``rundir``."""

    kind: ClassVar[str] = "emulator"

    def __init__(self, name: str, entity: str, *, rundir: str) -> None:
        super().__init__(name, entity, publish_telemetry=False)
        self.rundir = rundir
        self.fc_port = os.path.join(rundir, "fc")
        self.gps_port = os.path.join(rundir, "gps")
        self.fc = SimFlightController(rate_hz=DEMO_FC_RATE_HZ)
        self.gps = SimGPS(rate_hz=DEMO_GPS_RATE_HZ, source=self.fc.geo)

    @property
    def where(self) -> str:
        return self.rundir

    async def _open(self) -> None:
        os.makedirs(self.rundir, exist_ok=True)
        await self.fc.start(self.fc_port)
        await self.gps.start(self.gps_port)

    async def _run(self) -> None:
        import asyncio

        while True:  # health: one sample per emulator tick
            await asyncio.sleep(1.0 / DEMO_FC_RATE_HZ)
            self._sample()

    async def _close(self) -> None:
        await self.gps.stop()
        await self.fc.stop()
        for link in (self.fc_port, self.gps_port):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)

    def remove_rundir(self) -> None:
        """Delete ``rundir`` (after the drivers are stopped)."""
        shutil.rmtree(self.rundir, ignore_errors=True)


def demo_hardware(device: str, entity: str, *, rundir: str | None = None) -> list[Driver]:
    """The emulated drone's drivers; the first one (``emulators``) runs the emulators."""
    rundir = rundir or tempfile.mkdtemp(prefix=f"edge-demo-{device}-")
    emu = EmulatorsDriver("emulators", entity, rundir=rundir)
    fc = emu.fc

    def imu_script(t: float) -> dict[str, float]:
        s = fc.state
        return {
            "ax": -STANDARD_GRAVITY * math.sin(s.pitch),
            "ay": STANDARD_GRAVITY * math.sin(s.roll),
            "az": STANDARD_GRAVITY * math.cos(s.pitch) * math.cos(s.roll),
            "gx": 0.0, "gy": 0.0, "gz": 0.0, "temperature": 30.0 + 0.01 * t,
        }

    def power_script(t: float) -> dict[str, float]:
        volts, amps, _ = fc.battery()
        return {"voltage": volts, "current": amps}

    bus = EmulatedBus(1)
    bus.attach(0x68, MPU6050Model(script=imu_script))
    bus.attach(0x40, INA219Model(shunt_ohms=DEMO_SHUNT_OHMS, script=power_script))
    return [
        emu,
        MAVLinkDriver("fc", entity, port=emu.fc_port, telemetry_hz=DEMO_FC_RATE_HZ),
        NMEAGPSDriver("gps", entity, port=emu.gps_port),
        MPU6050Driver("imu", entity, bus=bus, address=0x68, rate_hz=DEMO_IMU_RATE_HZ, stuck_after=50),
        INA219Driver("power", entity, bus=bus, address=0x40, rate_hz=DEMO_POWER_RATE_HZ,
                     shunt_ohms=DEMO_SHUNT_OHMS, max_current_a=DEMO_MAX_CURRENT_A,
                     capacity_mah=DEMO_CAPACITY_MAH),
        CameraDriver("camera", entity, source=SyntheticSource(640, 480, DEMO_CAMERA_FPS, face=True)),
    ]
