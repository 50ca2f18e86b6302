"""The emulated flight controller flies, in both flavours, through the real MAVLink driver on ptys.

A test peer (tests/rigs/gcspeer.py) on the emulator's second port sends raw standard setpoints and
commands; the driver under test reads the telemetry on the first port.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
from rigs.gcspeer import NAN, POSITION_MASK, VELOCITY_MASK, VELOCITY_YAW_MASK, GcsPeer, takeoff_alt

from drivers.serial.mavcodec import COPTER_MODES, mavlink
from drivers.serial.mavlink import MAVLinkDriver
from drivers.serial.sim_fc import SimFlightController
from drivers.testing import RecordingContext
from edge.errors import DriverError

pytestmark = pytest.mark.timeout(60)

ACCEPTED = mavlink.MAV_RESULT_ACCEPTED
LOCAL = mavlink.MAV_FRAME_LOCAL_NED
BODY = mavlink.MAV_FRAME_BODY_OFFSET_NED
PX4_OFFBOARD = 6  # main mode
PX4_POSCTL = 3
CUSTOM = mavlink.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED


class Rig:
    def __init__(self, fc: SimFlightController, drv: MAVLinkDriver, ctx: RecordingContext, peer: GcsPeer) -> None:
        self.fc, self.drv, self.ctx, self.peer = fc, drv, ctx, peer

    def comp(self, name: str) -> dict[str, float]:
        return {k: v for k, v in self.ctx.component("drone1", name).items() if not isinstance(v, str | bool)}

    def flight(self) -> dict[str, object]:
        return dict(self.ctx.component("drone1", "flight"))

    async def wait(self, pred: object, timeout: float = 10.0) -> None:
        await self.ctx.wait_for(pred, timeout=timeout)  # type: ignore[arg-type]

    async def guided(self) -> None:
        """Arm and climb to 3 m in the flavour's setpoint mode (GUIDED / OFFBOARD)."""
        p, fc = self.peer, self.fc
        if fc.flavour == "ardupilot":
            assert await p.command(mavlink.MAV_CMD_DO_SET_MODE, CUSTOM, COPTER_MODES["GUIDED"]) == ACCEPTED
        else:  # neither arms in a return or landing mode
            assert await p.command(mavlink.MAV_CMD_DO_SET_MODE, CUSTOM, PX4_POSCTL, 0) == ACCEPTED
        assert await p.command(mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 1) == ACCEPTED
        alt = takeoff_alt(fc.flavour, fc.home[2], 3.0)
        assert await p.command(mavlink.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, NAN, NAN, NAN, alt) == ACCEPTED
        await self.wait(lambda: self.comp("position").get("z", 0) > 2.7, 15)
        if fc.flavour == "px4":
            await self.wait(lambda: self.flight().get("mode") == "AUTO.LOITER")
            p.stream(p.local_ned(LOCAL, VELOCITY_MASK), 10)  # a zero-velocity stream before OFFBOARD
            await asyncio.sleep(0.3)
            assert await p.command(mavlink.MAV_CMD_DO_SET_MODE, CUSTOM, PX4_OFFBOARD, 0) == ACCEPTED
            await self.wait(lambda: self.flight().get("mode") == "OFFBOARD")


