"""The emulated drone used by the runtime's embedded demo (and by the driver benchmarks).

Key components
- :func:`demo_hardware`: the drivers of a small quadcopter, all on emulated backends:
  ``emulators`` (runs the flight controller and GPS emulators), ``fc`` (MAVLink on a pty),
  ``gps`` (NMEA on a pty), ``imu`` (MPU-6050 on an emulated I2C bus), ``power`` (INA219) and
  ``camera`` (synthetic 320x240). Start them with a :class:`~drivers.supervisor.DriverSupervisor`
  (or one by one, ``emulators`` first); stop them in reverse order.
- :class:`EmulatorsDriver`: a driver whose "hardware" is the emulators. Starting it creates the
  ptys behind stable symlinks (``<rundir>/fc``, ``<rundir>/gps``) and starts streaming; stopping
  it closes them (the serial drivers then fail and are restarted by the supervisor once the
  emulators are back). The flight controller has a second port (``<rundir>/fc-companion``) for a
  companion computer (the demo pilot, :mod:`edge.demo.pilot`). The IMU and the power monitor are
  scripted from the emulated flight controller's state, the GPS reports its position, and the
  camera looks down from it onto a face standing at ``DEMO_FOLLOW_TARGET``: all sensors tell one
  story.

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
import importlib.util
import logging
from typing import TYPE_CHECKING, ClassVar

from drivers.base import Driver
from drivers.camera.driver import CameraDriver
from drivers.camera.sources import SyntheticSource
from drivers.i2c.emulated import EmulatedBus
from drivers.i2c.ina219 import INA219Driver
from drivers.i2c.mpu6050 import STANDARD_GRAVITY, MPU6050Driver
from drivers.i2c.sim_ina219 import INA219Model
from drivers.i2c.sim_mpu6050 import MPU6050Model

if TYPE_CHECKING:
    from drivers.serial.sim_fc import SimFlightController

log = logging.getLogger("edge.demo")

#: What the emulated flight controller and GPS need: the ``hw`` extra.
SERIAL_LIBRARIES = ("pymavlink", "serial", "pynmea2")
DEMO_FC_RATE_HZ = 10.0
DEMO_GPS_RATE_HZ = 5.0
DEMO_IMU_RATE_HZ = 50.0
DEMO_POWER_RATE_HZ = 5.0
DEMO_CAMERA_FPS = 15.0
DEMO_CAMERA_WIDTH = 320  # pixels: the face model looks at 128x128; a VGA frame costs memory, not accuracy
DEMO_CAMERA_HEIGHT = 240
DEMO_SHUNT_OHMS = 0.01  # a 0.01 ohm shunt reads up to 32 A on the ±320 mV range
DEMO_MAX_CURRENT_A = 30.0
DEMO_CAPACITY_MAH = 5000.0
DEMO_IDLE_VOLTS = 16.8  # a full 4S pack, when there is no emulated flight controller to drain it
DEMO_IDLE_AMPS = 0.4
DEMO_FOLLOW_TARGET = (4.0, 3.0)  # east, north (m from home): where the camera's face stands


class EmulatorsDriver(Driver):
    """Runs the emulated flight controller and GPS behind stable pty symlinks in ``rundir``."""

    kind: ClassVar[str] = "emulator"

    def __init__(self, name: str, entity: str, *, rundir: str) -> None:
        from drivers.serial.sim_fc import SimFlightController
        from drivers.serial.sim_gps import SimGPS

        super().__init__(name, entity, publish_telemetry=False)
        self.rundir = rundir
        self.fc_port = os.path.join(rundir, "fc")
        self.companion_port = os.path.join(rundir, "fc-companion")  # the FC's second port (TELEM2)
        self.gps_port = os.path.join(rundir, "gps")
        self.fc = SimFlightController(rate_hz=DEMO_FC_RATE_HZ)
        self.gps = SimGPS(rate_hz=DEMO_GPS_RATE_HZ, source=self.fc.geo)

    @property
    def where(self) -> str:
        return self.rundir

    async def _open(self) -> None:
        os.makedirs(self.rundir, exist_ok=True)
        await self.fc.start(self.fc_port)
        self.fc.add_port(self.companion_port)
        await self.gps.start(self.gps_port)

    async def _run(self) -> None:
        import asyncio

        while True:  # health: one sample per emulator tick
            await asyncio.sleep(1.0 / DEMO_FC_RATE_HZ)
            self._sample()

    async def _close(self) -> None:
        await self.gps.stop()
        await self.fc.stop()
        for link in (self.fc_port, self.companion_port, self.gps_port):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)

    def remove_rundir(self) -> None:
        """Delete ``rundir`` (after the drivers are stopped)."""
        shutil.rmtree(self.rundir, ignore_errors=True)


def serial_available() -> bool:
    """True if the libraries of the emulated serial devices are installed (the ``hw`` extra)."""
    return all(importlib.util.find_spec(name) is not None for name in SERIAL_LIBRARIES)


def demo_hardware(device: str, entity: str, *, rundir: str | None = None) -> list[Driver]:
    """The emulated drone's drivers; the first one (``emulators``) runs the emulators.

    Without the ``hw`` extra (pymavlink, pyserial, pynmea2) the drone has no flight controller
    and no GPS: its IMU reads level and its power monitor a full battery, and a line in the log
    says what to install.
    """
    rundir = rundir or tempfile.mkdtemp(prefix=f"edge-demo-{device}-")
    fc: SimFlightController | None = None
    serial: list[Driver] = []
    if serial_available():
        from drivers.serial.mavlink import MAVLinkDriver
        from drivers.serial.nmea import NMEAGPSDriver

        emu = EmulatorsDriver("emulators", entity, rundir=rundir)
        fc = emu.fc
        serial = [emu, MAVLinkDriver("fc", entity, port=emu.fc_port, telemetry_hz=DEMO_FC_RATE_HZ),
                  NMEAGPSDriver("gps", entity, port=emu.gps_port)]
    else:
        log.info("demo drone %s runs without flight controller and GPS: install edge-runtime[hw]", entity)

    def imu_script(t: float) -> dict[str, float]:
        pitch, roll = (fc.state.pitch, fc.state.roll) if fc is not None else (0.0, 0.0)
        return {
            "ax": -STANDARD_GRAVITY * math.sin(pitch),
            "ay": STANDARD_GRAVITY * math.sin(roll),
            "az": STANDARD_GRAVITY * math.cos(pitch) * math.cos(roll),
            "gx": 0.0, "gy": 0.0, "gz": 0.0, "temperature": 30.0 + 0.01 * t,
        }

    def power_script(t: float) -> dict[str, float]:
        if fc is None:
            return {"voltage": DEMO_IDLE_VOLTS, "current": DEMO_IDLE_AMPS}
        volts, amps, _ = fc.battery()
        return {"voltage": volts, "current": amps}

    bus = EmulatedBus(1)
    bus.attach(0x68, MPU6050Model(script=imu_script))
    bus.attach(0x40, INA219Model(shunt_ohms=DEMO_SHUNT_OHMS, script=power_script))
    return [
        *serial,
        MPU6050Driver("imu", entity, bus=bus, address=0x68, rate_hz=DEMO_IMU_RATE_HZ, stuck_after=50),
        INA219Driver("power", entity, bus=bus, address=0x40, rate_hz=DEMO_POWER_RATE_HZ,
                     shunt_ohms=DEMO_SHUNT_OHMS, max_current_a=DEMO_MAX_CURRENT_A,
                     capacity_mah=DEMO_CAPACITY_MAH),
        CameraDriver("camera", entity, source=SyntheticSource(
            DEMO_CAMERA_WIDTH, DEMO_CAMERA_HEIGHT, DEMO_CAMERA_FPS, face=True,
            pose=fc.pose if fc is not None else None, target=DEMO_FOLLOW_TARGET)),
    ]
