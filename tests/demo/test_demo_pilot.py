"""The demo pilot's velocity verbs: MAVLink setpoints on the emulator's second port, refusals for
bad numbers and for a link that is down, the stream kept up while a velocity is active."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.serial.sim_fc import SimFlightController
from edge.demo.pilot import DemoPilot, PilotRefused
from edge.nats.commands import CommandRequest

pytestmark = pytest.mark.timeout(30)


def cmd(verb: str, **args: object) -> CommandRequest:
    return CommandRequest("drone-0", verb, dict(args), "id1", None, f"edge.demo.cmd.drone-0.{verb}")


async def test_velocity_becomes_a_setpoint_stream_and_hold_stops_it(tmp_path: Path) -> None:
    fc = SimFlightController(rate_hz=20)
    await fc.start()
    fc.state.armed, fc.state.mode = True, "GUIDED"
    port = fc.add_port(str(tmp_path / "companion"))
    pilot = DemoPilot("drone-0", lambda: port, stream_hz=20)
    stream = asyncio.create_task(pilot._stream())
    try:
        ack = await pilot._on_cmd(cmd("velocity", x=1.5, y=-0.5))
        assert ack["velocity"] == {"x": 1.5, "y": -0.5, "z": 0.0}
        for _ in range(100):
            if fc.state.setpoint is not None and fc.state.setpoint.vel is not None:
                break
            await asyncio.sleep(0.02)
        sp = fc.state.setpoint
        assert sp is not None and sp.vel == pytest.approx((-0.5, 1.5, 0.0))  # ENU x east -> NED north/east
        n = len([c for c in fc.state.commands if c == "setpoint:local"])
        await asyncio.sleep(0.5)
        assert len([c for c in fc.state.commands if c == "setpoint:local"]) >= n + 5  # streamed
        await pilot._on_cmd(cmd("hold"))
        await asyncio.sleep(0.1)
        n = len(fc.state.commands)
        await asyncio.sleep(0.3)
        assert len(fc.state.commands) == n and fc.state.setpoint is not None
        assert fc.state.setpoint.vel == (0.0, 0.0, 0.0)  # the last one: a stop
        with pytest.raises(PilotRefused, match="exceeds"):
            await pilot._on_cmd(cmd("velocity", x=50))
        with pytest.raises(PilotRefused, match="must be a number"):
            await pilot._on_cmd(cmd("velocity", y="fast"))
        assert pilot.refused == 2 and pilot.applied == 2
    finally:
        stream.cancel()
        await pilot.stop()
        await fc.stop()


async def test_velocity_with_the_link_down_is_refused(tmp_path: Path) -> None:
    pilot = DemoPilot("drone-0", lambda: str(tmp_path / "nowhere"))
    with pytest.raises(PilotRefused, match="link"):
        await pilot._on_cmd(cmd("velocity", x=1))
    assert pilot.link_errors == 1
    await pilot.stop()