@pytest.fixture(params=["ardupilot", "px4"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    fc = SimFlightController(flavour=request.param, rate_hz=20, heartbeat_hz=5, components=("gimbal", "camera"),
                             packs=2, unknown={1: ("remaining", "current", "temperature")}, rtl_alt=5.0)
    port = await fc.start()
    peer = await GcsPeer(fc.add_port()).open()
    ctx = RecordingContext("dev1")
    drv = MAVLinkDriver("fc", "drone1", port=port, heartbeat_s=0.2, link_timeout_s=1.5, command_timeout_s=2.0,
                        telemetry_hz=20)
    await drv.start(ctx)
    try:
        yield Rig(fc, drv, ctx, peer)
    finally:
        await drv.stop()
        await peer.close()
        await fc.stop()


async def test_heartbeat_flavour_and_components(rig: Rig) -> None:
    await rig.wait(lambda: rig.flight() != {} and len(rig.drv.details()["components"]) == 3)
    want = "STABILIZE" if rig.fc.flavour == "ardupilot" else "MANUAL"
    assert rig.flight()["mode"] == want and rig.flight()["armed"] is False
    d = rig.drv.details()
    assert d["autopilot"] == {"component": 1, "autopilot": "ARDUPILOTMEGA" if rig.fc.flavour == "ardupilot" else "PX4"}
    assert {c["type"] for c in d["components"].values()} == {"QUADROTOR", "GIMBAL", "CAMERA"}
    assert d["components"]["154"]["autopilot"] == "INVALID"
    # arming the vehicle: the gimbal's and camera's heartbeats (armed flag clear) never flip it back
    assert await rig.peer.command(mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 1) == ACCEPTED
    await rig.wait(lambda: rig.flight().get("armed") is True)
    n = len(rig.ctx.updates)
    await asyncio.sleep(1.0)  # five heartbeats of each component
    flights = [u.values for u in rig.ctx.updates[n:] if u.component == "flight"]
    assert flights and all(f["armed"] is True and f["mode"] == want for f in flights)
    assert all(u.values.get("armed") is not False for u in rig.ctx.updates[n:] if u.component == "flight")


async def test_velocity_setpoints_fly_and_position_target_echoes(rig: Rig) -> None:
    await rig.guided()
    start = rig.comp("position")
    rig.peer.stream(rig.peer.local_ned(LOCAL, VELOCITY_MASK, vel=(2.0, -1.0, 0.0)), 10)  # north 2, west 1
    await rig.wait(lambda: abs(rig.comp("velocity").get("y", 0) - 2.0) < 0.15
                   and abs(rig.comp("velocity").get("x", 0) + 1.0) < 0.15)
    await asyncio.sleep(1.0)
    pos = rig.comp("position")
    assert pos["y"] - start["y"] > 2.0 and pos["x"] - start["x"] < -1.0  # it moved north and west
    att = rig.comp("attitude")  # steady speed: tilted just enough to cancel the drag, nose down, left
    drag = rig.fc.limits.drag
    assert abs(att["pitch"] + math.atan(drag * 2.0 / 9.80665)) < 0.01
    assert abs(att["roll"] - math.atan(drag * -1.0 / 9.80665)) < 0.01
    # the autopilot reports what it tracks
    await rig.wait(lambda: (rig.drv.telemetry.position_target or {}).get("vx") == 2.0)
    target = rig.drv.telemetry.position_target
    assert target is not None and target["vy"] == -1.0 and int(target["type_mask"]) & 0b111 == 0b111
    assert target["coordinate_frame"] == LOCAL


async def test_stream_loss_as_each_autopilot_does(rig: Rig) -> None:
    await rig.guided()
    rig.peer.stream(rig.peer.local_ned(LOCAL, VELOCITY_MASK, vel=(0.0, 2.0, 0.0)), 10)
    await rig.wait(lambda: rig.comp("velocity").get("x", 0) > 1.8)
    rig.peer.stop_stream()
    if rig.fc.flavour == "px4":  # PX4: out of OFFBOARD into hold (AUTO.LOITER) about 1 s later
        await rig.wait(lambda: rig.flight().get("mode") == "AUTO.LOITER", 3.0)
    else:  # ArduCopter: still GUIDED, stops 3 s after the last velocity setpoint
        await asyncio.sleep(2.0)
        assert rig.comp("velocity")["x"] > 1.8 and rig.flight()["mode"] == "GUIDED"
        await asyncio.sleep(1.5)
        assert rig.flight()["mode"] == "GUIDED"
    await rig.wait(lambda: abs(rig.comp("velocity").get("x", 9)) < 0.3, 5.0)


async def test_setpoints_not_flown_outside_the_setpoint_mode(rig: Rig) -> None:
    p, fc = rig.peer, rig.fc
    hold = "LOITER" if fc.flavour == "ardupilot" else None
    if hold:
        assert await p.command(mavlink.MAV_CMD_DO_SET_MODE, CUSTOM, COPTER_MODES["GUIDED"]) == ACCEPTED
    assert await p.command(mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 1) == ACCEPTED
    assert await p.command(mavlink.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, NAN, NAN, NAN,
                           takeoff_alt(fc.flavour, fc.home[2], 3.0)) == ACCEPTED
    await rig.wait(lambda: rig.comp("position").get("z", 0) > 2.7, 15)
    if hold:
        assert await p.command(mavlink.MAV_CMD_DO_SET_MODE, CUSTOM, COPTER_MODES["LOITER"]) == ACCEPTED
    else:  # PX4 is in AUTO.LOITER after the takeoff; OFFBOARD without a stream is refused
        await rig.wait(lambda: rig.flight().get("mode") == "AUTO.LOITER")
        assert await p.command(mavlink.MAV_CMD_DO_SET_MODE, CUSTOM, PX4_OFFBOARD, 0) == \
            mavlink.MAV_RESULT_TEMPORARILY_REJECTED
    before = rig.comp("position")
    p.stream(p.local_ned(LOCAL, VELOCITY_MASK, vel=(3.0, 0.0, 0.0)), 10)
    await asyncio.sleep(1.5)
    after = rig.comp("position")
    assert math.hypot(after["x"] - before["x"], after["y"] - before["y"]) < 0.5
    assert rig.flight()["mode"] == ("LOITER" if hold else "AUTO.LOITER")


async def test_body_frame_velocity_follows_the_heading(rig: Rig) -> None:
    await rig.guided()
    p = rig.peer
    if rig.fc.flavour == "ardupilot":  # yaw to east with CONDITION_YAW (absolute, 90 deg/s)
        assert await p.command(mavlink.MAV_CMD_CONDITION_YAW, 90, 90, 1, 0) == ACCEPTED
    else:  # PX4: the yaw field of the setpoint
        p.stream(p.local_ned(LOCAL, VELOCITY_YAW_MASK, yaw=math.pi / 2), 10)
    await rig.wait(lambda: abs(rig.comp("attitude").get("yaw", 0) - math.pi / 2) < 0.05, 8)
    p.stream(p.local_ned(BODY, VELOCITY_MASK, vel=(2.0, 0.0, 0.0)), 10)  # forward
    await rig.wait(lambda: rig.comp("velocity").get("x", 0) > 1.8)  # forward is east
    assert abs(rig.comp("velocity")["y"]) < 0.3


async def test_position_setpoint_and_goto(rig: Rig) -> None:
    await rig.guided()
    p = rig.peer
    p.stream(p.local_ned(LOCAL, POSITION_MASK, pos=(-6.0, 4.0, -5.0)), 5)  # 6 m south, 4 m east, 5 m up
    await rig.wait(lambda: math.dist((rig.comp("position").get("x", 0), rig.comp("position").get("y", 0),
                                      rig.comp("position").get("z", 0)), (4.0, -6.0, 5.0)) < 0.3, 20)
    p.stop_stream()
    if rig.fc.flavour == "px4":
        p.stream(p.local_ned(LOCAL, POSITION_MASK, pos=(-6.0, 4.0, -5.0)), 5)
    lat, lon, _ = rig.fc.geo()
    await p.send(p.codec.mav.set_position_target_global_int_encode(
        0, 1, 1, mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT, POSITION_MASK, round((lat + 5e-5) * 1e7),
        round(lon * 1e7), 5.0, 0, 0, 0, 0, 0, 0, 0, 0))
    if rig.fc.flavour == "px4":
        p.stop_stream()
        p.stream(p.codec.mav.set_position_target_global_int_encode(
            0, 1, 1, mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT, POSITION_MASK, round((lat + 5e-5) * 1e7),
            round(lon * 1e7), 5.0, 0, 0, 0, 0, 0, 0, 0, 0), 5)
    await rig.wait(lambda: abs(float(rig.ctx.component("drone1", "geo").get("lat", 0)) - (lat + 5e-5)) < 5e-6, 15)


async def test_land_disarms_and_rtl_flies_home(rig: Rig) -> None:
    await rig.guided()
    p = rig.peer
    p.stream(p.local_ned(LOCAL, POSITION_MASK, pos=(8.0, 0.0, -4.0)), 5)
    await rig.wait(lambda: rig.comp("position").get("y", 0) > 7.5, 15)
    p.stop_stream()
    assert await p.command(mavlink.MAV_CMD_NAV_RETURN_TO_LAUNCH) == ACCEPTED
    await rig.wait(lambda: rig.flight().get("armed") is False, 40)
    pos = rig.comp("position")
    assert math.hypot(pos["x"], pos["y"]) < 0.6 and pos["z"] < 0.05
    assert rig.flight()["mode"] == ("RTL" if rig.fc.flavour == "ardupilot" else "AUTO.RTL")
    # land from the air, elsewhere
    await rig.guided()
    p.stop_stream()
    assert await p.command(mavlink.MAV_CMD_NAV_LAND) == ACCEPTED
    await rig.wait(lambda: rig.flight().get("armed") is False, 20)
    assert rig.comp("position")["z"] < 0.05


async def test_two_battery_packs_with_unknown_sentinels(rig: Rig) -> None:
    await rig.wait(lambda: rig.ctx.component("drone1", "battery_1") != {} and rig.ctx.component("drone1", "battery"))
    b0 = rig.ctx.component("drone1", "battery")
    b1 = rig.ctx.component("drone1", "battery_1")
    assert b0["unknown"] == "" and abs(float(b0["voltage"]) - 12.6) < 0.02 and b0["level"] == 1.0
    assert b0["temperature"] == 25.0
    assert b1["unknown"] == "current,level,temperature"  # MAVLink's -1, -1 and INT16_MAX
    assert "level" not in b1 and "current" not in b1 and "temperature" not in b1  # never zero
    assert abs(float(b1["voltage"]) - 12.6) < 0.02
    assert rig.drv.details()["battery_packs"] == [0, 1]
    # each pack is its own record: pack 0's updates never carry pack 1's fields and vice versa
    assert all("level" not in u.values for u in rig.ctx.updates if u.component == "battery_1")
    # SYS_STATUS stops feeding `battery` once BATTERY_STATUS id 0 is heard: one source
    assert not any("unknown" not in u.values for u in rig.ctx.updates if u.component == "battery")


async def test_rate_counters_cover_every_message_type(rig: Rig) -> None:
    await asyncio.sleep(2.5)
    msgs = rig.drv.details()["messages"]
    for t in ("HEARTBEAT", "GLOBAL_POSITION_INT", "LOCAL_POSITION_NED", "ATTITUDE", "SYS_STATUS",
              "BATTERY_STATUS", "VFR_HUD", "COMMAND_ACK"):
        assert msgs[t]["count"] > 0, t
    assert 14 < msgs["ATTITUDE"]["rate_hz"] < 26  # 20 Hz asked
    assert 28 < msgs["BATTERY_STATUS"]["rate_hz"] < 52  # two packs at 20 Hz
    assert 10 < msgs["HEARTBEAT"]["rate_hz"] < 20  # three components at 5 Hz


async def test_gimbal_heartbeats_do_not_keep_a_dead_autopilot_alive(rig: Rig) -> None:
    rig.fc.mute_autopilot = True
    err = await asyncio.wait_for(rig.drv.wait_failed(), 5)
    assert isinstance(err, DriverError) and err.cause == "heartbeat lost"
    assert rig.drv.details()["components"]["154"]["age_s"] < 0.5  # the gimbal was still talking


async def test_bad_setpoints_and_commands_are_refused_and_counted(rig: Rig) -> None:
    await rig.guided()
    p, fc = rig.peer, rig.fc
    p.stop_stream()
    n = fc.refused_setpoints
    await p.send(p.local_ned(LOCAL, 0b0000_1101_1100_0110))  # half a position: refused
    await p.send(p.local_ned(mavlink.MAV_FRAME_GLOBAL, VELOCITY_MASK))  # not a local frame
    await p.send(p.local_ned(LOCAL, 0b0000_1100_0011_1111))  # acceleration only
    await rig.wait(lambda: fc.refused_setpoints == n + 3, 3)
    assert await p.command(42_424) == mavlink.MAV_RESULT_UNSUPPORTED
    assert await p.command(mavlink.MAV_CMD_DO_SET_MODE, CUSTOM, 77) == mavlink.MAV_RESULT_DENIED
    assert await p.command(mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 0) == mavlink.MAV_RESULT_DENIED  # in the air
    assert await p.command(mavlink.MAV_CMD_DO_SET_MODE, CUSTOM, NAN) == mavlink.MAV_RESULT_DENIED  # unusable
    assert fc.malformed == 1
    ignored = fc.ignored
    await p.send(p.codec.mav.command_long_encode(1, 154, mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 0, 0, 21196,
                                                 0, 0, 0, 0, 0))  # for the gimbal: not the autopilot's
    await rig.wait(lambda: fc.ignored == ignored + 1, 3)
    assert fc.state.armed


async def test_px4_offboard_needs_a_stream_and_yaw_command_is_ardupilot_only() -> None:
    fc = SimFlightController(flavour="px4", rate_hz=20, heartbeat_hz=5)
    await fc.start()
    peer = await GcsPeer(fc.add_port()).open()
    try:
        assert await peer.command(mavlink.MAV_CMD_DO_SET_MODE, CUSTOM, PX4_OFFBOARD, 0) == \
            mavlink.MAV_RESULT_TEMPORARILY_REJECTED
        assert await peer.command(mavlink.MAV_CMD_CONDITION_YAW, 90, 30, 1, 0) == mavlink.MAV_RESULT_UNSUPPORTED
        peer.stream(peer.local_ned(LOCAL, VELOCITY_MASK), 10)
        await asyncio.sleep(0.3)
        assert await peer.command(mavlink.MAV_CMD_DO_SET_MODE, CUSTOM, PX4_OFFBOARD << 16) == ACCEPTED  # encoded
        assert fc.state.mode == "OFFBOARD"
        hb = None
        for _ in range(50):
            hb = peer.last("HEARTBEAT")
            if hb is not None and hb.custom_mode == PX4_OFFBOARD << 16:
                break
            await asyncio.sleep(0.05)
        assert hb is not None and hb.autopilot == mavlink.MAV_AUTOPILOT_PX4 and hb.custom_mode == 6 << 16
        assert await peer.command(mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 1) == ACCEPTED
        # PX4 takeoff altitude is AMSL
        assert await peer.command(mavlink.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, NAN, NAN, NAN, fc.home[2] + 4.0) == ACCEPTED
        assert fc.state.mode == "AUTO.TAKEOFF"
        for _ in range(200):
            if fc.state.mode == "AUTO.LOITER":
                break
            await asyncio.sleep(0.05)
        assert fc.state.mode == "AUTO.LOITER" and abs(fc.state.up - 4.0) < 0.3
    finally:
        await peer.close()
        await fc.stop()


# ----- dynamics (the emulator's own step, no I/O) ---------------------------------------------------
def _flying(flavour: str = "ardupilot", **kw: object) -> SimFlightController:
    fc = SimFlightController(flavour=flavour, **kw)  # type: ignore[arg-type]
    fc.state.armed = True
    fc.state.mode = "GUIDED" if flavour == "ardupilot" else "OFFBOARD"
    fc.state.body.up = 10.0
    return fc


def _velocity(fc: SimFlightController, vn: float, ve: float, t: float) -> None:
    from drivers.serial.sim_fc import Setpoint

    fc.state.setpoint = Setpoint(t, VELOCITY_MASK, None, (vn, ve, 0.0))
    fc.state.last_setpoint = t


def test_acceleration_and_speed_limits() -> None:
    fc = _flying()
    lim = fc.limits
    _velocity(fc, 30.0, 0.0, 0.0)  # far over the speed limit
    speeds = []
    for i in range(100):
        _velocity(fc, 30.0, 0.0, i * 0.1)
        fc.step(0.1, i * 0.1)
        speeds.append(fc.state.body.vn)
    gains = [b - a for a, b in zip(speeds, speeds[1:], strict=False)]
    assert max(gains) <= lim.max_accel_h * 0.1 + 1e-9  # never more than the acceleration limit per step
    assert abs(speeds[-1] - lim.max_speed_h) < 0.6 and max(speeds) <= lim.max_speed_h + 1e-6
    assert fc.state.body.pitch < -0.1  # nose down while it works against the drag


def test_wind_is_compensated_within_the_budget_and_pushes_beyond_it() -> None:
    calm, breeze, storm = _flying(), _flying(wind=(0.0, 3.0)), _flying(wind=(-12.0, 0.0))
    for i in range(200):
        for fc in (calm, breeze, storm):
            _velocity(fc, 8.0, 0.0, i * 0.05)
            fc.step(0.05, i * 0.05)
    assert abs(calm.state.body.vn - 8.0) < 0.05
    assert abs(breeze.state.body.vn - 8.0) < 0.05 and abs(breeze.state.body.ve) < 0.05  # crosswind held off
    assert abs(breeze.state.body.roll) > abs(calm.state.body.roll) + 0.05  # by leaning into it
    assert storm.state.body.vn < 6.0  # a 12 m/s headwind needs more than the 3 m/s2 there is


def test_battery_drains_with_load() -> None:
    idle, hover, dash = _flying(), _flying(), _flying()
    idle.state.armed = False
    idle.state.body.up = 0.0
    for i in range(600):  # 60 s
        _velocity(hover, 0.0, 0.0, i * 0.1)
        _velocity(dash, 10.0, 0.0, i * 0.1)
        for fc in (idle, hover, dash):
            fc.step(0.1, i * 0.1)
    used = [fc.packs[0].used_ah for fc in (idle, hover, dash)]
    assert used[0] < used[1] < used[2]
    assert abs(used[1] - (0.6 + 12.0) * 60 / 3600) < 0.01  # hover: about 12.6 A for a minute
    assert hover.packs[0].voltage < idle.packs[0].voltage  # sags under current


def test_emulator_options_are_checked() -> None:
    with pytest.raises(ValueError, match="flavour"):
        SimFlightController(flavour="inav")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="components"):
        SimFlightController(components=("radar",))
    with pytest.raises(ValueError, match="pack ids"):
        SimFlightController(packs=1, unknown={1: ("remaining",)})


def test_setpoint_frames_as_ardupilot_reads_them() -> None:
    from drivers.serial.mavcodec import MavCodec

    fc = _flying()
    b = fc.state.body
    b.north, b.east, b.yaw = 10.0, 20.0, math.pi / 2  # facing east
    g = MavCodec(250, 191)

    def sp(frame: int, mask: int, pos: tuple[float, float, float] = (0, 0, 0),
           vel: tuple[float, float, float] = (0, 0, 0)) -> tuple[object, object]:
        fc.handle(g.mav.set_position_target_local_ned_encode(0, 1, 1, frame, mask, *pos, *vel, 0, 0, 0, 0, 0))
        assert fc.state.setpoint is not None
        return fc.state.setpoint.pos, fc.state.setpoint.vel

    assert sp(LOCAL, POSITION_MASK, pos=(1.0, 2.0, -3.0))[0] == (1.0, 2.0, 3.0)  # from home, NED -> up
    pos, _ = sp(mavlink.MAV_FRAME_LOCAL_OFFSET_NED, POSITION_MASK, pos=(1.0, 2.0, -3.0))
    assert pos == pytest.approx((11.0, 22.0, 13.0))  # from where it is
    pos, _ = sp(mavlink.MAV_FRAME_BODY_OFFSET_NED, POSITION_MASK, pos=(5.0, 1.0, 0.0))  # 5 ahead, 1 right
    assert pos == pytest.approx((10.0 - 1.0, 20.0 + 5.0, 10.0))  # facing east: ahead = east, right = south
    pos, _ = sp(mavlink.MAV_FRAME_BODY_NED, POSITION_MASK, pos=(1.0, 2.0, -3.0))
    assert pos == (1.0, 2.0, 3.0)  # positions as LOCAL_NED
    _, vel = sp(mavlink.MAV_FRAME_BODY_NED, VELOCITY_MASK, vel=(2.0, 0.0, 0.0))
    assert vel == pytest.approx((0.0, 2.0, 0.0))  # forward = east
    _, vel = sp(LOCAL, VELOCITY_MASK, vel=(2.0, 0.0, -1.0))
    assert vel == (2.0, 0.0, 1.0)


def test_decoder_locks_the_first_autopilot_and_reads_sentinels() -> None:
    from drivers.serial.mavcodec import MavCodec
    from drivers.serial.mavtelemetry import TelemetryDecoder

    def via(comp: int, msg_fn: object) -> object:
        codec = MavCodec(1, comp)
        raw = codec.encode(msg_fn(codec.mav))  # type: ignore[operator]
        return MavCodec(255, 190).feed(raw)[0]

    dec = TelemetryDecoder(target_component=0)
    gimbal = via(154, lambda m: m.heartbeat_encode(mavlink.MAV_TYPE_GIMBAL, mavlink.MAV_AUTOPILOT_INVALID, 0, 0, 4))
    assert dec.decode(gimbal) == [] and dec.autopilot_component is None
    ap = via(1, lambda m: m.heartbeat_encode(mavlink.MAV_TYPE_QUADROTOR, mavlink.MAV_AUTOPILOT_PX4, 129,
                                             6 << 16, 4))
    assert dec.decode(ap) == [("flight", {"armed": True, "mode": "OFFBOARD", "system_status": "ACTIVE"})]
    other = via(2, lambda m: m.heartbeat_encode(mavlink.MAV_TYPE_QUADROTOR, mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA,
                                                0, 0, 3))
    assert dec.decode(other) == [] and dec.autopilot_component == 1  # locked in
    nan_att = via(1, lambda m: m.attitude_encode(0, math.nan, 0.0, 0.0, 0, 0, 0))
    assert dec.decode(nan_att) == [] and dec.unknown_values == 1
    sys_status = via(1, lambda m: m.sys_status_encode(0, 0, 0, 0, 65535, -1, -1, 0, 0, 0, 0, 0, 0))
    assert dec.decode(sys_status) == [("battery", {"unknown": "voltage,current,level"})]
    cells = [3700, 3700, 3700] + [65535] * 7
    smart = via(mavlink.MAV_COMP_ID_BATTERY, lambda m: m.battery_status_encode(0, 0, 0, 2150, cells, 150, -1, -1, 80))
    assert dec.decode(smart) == [("battery", {"voltage": 11.1, "current": 1.5, "level": 0.8, "temperature": 21.5,
                                              "unknown": ""})]
    assert dec.decode(sys_status) == []  # BATTERY_STATUS id 0 is now the one source of `battery`
    from_gimbal = via(154, lambda m: m.battery_status_encode(3, 0, 0, 2150, cells, 150, -1, -1, 80))
    assert dec.decode(from_gimbal) == []
    assert dec.rates.counts == {"HEARTBEAT": 3, "ATTITUDE": 1, "SYS_STATUS": 2, "BATTERY_STATUS": 2}


async def test_the_drivers_own_commands_fly_the_emulator(rig: Rig) -> None:
    """The MAVLink driver's command verbs (drivers/serial/mavcommands.py) against the emulator,
    in both flavours: launch, a velocity command that moves the vehicle, hold, land."""
    ctx, fc = rig.ctx, rig.fc

    async def cmd(verb: str, **args: object) -> dict[str, object]:
        ack = await ctx.command("drone1", verb, args, timeout=10)
        assert ack["ok"], (verb, ack)
        return ack

    await rig.wait(lambda: rig.flight() != {} and rig.ctx.component("drone1", "geo") != {})
    if fc.flavour == "ardupilot":
        await cmd("set_mode", mode="GUIDED")
    await cmd("arm")
    await cmd("takeoff", alt=3)
    await rig.wait(lambda: rig.comp("position").get("z", 0) > 2.7, 15)
    if fc.flavour == "px4":  # the driver streams a hold first, as PX4 needs
        await rig.wait(lambda: rig.flight().get("mode") == "AUTO.LOITER")
        await cmd("set_mode", mode="OFFBOARD")
    start = rig.comp("position")
    await cmd("velocity", x=1.5, y=0.0, z=0.0)  # east, local ENU
    await rig.wait(lambda: rig.comp("velocity").get("x", 0) > 1.3, 10)
    assert rig.flight()["mode"] == ("GUIDED" if fc.flavour == "ardupilot" else "OFFBOARD")
    await asyncio.sleep(1.0)
    assert rig.comp("position")["x"] - start["x"] > 1.5
    await cmd("hold")
    await rig.wait(lambda: abs(rig.comp("velocity").get("x", 9)) < 0.2, 10)
    await cmd("land")
    await rig.wait(lambda: rig.flight().get("armed") is False, 20)
