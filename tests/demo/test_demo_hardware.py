"""The emulated drone of the runtime's demo: builds, runs, survives an emulator restart."""

from __future__ import annotations

import os

import pytest

from drivers.camera.driver import CameraDriver
from edge.demo.hardware import DEMO_CAMERA_HEIGHT, DEMO_CAMERA_WIDTH, EmulatorsDriver, demo_hardware
from drivers.supervisor import DriverSupervisor
from drivers.testing import RecordingContext

pytestmark = pytest.mark.timeout(30)


async def test_demo_hardware_runs_and_recovers(tmp_path: str) -> None:
    drivers = demo_hardware("dev1", "drone1", rundir=os.path.join(tmp_path, "run"))
    assert [d.name for d in drivers] == ["emulators", "fc", "gps", "imu", "power", "camera"]
    emu = drivers[0]
    assert isinstance(emu, EmulatorsDriver)
    cam = drivers[-1]
    assert isinstance(cam, CameraDriver)
    ctx = RecordingContext("dev1", keep=0)
    sup = DriverSupervisor(ctx, drivers, backoff_initial_s=0.1)
    await sup.start()
    try:
        wanted = ("geo", "gps", "imu", "battery", "camera", "flight", "attitude")
        await ctx.wait_for(lambda: all(ctx.component("drone1", c) for c in wanted), timeout=10)
        frame = await cam.frames.get_newer(0)
        assert frame.image.shape == (DEMO_CAMERA_HEIGHT, DEMO_CAMERA_WIDTH, 3)
        # GPS reports the emulated FC's position
        assert abs(float(ctx.component("drone1", "geo")["lat"]) - emu.fc.geo()[0]) < 1e-5
        # the emulators crash: the supervisor restarts them; the serial drivers lose their
        # ports and are reopened through the stable symlinks
        emu.fail(OSError("emulator crashed"))
        fc = sup.driver("fc")
        await ctx.wait_for(lambda: emu.restarts >= 1 and emu.state == "running", timeout=10)
        await ctx.wait_for(lambda: fc.restarts >= 1 and fc.state == "running", timeout=10)
        assert sup.driver("imu").restarts == 0
    finally:
        await sup.stop()
        emu.remove_rundir()
    assert not os.path.exists(emu.rundir)
