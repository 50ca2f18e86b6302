"""MAVLink flight controller and NMEA GPS drivers against the emulators on real ptys."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from drivers.serial.mavcodec import MavCodec, mavlink
from drivers.serial.mavlink import MAVLinkDriver
from drivers.serial.nmea import NMEAGPSDriver
from drivers.serial.sim_fc import SimFlightController
from drivers.serial.sim_gps import SimGPS, sentence
from drivers.supervisor import DriverSupervisor
from drivers.testing import RecordingContext
from edge.errors import DriverError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def fc() -> AsyncIterator[SimFlightController]:
    sim = SimFlightController(rate_hz=50, heartbeat_hz=10)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def gps() -> AsyncIterator[SimGPS]:
    sim = SimGPS(rate_hz=20, position=(-33.45, -70.66, 520.3))
    await sim.start()
    yield sim
    await sim.stop()


def _fc_driver(port: str, **kw: float) -> MAVLinkDriver:
    opts = {"heartbeat_s": 0.1, "link_timeout_s": 1.0, "command_timeout_s": 1.0, **kw}
    return MAVLinkDriver("fc", "drone1", port=port, **opts)  # type: ignore[arg-type]


async def test_mavlink_telemetry_into_components(fc: SimFlightController) -> None:
    ctx = RecordingContext("dev1")
    drv = _fc_driver(fc.port)
    await drv.start(ctx)
    try:
        await ctx.wait_for(lambda: all(ctx.component("drone1", c) for c in
                                       ("geo", "velocity", "attitude", "battery", "flight", "position")))
        geo = ctx.component("drone1", "geo")
        assert abs(float(geo["lat"]) - fc.home[0]) < 1e-6 and abs(float(geo["alt"]) - fc.home[2]) < 0.01
        assert ctx.component("drone1", "flight") == {"armed": False, "mode": "STABILIZE",
                                                     "system_status": "STANDBY"}
        assert abs(float(ctx.component("drone1", "battery")["voltage"]) - 12.6) < 0.01
        assert ctx.published_on("edge.dev1.tele.drone1.geo")
        await ctx.wait_for(lambda: fc.gcs_heartbeats >= 2)  # heartbeats both ways
    finally:
        await drv.stop()


async def test_mavlink_commands_fly_the_emulated_drone(fc: SimFlightController) -> None:
    ctx = RecordingContext("dev1")
    drv = _fc_driver(fc.port)
    await drv.start(ctx)
    try:
        ack = await ctx.command("drone1", "takeoff", {"alt": 5})
        assert ack["ok"] is False and ack["command"] == "MAV_CMD_NAV_TAKEOFF" and ack["result"] == "FAILED"  # not armed
        assert ack["error"] == "the autopilot answered FAILED to MAV_CMD_NAV_TAKEOFF"
        assert (await ctx.command("drone1", "set_mode", {"mode": "guided"}))["ok"]
        assert (await ctx.command("drone1", "arm", {}))["result"] == "ACCEPTED"
        assert (await ctx.command("drone1", "takeoff", {"alt": 3}))["ok"]
        await ctx.wait_for(lambda: float(ctx.component("drone1", "position").get("z", 0)) > 2.9)
        assert ctx.component("drone1", "flight")["armed"] is True
        lat, lon, _ = fc.geo()
        ack = await ctx.command("drone1", "goto", {"lat": lat + 0.00005, "lon": lon, "alt": 3})
        assert ack["ok"] is True and ack["command"] == "SET_POSITION_TARGET_GLOBAL_INT"
        assert ack["frame"] == "MAV_FRAME_GLOBAL_RELATIVE_ALT_INT" and ack["result"] in ("TRACKING", "UNCONFIRMED")
        await ctx.wait_for(lambda: float(ctx.component("drone1", "velocity").get("y", 0)) > 1.0)
        await ctx.wait_for(lambda: abs(float(ctx.component("drone1", "geo")["lat"]) - (lat + 0.00005)) < 5e-6)
        assert (await ctx.command("drone1", "disarm", {}))["result"] == "DENIED"  # in the air
        assert (await ctx.command("drone1", "land", {}))["ok"]
        await ctx.wait_for(lambda: ctx.component("drone1", "flight")["armed"] is False, timeout=10)
        assert ctx.component("drone1", "flight")["mode"] == "LAND"
        bad = await ctx.command("drone1", "set_mode", {"mode": "warp"})
        assert bad["ok"] is False and "unknown mode" in bad["error"]
    finally:
        await drv.stop()


async def test_mavlink_command_ack_timeout(fc: SimFlightController) -> None:
    ctx = RecordingContext("dev1")
    drv = _fc_driver(fc.port, command_timeout_s=0.2)
    await drv.start(ctx)
    try:
        fc.codec.mav.srcSystem = 7  # acks now come from another system: ignored by the driver
        ack = await ctx.command("drone1", "rtl", {})
        assert ack["ok"] is False and "no COMMAND_ACK" in ack["error"]
    finally:
        await drv.stop()


async def test_mavlink_garbage_is_counted_and_dropped(fc: SimFlightController) -> None:
    ctx = RecordingContext()
    drv = _fc_driver(fc.port)
    await drv.start(ctx)
    try:
        n0 = drv.messages
        for _ in range(20):
            fc.inject_garbage(os.urandom(64) + b"\xfd\x09\x00garbage")
            await asyncio.sleep(0.01)
        await ctx.wait_for(lambda: drv.messages > n0 + 100)
        assert drv.bad_bytes >= 20 * 64 * 0.5
        h = drv.health()
        assert h.state == "running" and h.errors >= 1 and "garbage" in (h.last_error or "")
    finally:
        await drv.stop()


def test_codec_resyncs_after_false_start() -> None:
    a, b = MavCodec(1, 1), MavCodec(255, 190)
    frame = a.encode(a.mav.heartbeat_encode(2, 3, 0, 0, 4, 3))
    msgs = b.feed(b"\xfd\x05\x00\x00" + frame + frame)  # a fake header claiming 5 bytes
    assert [m.get_type() for m in msgs] == ["HEARTBEAT", "HEARTBEAT"]
    assert b.bad_bytes == 4


async def test_mavlink_port_missing_at_startup() -> None:
    drv = _fc_driver("/dev/ttyNOPE9")
    with pytest.raises(DriverError) as ei:
        await drv.start(RecordingContext())
    assert ei.value.device == "/dev/ttyNOPE9" and "No such file" in (ei.value.cause or "")


async def test_mavlink_silent_port_fails_start() -> None:
    master, slave = os.openpty()
    try:
        drv = _fc_driver(os.ttyname(slave), link_timeout_s=0.3)
        with pytest.raises(DriverError, match="no MAVLink heartbeat"):
            await drv.start(RecordingContext())
    finally:
        os.close(master)
        os.close(slave)


async def test_mavlink_device_disappears_and_supervisor_recovers() -> None:
    sim = SimFlightController(rate_hz=50, heartbeat_hz=10)
    port = await sim.start()
    ctx = RecordingContext()
    drv = _fc_driver(port)
    sup = DriverSupervisor(ctx, [drv], backoff_initial_s=0.05)
    await sup.start()
    try:
        assert drv.state == "running"
        sim.disconnect()
        await ctx.wait_for(lambda: sup.status()[0].failure_cause is not None)
        st = sup.status()[0]
        assert st.failure_device == port and st.health.state in ("failed", "backoff", "starting")
        await sim.stop()
        sim2 = SimFlightController(rate_hz=50, heartbeat_hz=10)
        port2 = await sim2.start()
        drv.port = port2  # the device came back (on a new pty path)
        await ctx.wait_for(lambda: drv.state == "running" and drv.restarts >= 1, timeout=10)
        await sim2.stop()
    finally:
        await sup.stop()


async def test_gps_gga_rmc_into_geo_and_gps(gps: SimGPS) -> None:
    ctx = RecordingContext("dev1")
    drv = NMEAGPSDriver("gps", "drone1", port=gps.port, velocity=True)
    await drv.start(ctx)
    try:
        await ctx.wait_for(lambda: bool(ctx.component("drone1", "geo")))
        geo = ctx.component("drone1", "geo")
        assert abs(float(geo["lat"]) + 33.45) < 1e-6 and abs(float(geo["lon"]) + 70.66) < 1e-6
        assert geo["alt"] == 520.3
        assert ctx.component("drone1", "gps") == {"fix_quality": 1, "satellites": 12, "hdop": 0.8}
        gps.speed_mps, gps.course_deg = 10.0, 90.0
        await ctx.wait_for(lambda: float(ctx.component("drone1", "velocity").get("x", 0)) > 9.9)
        gps.fix_quality = 0
        await ctx.wait_for(lambda: ctx.component("drone1", "gps")["fix_quality"] == 0)
    finally:
        await drv.stop()


async def test_gps_garbage_lines_dropped_parser_continues(gps: SimGPS) -> None:
    ctx = RecordingContext()
    drv = NMEAGPSDriver("gps", "drone1", port=gps.port)
    await drv.start(ctx)
    try:
        await ctx.wait_for(lambda: drv.sentences > 2)
        good = sentence("GPGGA,120000.00,3330.000000,S,07040.000000,W,1,05,1.0,10.0,M,0,M,,")
        gps.inject_garbage(b"\x00\xff\xfe binary noise\r\n$GPGGA,1,2,3*00\r\n" + b"x" * 300 + b"\n")
        gps.inject_garbage(b"\x13\x37" + good)  # noise glued before a valid sentence
        n = drv.sentences
        await ctx.wait_for(lambda: drv.bad_lines >= 4 and drv.sentences > n + 4)
        assert drv.health().state == "running"
    finally:
        await drv.stop()


async def test_gps_silence_fails_driver(gps: SimGPS) -> None:
    drv = NMEAGPSDriver("gps", "drone1", port=gps.port, timeout_s=0.5)
    await drv.start(RecordingContext())
    gps.rate_hz = 0.01  # next sentence in 100 s
    await asyncio.sleep(0.1)
    if gps._task is not None:
        gps._task.cancel()
    err = await asyncio.wait_for(drv.wait_failed(), 3)
    assert err.cause == "no data" and err.device == gps.port
    await drv.stop()


async def test_gps_disappears() -> None:
    sim = SimGPS(rate_hz=20)
    port = await sim.start()
    drv = NMEAGPSDriver("gps", "drone1", port=port)
    await drv.start(RecordingContext())
    for _ in range(200):  # reading (a fixed sleep raced the open under load)
        if drv.sentences:
            break
        await asyncio.sleep(0.02)
    sim.disconnect()
    err = await asyncio.wait_for(drv.wait_failed(), 3)
    assert err.device == port and "SerialException" in (err.cause or "")
    await drv.stop()
    assert mavlink.MAV_RESULT_ACCEPTED == 0


async def test_mavlink_heartbeat_lost_fails_driver(fc: SimFlightController) -> None:
    drv = _fc_driver(fc.port, link_timeout_s=0.6)
    await drv.start(RecordingContext())
    assert fc._task is not None
    fc._task.cancel()  # the FC goes quiet but the port stays open
    err = await asyncio.wait_for(drv.wait_failed(), 3)
    assert err.cause == "heartbeat lost" and err.device == fc.port
    await drv.stop()
