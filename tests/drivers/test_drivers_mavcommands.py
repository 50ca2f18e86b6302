"""The flight-controller driver's motion commands on the wire, against a MAVLink peer on a pty:
both flavours, the setpoint stream and its hold timeout, PX4's pre-stream before OFFBOARD,
COMMAND_ACK words, setpoint echoes, and the envelope keeping refused commands off the wire."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from pymavlink.dialects.v20 import common as mav
from rigs.events import CoreEvents
from rigs.mavpeer import ARDU_GUIDED, PX4_OFFBOARD, MavPeer

from drivers.serial.mavcodec import px4_custom_mode, px4_mode_name
from drivers.serial.mavcommands import MASK_POSITION, MASK_VELOCITY
from drivers.serial.mavlink import MAVLinkDriver
from drivers.testing import RecordingContext
from edge.hardware.layer import HardwareLayer
from edge.layer import DeviceContext
from edge.nats.commands import CommandClient, CommandRouter
from edge.safety.config import SafetyConfig
from edge.safety.layer import SafetyLayer
from edge.world.store import World

pytestmark = pytest.mark.timeout(60)


def driver(port: str, **kw: Any) -> MAVLinkDriver:
    opts: dict[str, Any] = {"heartbeat_s": 0.2, "link_timeout_s": 2.0, "command_timeout_s": 1.0,
                            "telemetry_hz": 10.0, **kw}
    return MAVLinkDriver("fc", "drone1", port=port, **opts)


@pytest.fixture
async def ardupilot() -> AsyncIterator[MavPeer]:
    peer = MavPeer("ardupilot")
    await peer.start()
    yield peer
    await peer.stop()


@pytest.fixture
async def px4() -> AsyncIterator[MavPeer]:
    peer = MavPeer("px4")
    await peer.start()
    yield peer
    await peer.stop()


class Running:
    def __init__(self, peer: MavPeer, drv: MAVLinkDriver, ctx: RecordingContext) -> None:
        self.peer, self.drv, self.ctx = peer, drv, ctx

    async def cmd(self, verb: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.ctx.command("drone1", verb, args or {}, timeout=10.0)


async def running(peer: MavPeer, **kw: Any) -> Running:
    ctx = RecordingContext("dev1")
    drv = driver(peer.port, **kw)
    await drv.start(ctx)
    return Running(peer, drv, ctx)


# -- ArduPilot ---------------------------------------------------------------------------------

async def test_local_velocity_is_one_set_position_target_in_local_ned(ardupilot: MavPeer) -> None:
    r = await running(ardupilot)
    try:
        assert r.drv.commander.flavour == "ardupilot"
        t0 = time.monotonic()
        ans = await r.cmd("velocity", {"x": 1.5, "y": -2.0, "z": 0.5})  # east, north, up
        assert ans["ok"] is True and ans["result"] == "TRACKING"
        assert ans["confirmed_by"] == "POSITION_TARGET_LOCAL_NED" and ans["frame"] == "MAV_FRAME_LOCAL_NED"
        first = ardupilot.setpoints(t0)[0]
        assert first.t - t0 < 0.09  # sent with the command, not at the next tick of the stream
        sp = first.msg
        assert sp.get_type() == "SET_POSITION_TARGET_LOCAL_NED"
        assert (sp.target_system, sp.target_component) == (1, 1)
        assert sp.coordinate_frame == mav.MAV_FRAME_LOCAL_NED and sp.type_mask == MASK_VELOCITY == 0xDC7
        assert (sp.vx, sp.vy, sp.vz) == pytest.approx((-2.0, 1.5, -0.5))  # north, east, down
    finally:
        await r.drv.stop()


async def test_body_velocity_and_yaw_rate_field(ardupilot: MavPeer) -> None:
    r = await running(ardupilot)
    try:
        t0 = time.monotonic()
        ans = await r.cmd("velocity", {"x": 2.0, "y": 1.0, "z": -0.5, "frame": "body", "yaw_rate": 30})
        assert ans["ok"] and ans["frame"] == "MAV_FRAME_BODY_OFFSET_NED"
        sp = ardupilot.setpoints(t0)[0].msg
        assert sp.coordinate_frame == mav.MAV_FRAME_BODY_OFFSET_NED
        assert (sp.vx, sp.vy, sp.vz) == pytest.approx((2.0, -1.0, 0.5))  # forward, right, down
        assert sp.type_mask == 0x5C7 and sp.yaw_rate == pytest.approx(math.radians(30))
    finally:
        await r.drv.stop()


async def test_position_and_goto_frames(ardupilot: MavPeer) -> None:
    r = await running(ardupilot)
    try:
        t0 = time.monotonic()
        ans = await r.cmd("position", {"x": 10.0, "y": 20.0, "z": 5.0, "yaw": 90})
        assert ans["result"] == "TRACKING"
        sp = ardupilot.setpoints(t0)[0].msg
        assert sp.type_mask == MASK_POSITION & ~0x400 and sp.yaw == pytest.approx(math.pi / 2)
        assert (sp.x, sp.y, sp.z) == pytest.approx((20.0, 10.0, -5.0))
        t1 = time.monotonic()
        ans = await r.cmd("goto", {"lat": 47.5, "lon": 8.25, "alt": 30.0})
        assert ans["result"] == "TRACKING" and ans["confirmed_by"] == "POSITION_TARGET_GLOBAL_INT"
        g = ardupilot.setpoints(t1)[0].msg
        assert g.get_type() == "SET_POSITION_TARGET_GLOBAL_INT"
        assert g.coordinate_frame == mav.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT and g.type_mask == MASK_POSITION
        assert (g.lat_int, g.lon_int, g.alt) == (475000000, 82500000, pytest.approx(30.0))
    finally:
        await r.drv.stop()


async def test_the_stream_runs_at_10_hz_and_holds_after_the_timeout(ardupilot: MavPeer) -> None:
    r = await running(ardupilot, setpoint_timeout_s=1.0)
    try:
        t0 = time.monotonic()
        await r.cmd("velocity", {"x": 1.0})
        await asyncio.sleep(0.9)
        frames = ardupilot.setpoints(t0)
        assert 8 <= len(frames) <= 11, len(frames)
        gaps = [b.t - a.t for a, b in zip(frames, frames[1:])]
        assert statistics.median(gaps) == pytest.approx(0.1, abs=0.02)
        assert all(f.msg.vy == pytest.approx(1.0) for f in frames)
        await asyncio.sleep(0.5)  # past the 1 s timeout: zero velocity, still streamed
        late = ardupilot.setpoints(time.monotonic() - 0.25)
        assert late and all((f.msg.vx, f.msg.vy, f.msg.vz) == (0, 0, 0) for f in late)
        event = [p.json() for p in r.ctx.published_on("edge.dev1.evt.drone1.setpoint_timeout")]
        assert event and event[0]["was"] == "velocity" and event[0]["now"] == "hold"
        assert r.drv.details()["setpoint_timeouts"] == 1
    finally:
        await r.drv.stop()
    n = len(ardupilot.setpoints())
    await asyncio.sleep(0.3)
    assert len(ardupilot.setpoints()) == n  # a stopped driver streams nothing


async def test_fresh_commands_keep_the_stream_flying(ardupilot: MavPeer) -> None:
    r = await running(ardupilot, setpoint_timeout_s=1.0)
    try:
        for _ in range(5):
            await r.cmd("velocity", {"x": 2.0})
            await asyncio.sleep(0.3)
        recent = ardupilot.setpoints(time.monotonic() - 0.25)
        assert recent and all(f.msg.vy == pytest.approx(2.0) for f in recent)
        assert r.drv.details()["setpoint_timeouts"] == 0
    finally:
        await r.drv.stop()


async def test_command_long_verbs_and_ack_words(ardupilot: MavPeer) -> None:
    r = await running(ardupilot)
    try:
        ans = await r.cmd("set_mode", {"mode": "guided"})
        assert ans["ok"] and ans["result"] == "ACCEPTED"
        c = ardupilot.commands(mav.MAV_CMD_DO_SET_MODE)[-1]
        assert (c.param1, c.param2) == (mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, ARDU_GUIDED)
        assert (await r.cmd("arm"))["ok"] and ardupilot.armed
        ans = await r.cmd("takeoff", {"alt": 7.5})
        assert ans["ok"] and ardupilot.commands(mav.MAV_CMD_NAV_TAKEOFF)[-1].param7 == 7.5  # relative
        ardupilot.results[mav.MAV_CMD_NAV_LAND] = mav.MAV_RESULT_DENIED
        ans = await r.cmd("land")
        assert ans["ok"] is False and ans["result"] == "DENIED" and "DENIED" in ans["error"]
        ardupilot.in_progress.add(mav.MAV_CMD_NAV_RETURN_TO_LAUNCH)
        ans = await r.cmd("rtl")
        assert ans["ok"] and ans["result"] == "ACCEPTED"  # the final ack, not IN_PROGRESS
        ardupilot.silent.add(mav.MAV_CMD_COMPONENT_ARM_DISARM)
        ans = await r.cmd("disarm", {"force": True})
        assert ans["ok"] is False and "no COMMAND_ACK" in ans["error"]
        assert ardupilot.commands(mav.MAV_CMD_COMPONENT_ARM_DISARM)[-1].param2 == 21196
    finally:
        await r.drv.stop()


async def test_ardupilot_yaw_is_condition_yaw(ardupilot: MavPeer) -> None:
    r = await running(ardupilot)
    try:
        assert (await r.cmd("yaw", {"yaw": 270, "rate": 20, "direction": "cw"}))["ok"]
        c = ardupilot.commands(mav.MAV_CMD_CONDITION_YAW)[-1]
        assert (c.param1, c.param2, c.param3, c.param4) == (270, 20, 1, 0)
        ans = await r.cmd("yaw_rate", {"rate": -15, "duration": 2})
        assert ans["ok"] and ans["turn_deg"] == 30
        c = ardupilot.commands(mav.MAV_CMD_CONDITION_YAW)[-1]
        assert (c.param1, c.param2, c.param3, c.param4) == (30, 15, -1, 1)
        assert ardupilot.setpoints() == []
    finally:
        await r.drv.stop()


async def test_land_and_rtl_stop_the_stream(ardupilot: MavPeer) -> None:
    r = await running(ardupilot)
    try:
        await r.cmd("velocity", {"x": 1.0})
        assert (await r.cmd("land"))["ok"]
        await asyncio.sleep(0.05)
        n = len(ardupilot.setpoints())
        await asyncio.sleep(0.3)
        assert len(ardupilot.setpoints()) == n and r.drv.details()["streaming"] is None
    finally:
        await r.drv.stop()


async def test_hold_is_a_zero_setpoint_in_guided_and_loiter_otherwise(ardupilot: MavPeer) -> None:
    r = await running(ardupilot)
    try:
        ans = await r.cmd("hold")  # STABILIZE: not a setpoint mode
        assert ans["ok"] and ans["mode"] == "LOITER" and ardupilot.custom_mode == 5
        ardupilot.custom_mode = ARDU_GUIDED
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        ans = await r.cmd("hold")
        assert ans["result"] == "TRACKING"
        sp = ardupilot.setpoints(t0)[0].msg
        assert (sp.vx, sp.vy, sp.vz, sp.type_mask) == (0, 0, 0, MASK_VELOCITY)
    finally:
        await r.drv.stop()


async def test_without_an_echo_the_setpoint_is_unconfirmed(ardupilot: MavPeer) -> None:
    ardupilot.echo = False
    r = await running(ardupilot, confirm_timeout_s=0.2)
    try:
        t0 = time.monotonic()
        ans = await r.cmd("velocity", {"x": 1.0})
        assert ans["ok"] is True and ans["result"] == "UNCONFIRMED" and ans["confirmed_by"] is None
        assert 0.18 < time.monotonic() - t0 < 1.0
        assert ardupilot.setpoints(t0)
    finally:
        await r.drv.stop()


async def test_bad_arguments_are_refused_before_the_wire(ardupilot: MavPeer) -> None:
    r = await running(ardupilot)
    try:
        for verb, args in (("velocity", {"x": "fast"}), ("velocity", {"frame": "world"}),
                           ("position", {"x": 1}), ("goto", {"lat": 91, "lon": 0, "alt": 5}),
                           ("set_mode", {"mode": "warp"}), ("yaw", {"yaw": 10, "direction": "up"})):
            ans = await r.cmd(verb, args)
            assert ans["ok"] is False and ans["error"], (verb, ans)
        assert ardupilot.setpoints() == [] and not ardupilot.commands(mav.MAV_CMD_DO_SET_MODE)
    finally:
        await r.drv.stop()


async def test_a_gimbal_heartbeat_does_not_change_the_flavour_or_mode(px4: MavPeer) -> None:
    px4.extra_heartbeats.append((154, mav.MAV_TYPE_GIMBAL, mav.MAV_AUTOPILOT_ARDUPILOTMEGA))
    px4.extra_heartbeats.append((191, mav.MAV_TYPE_ONBOARD_CONTROLLER, mav.MAV_AUTOPILOT_GENERIC))
    r = await running(px4)
    try:
        await asyncio.sleep(0.5)
        assert r.drv.commander.flavour == "px4" and r.drv.commander.mode == "POSCTL"
    finally:
        await r.drv.stop()


# -- PX4 -----------------------------------------------------------------------------------------

def test_px4_mode_encoding() -> None:
    assert px4_custom_mode("OFFBOARD") == PX4_OFFBOARD == 0x060000
    assert px4_mode_name(4 << 16 | 3 << 24) == "AUTO.LOITER"
    assert px4_mode_name(4 << 16 | 5 << 24) == "AUTO.RTL"
    assert px4_mode_name(3 << 16) == "POSCTL"
    assert px4_mode_name(4 << 16 | 7 << 24) == f"custom:{4 << 16 | 7 << 24}"  # an AUTO sub mode it does not know
    assert px4_mode_name(0x7F0000).startswith("custom:")


async def test_px4_offboard_is_asked_only_after_a_setpoint_prestream(px4: MavPeer) -> None:
    r = await running(px4, px4_prestream_s=0.6)
    try:
        assert r.drv.commander.flavour == "px4"
        t0 = time.monotonic()
        ans = await r.cmd("set_mode", {"mode": "offboard"})
        assert ans["ok"] and ans["result"] == "ACCEPTED" and 0.6 <= ans["prestream_s"] < 1.0
        mode_cmd = px4.of("COMMAND_LONG", t0)[-1]
        assert mode_cmd.msg.command == mav.MAV_CMD_DO_SET_MODE
        assert (mode_cmd.msg.param1, mode_cmd.msg.param2, mode_cmd.msg.param3) == (1, 6, 0)
        before = [f for f in px4.setpoints(t0) if f.t < mode_cmd.t]
        assert len(before) >= 5  # ~0.6 s at 10 Hz, before the mode was asked
        assert px4.custom_mode == PX4_OFFBOARD
        await asyncio.sleep(0.2)
        assert r.drv.commander.mode == "OFFBOARD"
        t1 = time.monotonic()
        ans = await r.cmd("velocity", {"x": 1.0})
        assert ans["result"] == "TRACKING"
        await asyncio.sleep(0.5)
        assert len(px4.setpoints(t1)) >= 4  # the stream goes on while OFFBOARD is engaged
    finally:
        await r.drv.stop()


async def test_px4_refuses_offboard_without_a_stream(px4: MavPeer) -> None:
    # the peer follows PX4: it denies OFFBOARD unless setpoints are arriving. The driver's
    # pre-stream is what makes the difference: asked directly, the mode is denied.
    r = await running(px4)
    try:
        ans = await r.drv.command_long(mav.MAV_CMD_DO_SET_MODE, 1, 6, 0)
        assert ans["ok"] is False and ans["result"] == "DENIED"
    finally:
        await r.drv.stop()


async def test_px4_takeoff_altitude_is_amsl_and_yaw_is_a_setpoint_field(px4: MavPeer) -> None:
    r = await running(px4)
    try:
        await asyncio.sleep(0.3)  # GLOBAL_POSITION_INT: home at 500 m AMSL
        assert (await r.cmd("takeoff", {"alt": 10}))["ok"]
        assert px4.commands(mav.MAV_CMD_NAV_TAKEOFF)[-1].param7 == pytest.approx(510.0)
        t0 = time.monotonic()
        ans = await r.cmd("yaw", {"yaw": 180})
        assert ans["ok"] and ans["command"] == "SET_POSITION_TARGET_LOCAL_NED"
        sp = px4.setpoints(t0)[0].msg
        assert sp.type_mask & 0x400 == 0 and sp.type_mask & 0x800 and sp.yaw == pytest.approx(math.pi)
        assert not px4.commands(mav.MAV_CMD_CONDITION_YAW)
        t1 = time.monotonic()
        await r.cmd("yaw_rate", {"rate": 45})
        sp = px4.setpoints(t1)[0].msg
        assert sp.type_mask & 0x800 == 0 and sp.yaw_rate == pytest.approx(math.radians(45))
        ans = await r.cmd("set_mode", {"mode": "AUTO.LOITER"})
        c = px4.commands(mav.MAV_CMD_DO_SET_MODE)[-1]
        assert ans["ok"] and (c.param2, c.param3) == (4, 3)
        assert (await r.cmd("set_mode", {"mode": "GUIDED"}))["ok"] is False  # an ArduPilot name
    finally:
        await r.drv.stop()


# -- through the envelope ------------------------------------------------------------------------

class Device:
    def __init__(self, nc: Client, tmp: Path, peer: MavPeer) -> None:
        self.world = World(shared=False)
        self.router = CommandRouter(nc, "dev1", CoreEvents(nc))
        self.ctx = DeviceContext("dev1", nc, nc.jetstream(), self.world, tmp, CoreEvents(nc), self.router)
        self.drv = driver(peer.port)
        self.hardware = HardwareLayer([self.drv])
        self.safety = SafetyLayer(SafetyConfig(), [d.entity for d in self.hardware.drivers if d.vehicle])
        self.client = CommandClient(nc, "dev1")

    async def start(self) -> None:
        await self.router.start()
        await self.safety.start(self.ctx)
        await self.hardware.start(self.ctx)

    async def stop(self) -> None:
        await self.hardware.stop()
        await self.safety.stop()
        await self.router.stop()

    async def send(self, verb: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        return (await self.client.send("drone1", verb, args or {}, timeout=10, caller="agent")).answer


async def test_a_refused_command_never_produces_a_frame(nc: Client, tmp_path: Path, ardupilot: MavPeer) -> None:
    dev = Device(nc, tmp_path, ardupilot)
    await dev.start()
    try:
        async def flight(armed: bool, mode: str) -> None:
            deadline = time.monotonic() + 5
            while not (dev.world.has("drone1", "flight")
                       and dev.world.get("drone1", "flight")["armed"] is armed
                       and dev.world.get("drone1", "flight")["mode"] == mode):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            dev.world.set("drone1", "position", {"x": 0.0, "y": 0.0, "z": 5.0})

        await flight(False, "STABILIZE")
        for verb, args in (("velocity", {"x": 1.0}), ("position", {"x": 1.0, "y": 0.0, "z": 5.0}),
                           ("takeoff", {"alt": 5.0}), ("yaw_rate", {"rate": 10})):
            ans = await dev.send(verb, args)
            assert ans["ok"] is False and ans["reason"] == "envelope" and ans["envelope"]["rule"] == "disarmed"
        assert (await dev.send("set_mode", {"mode": "GUIDED"}))["ok"]
        assert (await dev.send("arm"))["ok"]
        await flight(True, "GUIDED")
        assert ardupilot.setpoints() == []
        assert not ardupilot.commands(mav.MAV_CMD_NAV_TAKEOFF) and not ardupilot.commands(mav.MAV_CMD_CONDITION_YAW)
        dev.world.set("drone1", "battery", {"voltage": 10.0, "current": 0.0, "level": 0.1})
        ans = await dev.send("velocity", {"x": 1.0})
        assert ans["envelope"]["rule"] == "battery" and ans["offer"] == "rtl"
        assert ardupilot.setpoints() == []
        dev.world.set("drone1", "battery", {"level": 0.9})
        t0 = time.monotonic()
        ans = await dev.send("velocity", {"x": 9.0, "y": 0.0, "z": 0.0})  # over the 5 m/s default
        assert ans["ok"] is True and ans["result"] == "TRACKING" and ans["envelope"]["decision"] == "clamped"
        sp = ardupilot.setpoints(t0)[0].msg
        assert sp.vy == pytest.approx(5.0) and sp.vx == 0  # the clamped value is what flies
    finally:
        await dev.stop()


async def test_envelope_events_are_published(nc: Client, tmp_path: Path, ardupilot: MavPeer) -> None:
    dev = Device(nc, tmp_path, ardupilot)
    sub = await nc.subscribe("edge.dev1.evt.drone1.safety")
    await dev.start()
    try:
        await asyncio.sleep(0.3)
        ans = await dev.send("velocity", {"x": 1.0})
        assert ans["reason"] == "envelope"
        event = json.loads((await sub.next_msg(timeout=5)).data)
        assert event["decision"] == "refused" and event["caller"] == "agent" and event["id"] == ans["id"]
    finally:
        await dev.stop()


async def test_a_gimbal_ack_does_not_answer_for_the_autopilot(ardupilot: MavPeer) -> None:
    r = await running(ardupilot, command_timeout_s=0.5)
    try:
        ardupilot.silent.add(mav.MAV_CMD_COMPONENT_ARM_DISARM)
        task = asyncio.ensure_future(r.cmd("arm"))
        await ardupilot.wait(lambda: ardupilot.commands(mav.MAV_CMD_COMPONENT_ARM_DISARM))
        ardupilot.send(ardupilot.mav.command_ack_encode(mav.MAV_CMD_COMPONENT_ARM_DISARM, mav.MAV_RESULT_ACCEPTED,
                                                        0, 0, 255, 190), component=154)
        ans = await task
        assert ans["ok"] is False and "no COMMAND_ACK" in ans["error"]
    finally:
        await r.drv.stop()


async def test_a_command_waiting_when_the_link_is_lost_is_answered_with_the_loss(ardupilot: MavPeer) -> None:
    r = await running(ardupilot, command_timeout_s=5.0)
    ardupilot.silent.add(mav.MAV_CMD_NAV_RETURN_TO_LAUNCH)
    task = asyncio.ensure_future(r.cmd("rtl"))
    await ardupilot.wait(lambda: ardupilot.commands(mav.MAV_CMD_NAV_RETURN_TO_LAUNCH))
    t0 = time.monotonic()
    await r.drv.stop()
    ans = await task
    assert time.monotonic() - t0 < 2.0
    assert ans["ok"] is False and "link to the flight controller was lost" in ans["error"]


async def test_edge_status_shows_the_command_side(nc: Client, tmp_path: Path, ardupilot: MavPeer) -> None:
    dev = Device(nc, tmp_path, ardupilot)
    await dev.start()
    try:
        await asyncio.sleep(0.3)
        row = dev.hardware.status()[0]
        assert row["name"] == "fc" and row["details"]["flavour"] == "ardupilot"
        assert row["details"]["streaming"] is None and row["details"]["mode"] == "STABILIZE"
        assert dev.safety.status()["guarded"] == ["drone1"]
    finally:
        await dev.stop()


async def test_a_zero_velocity_is_a_hold_that_does_not_time_out(ardupilot: MavPeer) -> None:
    r = await running(ardupilot, setpoint_timeout_s=0.3)
    try:
        await r.cmd("velocity", {"x": 0.0, "y": 0.0, "z": 0.0})
        await asyncio.sleep(0.6)
        assert r.drv.details()["setpoint_timeouts"] == 0 and r.drv.details()["streaming"] == "velocity"
        assert not r.ctx.published_on("edge.dev1.evt.drone1.setpoint_timeout")
    finally:
        await r.drv.stop()


async def test_px4_offboard_after_a_velocity_waits_only_for_the_rest_of_the_prestream(px4: MavPeer) -> None:
    r = await running(px4, px4_prestream_s=0.6)
    try:
        await r.cmd("velocity", {"x": 1.0})  # streaming already (PX4 ignores it until OFFBOARD)
        await asyncio.sleep(0.4)
        t0 = time.monotonic()
        ans = await r.cmd("set_mode", {"mode": "OFFBOARD"})
        assert ans["ok"] and 0.6 <= ans["prestream_s"] < 0.9
        assert time.monotonic() - t0 < 0.5  # ~0.2 s left of the pre-stream, not a full one
        assert px4.custom_mode == PX4_OFFBOARD
        recent = px4.setpoints(time.monotonic() - 0.25)
        assert recent and all(f.msg.vy == pytest.approx(1.0) for f in recent)  # the velocity streams on
    finally:
        await r.drv.stop()


def test_a_message_the_commander_cannot_use_is_counted_and_dropped() -> None:
    from drivers.serial.mavcommands import MavCommander

    async def send(msg: Any) -> None:
        return None

    async def event(kind: str, payload: Any) -> None:
        return None

    c = MavCommander(send=send, mav=lambda: mav.MAVLink(None, 255, 190), event=event)
    hb = mav.MAVLink_heartbeat_message(mav.MAV_TYPE_QUADROTOR, mav.MAV_AUTOPILOT_PX4, 0, 0, 0, 3)
    hb.base_mode = None  # a field pymavlink could not fill: not a number
    hb._header = mav.MAVLink_header(0, srcSystem=1, srcComponent=1)
    c.observe(hb)
    assert c.bad_messages == 1 and c.mode is None
    hb.base_mode = mav.MAV_MODE_FLAG_SAFETY_ARMED
    hb.custom_mode = PX4_OFFBOARD
    c.observe(hb)
    assert c.bad_messages == 1 and c.armed is True and c.flavour == "px4" and c.mode == "OFFBOARD"


async def test_px4_takeoff_before_the_home_altitude_is_known_is_refused_unsent() -> None:
    from drivers.serial.mavcommands import MavCommander

    sent: list[Any] = []

    async def send(msg: Any) -> None:
        sent.append(msg)

    async def event(kind: str, payload: Any) -> None:
        return None

    c = MavCommander(send=send, mav=lambda: mav.MAVLink(None, 255, 190), event=event, autopilot="px4")
    with pytest.raises(ValueError, match="home altitude is not known"):
        await c.takeoff({"alt": 10})
    with pytest.raises(ValueError, match="'alt' must be a number"):
        await c.takeoff({"alt": 0.1})
    assert sent == []


async def test_the_follow_agents_velocity_becomes_the_setpoint_unchanged(
        nc: Client, tmp_path: Path, ardupilot: MavPeer) -> None:
    from edge.agents import AgentSpec, FollowAgent, FollowParams
    from edge.agents.host import AgentHost

    ardupilot.armed, ardupilot.custom_mode, ardupilot.position_ned = True, ARDU_GUIDED, (0.0, 0.0, -10.0)
    dev = Device(nc, tmp_path, ardupilot)
    params = FollowParams(acquire_frames=1, min_delta=0.0, refresh_s=0.5, lost_timeout=60.0)
    host = AgentHost([AgentSpec.of(lambda: FollowAgent("drone1", params, interval=0.2))])
    await dev.start()
    await host.start(dev.ctx)
    try:
        deadline = time.monotonic() + 5
        while not (dev.world.has("drone1", "position") and dev.world.has("drone1", "flight")
                   and dev.world.get("drone1", "flight")["mode"] == "GUIDED"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        t0 = time.monotonic()
        # the face right of and above the frame centre: east and north at gain 4 x offset 0.3
        body = json.dumps({"items": [{"label": "face", "score": 0.9, "box": [0.7, 0.1, 0.9, 0.3]}]}).encode()
        await nc.publish("edge.dev1.evt.drone1.detections", body)
        await ardupilot.wait(lambda: bool(ardupilot.setpoints(t0)))
        sp = ardupilot.setpoints(t0)[0].msg
        assert sp.coordinate_frame == mav.MAV_FRAME_LOCAL_NED and sp.type_mask == MASK_VELOCITY
        assert (sp.vx, sp.vy, sp.vz) == pytest.approx((1.2, 1.2, 0.0))  # north, east, down
    finally:
        await host.stop()
        await dev.stop()
