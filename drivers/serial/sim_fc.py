"""An emulated flight controller speaking MAVLink 2 on a pseudo-terminal.

It behaves like a small ArduCopter: it sends HEARTBEAT at ``heartbeat_hz`` and streams
GLOBAL_POSITION_INT, LOCAL_POSITION_NED, ATTITUDE, SYS_STATUS and BATTERY_STATUS at ``rate_hz``;
it answers COMMAND_LONG with COMMAND_ACK (arm/disarm, takeoff, land, RTL, set mode, set message
interval), follows SET_POSITION_TARGET_GLOBAL_INT in GUIDED mode, and moves with simple
kinematics (climb ``CLIMB_MPS``, cruise ``CRUISE_MPS``, descend ``DESCEND_MPS``; RTL flies home
and lands; landing disarms). It records the GCS heartbeats it receives.

Like a UART, it never blocks: bytes the reader does not take are buffered up to
``OUT_BUFFER_MAX`` bytes, after which whole messages are dropped and counted in ``dropped``.

Example
    fc = SimFlightController(rate_hz=20)
    port = await fc.start()          # "/dev/pts/N": give it to the MAVLink driver
    fc.inject_garbage(b"\\x00junk")  # fault: noise on the line
    fc.disconnect()                  # fault: the device disappears
    await fc.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from drivers.serial.link import link_pty, open_pty
from drivers.serial.mavcodec import COPTER_MODE_NAMES, COPTER_MODES, MavCodec, mavlink
from edge.tasks import cancel_and_wait

log = logging.getLogger("edge.drivers.sim_fc")

M_PER_DEG = 111_319.49  # metres per degree of latitude (spherical earth)
CLIMB_MPS = 2.5
DESCEND_MPS = 1.5
CRUISE_MPS = 5.0
ARRIVED_M = 0.5  # metres: close enough to a target
OUT_BUFFER_MAX = 32 * 1024  # bytes queued for a slow reader before messages are dropped
DEFAULT_HOME = (47.397742, 8.545594, 488.0)  # lat, lon (deg), alt (m AMSL)
BATTERY_FULL_V = 12.6
BATTERY_EMPTY_V = 10.5
BATTERY_CAPACITY_AH = 5.0
HOVER_CURRENT_A = 12.0
IDLE_CURRENT_A = 0.6


@dataclass
class FCState:
    armed: bool = False
    mode: str = "STABILIZE"
    north: float = 0.0  # metres from home
    east: float = 0.0
    up: float = 0.0  # metres above home
    vn: float = 0.0
    ve: float = 0.0
    vu: float = 0.0
    yaw: float = 0.0  # rad, clockwise from north
    roll: float = 0.0
    pitch: float = 0.0
    target: tuple[float, float, float] | None = None  # north, east, up
    used_ah: float = 0.0
    current: float = IDLE_CURRENT_A
    commands: list[str] = field(default_factory=list)


class SimFlightController:
    def __init__(self, *, rate_hz: float = 10.0, heartbeat_hz: float = 1.0,
                 home: tuple[float, float, float] = DEFAULT_HOME, system_id: int = 1,
                 component_id: int = 1, prearm_ok: bool = True) -> None:
        self.rate_hz = rate_hz
        self.heartbeat_hz = heartbeat_hz
        self.home = home
        self.prearm_ok = prearm_ok
        self.codec = MavCodec(system_id, component_id)
        self.state = FCState()
        self.port = ""
        self.gcs_heartbeats = 0
        self.dropped = 0
        self.sent = 0
        self.max_out_buffer = 0
        self._master = -1
        self._slave = -1
        self._out = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = time.monotonic()

    # ----- lifecycle -------------------------------------------------------------------------------
    async def start(self, link: str | None = None) -> str:
        """Create the pty and start streaming; returns the device path for the driver (``link``,
        a symlink to the pty kept stable across restarts, if given)."""
        self._master, self._slave, self.port = open_pty()
        if link is not None:
            link_pty(self.port, link)
            self.port = link
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._master, self._on_readable)
        self._t0 = time.monotonic()
        self._task = self._loop.create_task(self._stream(), name="sim_fc")
        log.info("emulated flight controller on %s", self.port)
        return self.port

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self.disconnect()
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1

    def disconnect(self) -> None:
        """Close the device side: the driver's port reads fail from now on (unplugged)."""
        if self._master >= 0 and self._loop is not None:
            self._loop.remove_reader(self._master)
            self._loop.remove_writer(self._master)
            os.close(self._master)
            self._master = -1
        if self._slave >= 0:  # the last open slave fd must go too, or reads would just block
            os.close(self._slave)
            self._slave = -1
        if self._task is not None:
            self._task.cancel()

    def inject_garbage(self, data: bytes) -> None:
        """Put raw bytes on the line between messages (noise, a wrong baud rate...)."""
        self._write(data, force=True)

    # ----- geometry ---------------------------------------------------------------------------------
    def geo(self) -> tuple[float, float, float]:
        lat0, lon0, alt0 = self.home
        s = self.state
        lat = lat0 + s.north / M_PER_DEG
        lon = lon0 + s.east / (M_PER_DEG * math.cos(math.radians(lat0)))
        return lat, lon, alt0 + s.up

    def _local(self, lat: float, lon: float) -> tuple[float, float]:
        lat0, lon0, _ = self.home
        return (lat - lat0) * M_PER_DEG, (lon - lon0) * M_PER_DEG * math.cos(math.radians(lat0))

    # ----- I/O --------------------------------------------------------------------------------------
    def _write(self, data: bytes, *, force: bool = False) -> None:
        if self._master < 0:
            return
        if not force and len(self._out) + len(data) > OUT_BUFFER_MAX:
            self.dropped += 1
            return
        self._out += data
        self.max_out_buffer = max(self.max_out_buffer, len(self._out))
        self._flush()

    def _flush(self) -> None:
        if self._master < 0 or not self._out:
            return
        try:
            n = os.write(self._master, self._out)
            del self._out[:n]
        except BlockingIOError:
            pass
        except OSError:
            return
        assert self._loop is not None
        if self._out:
            self._loop.add_writer(self._master, self._flush)
        else:
            self._loop.remove_writer(self._master)

    def send(self, msg: Any) -> None:
        self.sent += 1
        self._write(self.codec.encode(msg))

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: no slave side open; stop polling instead of spinning
            if self._loop is not None and self._master >= 0:
                self._loop.remove_reader(self._master)
            return
        for msg in self.codec.feed(data):
            self._handle(msg)

    # ----- protocol --------------------------------------------------------------------------------
    def _handle(self, msg: Any) -> None:
        t = msg.get_type()
        if t == "HEARTBEAT":
            self.gcs_heartbeats += 1
        elif t == "COMMAND_LONG":
            result = self._command(msg)
            self.send(self.codec.mav.command_ack_encode(msg.command, result))
        elif t == "SET_POSITION_TARGET_GLOBAL_INT":
            s = self.state
            if s.armed and s.mode == "GUIDED":
                n, e = self._local(msg.lat_int / 1e7, msg.lon_int / 1e7)
                s.target = (n, e, float(msg.alt))
                s.commands.append("goto")

    def _command(self, msg: Any) -> int:
        s = self.state
        c = msg.command
        s.commands.append(str(c))
        accepted: int = mavlink.MAV_RESULT_ACCEPTED
        failed: int = mavlink.MAV_RESULT_FAILED
        denied: int = mavlink.MAV_RESULT_DENIED
        if c == mavlink.MAV_CMD_COMPONENT_ARM_DISARM:
            if msg.param1 >= 0.5:
                if not self.prearm_ok:
                    return failed
                s.armed = True
            else:
                if s.up > ARRIVED_M and msg.param2 != 21196:  # in the air, not forced
                    return denied
                s.armed = False
            return accepted
        if c == mavlink.MAV_CMD_NAV_TAKEOFF:
            if not s.armed or s.mode != "GUIDED":
                return failed
            s.target = (s.north, s.east, max(1.0, msg.param7))
            return accepted
        if c == mavlink.MAV_CMD_NAV_RETURN_TO_LAUNCH:
            s.mode = "RTL"
            return accepted
        if c == mavlink.MAV_CMD_NAV_LAND:
            s.mode = "LAND"
            return accepted
        if c == mavlink.MAV_CMD_DO_SET_MODE:
            name = COPTER_MODE_NAMES.get(int(msg.param2))
            if name is None:
                return denied
            s.mode = name
            return accepted
        if c == mavlink.MAV_CMD_SET_MESSAGE_INTERVAL:
            return accepted
        return int(mavlink.MAV_RESULT_UNSUPPORTED)

    # ----- simulation ------------------------------------------------------------------------------
    def step(self, dt: float) -> None:
        s = self.state
        if not s.armed:
            s.vn = s.ve = s.vu = 0.0
            s.current = IDLE_CURRENT_A
            return
        target = s.target
        if s.mode == "RTL":
            target = (0.0, 0.0, max(s.up, 10.0)) if math.hypot(s.north, s.east) > ARRIVED_M else None
            if target is None:
                s.mode = "LAND"
        if s.mode == "LAND":
            target = (s.north, s.east, 0.0)
        vn = ve = vu = 0.0
        if target is not None and s.mode in ("GUIDED", "RTL", "LAND", "AUTO"):
            dn, de, du = target[0] - s.north, target[1] - s.east, target[2] - s.up
            dist = math.hypot(dn, de)
            if dist > 1e-6:
                speed = min(CRUISE_MPS, dist / dt)
                vn, ve = dn / dist * speed, de / dist * speed
                s.yaw = math.atan2(de, dn)
            rate = CLIMB_MPS if du > 0 else DESCEND_MPS
            vu = max(-rate, min(rate, du / dt))
        s.vn, s.ve, s.vu = vn, ve, vu
        s.north += vn * dt
        s.east += ve * dt
        s.up = max(0.0, s.up + vu * dt)
        s.pitch = -0.03 * math.hypot(vn, ve)  # nose down to fly forward
        s.roll = 0.0
        s.current = HOVER_CURRENT_A if s.up > 0.05 or vu > 0 else IDLE_CURRENT_A
        if s.mode == "LAND" and s.up <= 0.01:
            s.armed = False
            s.target = None
        s.used_ah += s.current * dt / 3600.0

    def battery(self) -> tuple[float, float, int]:
        """``(volts, amps, percent remaining)``."""
        frac = max(0.0, 1.0 - self.state.used_ah / BATTERY_CAPACITY_AH)
        volts = BATTERY_EMPTY_V + (BATTERY_FULL_V - BATTERY_EMPTY_V) * frac
        return volts, self.state.current, round(frac * 100)

    def _telemetry(self) -> None:
        m = self.codec.mav
        s = self.state
        boot_ms = int((time.monotonic() - self._t0) * 1000) & 0xFFFFFFFF
        lat, lon, alt = self.geo()
        self.send(m.global_position_int_encode(
            boot_ms, round(lat * 1e7), round(lon * 1e7), round(alt * 1000), round(s.up * 1000),
            round(s.vn * 100), round(s.ve * 100), round(-s.vu * 100),
            round(math.degrees(s.yaw) % 360 * 100)))
        self.send(m.local_position_ned_encode(boot_ms, s.north, s.east, -s.up, s.vn, s.ve, -s.vu))
        self.send(m.attitude_encode(boot_ms, s.roll, s.pitch, s.yaw, 0.0, 0.0, 0.0))
        volts, amps, pct = self.battery()
        self.send(m.sys_status_encode(0, 0, 0, 500, round(volts * 1000), round(amps * 100), pct,
                                      0, 0, 0, 0, 0, 0))
        cells = [round(volts * 1000)] + [65535] * 9
        self.send(m.battery_status_encode(0, 0, 0, 32767, cells, round(amps * 100), -1, -1, pct))

    def _heartbeat(self) -> None:
        s = self.state
        base = mavlink.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED
        if s.armed:
            base |= mavlink.MAV_MODE_FLAG_SAFETY_ARMED
        status = mavlink.MAV_STATE_ACTIVE if s.armed else mavlink.MAV_STATE_STANDBY
        self.send(self.codec.mav.heartbeat_encode(
            mavlink.MAV_TYPE_QUADROTOR, mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA, base,
            COPTER_MODES[s.mode], status))

    async def _stream(self) -> None:
        period = 1.0 / self.rate_hz
        hb_period = 1.0 / self.heartbeat_hz
        next_hb = time.monotonic()
        last = time.monotonic()
        next_t = last
        while True:
            now = time.monotonic()
            self.step(now - last)
            last = now
            if now >= next_hb:
                self._heartbeat()
                next_hb += hb_period
            self._telemetry()
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:
                next_t = time.monotonic()
            await asyncio.sleep(max(0.0, delay))


def main(argv: list[str] | None = None) -> None:
    """``python -m drivers.serial.sim_fc --link /tmp/fc``: run the emulator in its own process."""
    import argparse

    p = argparse.ArgumentParser(description="Emulated MAVLink flight controller on a pty.")
    p.add_argument("--link", required=True, help="symlink path to create for the pty")
    p.add_argument("--rate-hz", type=float, default=10.0, help="telemetry ticks per second")
    p.add_argument("--heartbeat-hz", type=float, default=1.0)
    p.add_argument("--duration-s", type=float, default=0.0, help="0 = until killed")
    args = p.parse_args(argv)

    async def run() -> None:
        fc = SimFlightController(rate_hz=args.rate_hz, heartbeat_hz=args.heartbeat_hz)
        await fc.start(args.link)
        print(f"ready {fc.port}", flush=True)
        try:
            if args.duration_s > 0:
                await asyncio.sleep(args.duration_s)
            else:
                await asyncio.Event().wait()
        finally:
            print(f"sent {fc.sent} dropped {fc.dropped} max_out_buffer {fc.max_out_buffer}", flush=True)
            await fc.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
