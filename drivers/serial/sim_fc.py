"""An emulated flight controller speaking MAVLink 2 on a pseudo-terminal, ArduPilot or PX4 flavour.

It flies: setpoints and commands go through the flavour's mode rules into the vehicle dynamics of
:mod:`drivers.serial.sim_vehicle` (acceleration and speed limits, optional wind), the battery
packs drain with the load, and the telemetry reports what the vehicle does.

Key components
- :class:`SimFlightController`: the autopilot (``flavour="ardupilot"``: ArduCopter custom modes,
  HEARTBEAT.autopilot MAV_AUTOPILOT_ARDUPILOTMEGA; ``flavour="px4"``: PX4 main/sub modes,
  MAV_AUTOPILOT_PX4), optional extra components on the same system id (``components=("gimbal",
  "camera", "companion")``: HEARTBEATs from MAV_COMP_ID_GIMBAL, MAV_COMP_ID_CAMERA,
  MAV_COMP_ID_ONBOARD_COMPUTER with autopilot MAV_AUTOPILOT_INVALID), ``packs`` battery packs
  (BATTERY_STATUS id 0, 1, ...), and ``unknown`` sentinels per pack.

Accepted (all standard common.xml; anything else is counted in ``ignored``):
- HEARTBEAT (a GCS's: counted in ``gcs_heartbeats``).
- COMMAND_LONG, answered with COMMAND_ACK (MAV_RESULT): MAV_CMD_COMPONENT_ARM_DISARM (p1 1/0,
  p2 21196 forces a disarm in the air), MAV_CMD_DO_SET_MODE (p1 with
  MAV_MODE_FLAG_CUSTOM_MODE_ENABLED; ArduPilot: p2 = Copter mode number; PX4: p2 = main mode,
  p3 = sub mode, or p2 = the whole custom_mode), MAV_CMD_NAV_TAKEOFF (p7 = altitude: ArduPilot
  metres above home; PX4 metres AMSL, NaN = 2.5 m above the vehicle), MAV_CMD_NAV_LAND,
  MAV_CMD_NAV_RETURN_TO_LAUNCH, MAV_CMD_CONDITION_YAW (ArduPilot only: p1 deg, p2 deg/s, p3
  direction -1/1, p4 1 = relative; PX4 answers UNSUPPORTED), MAV_CMD_SET_MESSAGE_INTERVAL
  (p1 message id, p2 interval us, -1 off, 0 default). Other commands: UNSUPPORTED.
- SET_MODE (base_mode, custom_mode).
- SET_POSITION_TARGET_LOCAL_NED in MAV_FRAME_LOCAL_NED, LOCAL_OFFSET_NED, BODY_NED and
  BODY_OFFSET_NED, as ArduPilot reads them: LOCAL_OFFSET_NED positions are relative to the
  position at receipt; BODY_NED velocities are relative to the heading at receipt (positions as
  LOCAL_NED); BODY_OFFSET_NED positions, velocities and yaw are relative to the position and
  heading at receipt. type_mask per POSITION_TARGET_TYPEMASK: position (x, y, z all or
  none), velocity (vx, vy, vz all or none), yaw, yaw_rate; acceleration-only setpoints are
  refused (counted). SET_POSITION_TARGET_GLOBAL_INT in GLOBAL_INT (alt AMSL),
  GLOBAL_RELATIVE_ALT_INT and GLOBAL_TERRAIN_ALT_INT (treated as relative).

Mode rules
- Setpoints are flown only in GUIDED (ArduPilot) / OFFBOARD (PX4). ArduPilot ignores them in
  other modes; in GUIDED a velocity setpoint older than ``GUIDED_VELOCITY_TIMEOUT_S`` (3 s, as
  ArduCopter) becomes a stop. PX4 keeps the setpoint stream in any mode: switching to OFFBOARD
  is TEMPORARILY_REJECTED unless a setpoint arrived in the last ``OFFBOARD_STREAM_S`` (0.5 s,
  a 2 Hz stream), and in OFFBOARD a stream silent for ``OFFBOARD_LOSS_S`` (1 s, COM_OF_LOSS_T)
  falls back to AUTO.LOITER (hold; the action PX4 takes without an RC link).
- Takeoff: ArduPilot needs GUIDED, armed, on the ground (else FAILED) and holds the altitude in
  GUIDED; PX4 needs armed (else TEMPORARILY_REJECTED), switches to AUTO.TAKEOFF and then to
  AUTO.LOITER at the altitude.
- Land (LAND / AUTO.LAND) descends at ``LAND_MPS`` and disarms on touchdown (PX4 after
  ``PX4_DISARM_LAND_S``). RTL (RTL / AUTO.RTL) climbs to ``rtl_alt`` if lower, flies home,
  lands and disarms. Hold modes (LOITER, BRAKE, POSHOLD, ALT_HOLD, AUTO.LOITER, POSCTL, ...)
  hold the position where they were entered; manual modes (STABILIZE, MANUAL, ...) with no
  pilot input stop and hold altitude.
- Arming fails without ``prearm_ok`` and in LAND/RTL modes; disarming in the air is DENIED
  unless forced (a forced disarm in the air drops the vehicle).

Telemetry at ``rate_hz`` (each message's rate changeable by SET_MESSAGE_INTERVAL): HEARTBEAT
(at ``heartbeat_hz``), GLOBAL_POSITION_INT, LOCAL_POSITION_NED, ATTITUDE (with rates), VFR_HUD,
SYS_STATUS (pack 0), BATTERY_STATUS (one per pack) and, while a setpoint is being flown,
POSITION_TARGET_LOCAL_NED: the active setpoint as the autopilot tracks it (local NED, the
type_mask of what is controlled).

Like a UART, it never blocks: bytes the reader does not take are buffered up to
``OUT_BUFFER_MAX`` bytes, after which whole messages are dropped and counted in ``dropped``.

Example
    fc = SimFlightController(flavour="px4", rate_hz=20, components=("gimbal",), packs=2)
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from drivers.serial.link import link_pty, open_pty
from drivers.serial.mavcodec import (
    COPTER_MODE_NAMES,
    COPTER_MODES,
    PX4_MODES,
    MavCodec,
    mavlink,
    px4_custom_mode,
    px4_mode_name,
)
from drivers.serial.sim_vehicle import Body, Limits, Pack, Want, approach, vehicle_current, wrap_pi
from edge.tasks import cancel_and_wait

log = logging.getLogger("edge.drivers.sim_fc")

Flavour = Literal["ardupilot", "px4"]
FLAVOURS: tuple[str, ...] = ("ardupilot", "px4")

M_PER_DEG = 111_319.49  # metres per degree of latitude (spherical earth)
CRUISE_MPS = 5.0  # m/s: speed toward position targets (goto, RTL)
LAND_MPS = 1.0  # m/s descent when landing
ARRIVED_M = 0.5  # metres: close enough to a target
DEFAULT_RTL_ALT_M = 15.0  # m above home (ArduPilot RTL_ALT default)
PX4_TAKEOFF_ALT_M = 2.5  # m above the vehicle (PX4 MIS_TAKEOFF_ALT default)
PX4_DISARM_LAND_S = 2.0  # s on the ground after landing before PX4 disarms (COM_DISARM_LAND)
GUIDED_VELOCITY_TIMEOUT_S = 3.0  # s: ArduCopter stops after this without a velocity setpoint
OFFBOARD_STREAM_S = 0.5  # s: PX4 enters OFFBOARD only with a setpoint this recent (2 Hz stream)
OFFBOARD_LOSS_S = 1.0  # s: PX4 leaves OFFBOARD after this without a setpoint (COM_OF_LOSS_T)
DEFAULT_YAW_RATE_DPS = 30.0  # deg/s for CONDITION_YAW with speed 0
OUT_BUFFER_MAX = 32 * 1024  # bytes queued for a slow reader before messages are dropped
DEFAULT_HOME = (47.397742, 8.545594, 488.0)  # lat, lon (deg), alt (m AMSL)
FORCE_DISARM_MAGIC = 21196
DEFAULT_LIMITS = Limits()
BATTERY_FULL_V = 12.6  # a full 3S pack
BATTERY_EMPTY_V = 10.5

# POSITION_TARGET_TYPEMASK bits
IGNORE_POS = 0b111  # X, Y, Z
IGNORE_VEL = 0b111 << 3
IGNORE_ACC = 0b111 << 6
FORCE_SET = 1 << 9
IGNORE_YAW = 1 << 10
IGNORE_YAW_RATE = 1 << 11

LOCAL_FRAMES = (mavlink.MAV_FRAME_LOCAL_NED, mavlink.MAV_FRAME_LOCAL_OFFSET_NED,
                mavlink.MAV_FRAME_BODY_NED, mavlink.MAV_FRAME_BODY_OFFSET_NED)
GLOBAL_FRAMES = (mavlink.MAV_FRAME_GLOBAL_INT, mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT,
                 mavlink.MAV_FRAME_GLOBAL_TERRAIN_ALT_INT, mavlink.MAV_FRAME_GLOBAL,
                 mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT)

#: Extra components: name -> (component id, MAV_TYPE).
EXTRA_COMPONENTS: dict[str, tuple[int, int]] = {
    "gimbal": (mavlink.MAV_COMP_ID_GIMBAL, mavlink.MAV_TYPE_GIMBAL),
    "camera": (mavlink.MAV_COMP_ID_CAMERA, mavlink.MAV_TYPE_CAMERA),
    "companion": (mavlink.MAV_COMP_ID_ONBOARD_COMPUTER, mavlink.MAV_TYPE_ONBOARD_CONTROLLER),
}
#: Battery fields that can be configured as unknown (sent as MAVLink's sentinel).
BATTERY_UNKNOWN_FIELDS = ("voltage", "current", "remaining", "temperature", "consumed")

# What a mode does, per flavour: guided (flies setpoints), hold, rtl, land, takeoff, manual.
_ARDU_BEHAVIOUR = {"GUIDED": "guided", "RTL": "rtl", "SMART_RTL": "rtl", "LAND": "land",
                   "STABILIZE": "manual", "ACRO": "manual", "DRIFT": "manual", "SPORT": "manual",
                   "FLIP": "manual", "THROW": "manual", "GUIDED_NOGPS": "manual"}
_PX4_BEHAVIOUR = {"OFFBOARD": "guided", "AUTO.RTL": "rtl", "AUTO.LAND": "land",
                  "AUTO.PRECLAND": "land", "AUTO.TAKEOFF": "takeoff", "MANUAL": "manual",
                  "STABILIZED": "manual", "ACRO": "manual"}


@dataclass
class Setpoint:
    """The setpoint being tracked, in the local frame (north, east, up)."""

    t: float  # monotonic time received
    type_mask: int
    pos: tuple[float, float, float] | None = None
    vel: tuple[float, float, float] | None = None
    yaw: float | None = None  # rad clockwise from north
    yaw_rate: float | None = None  # rad/s
    source: str = "local"  # "local", "global", "takeoff", "yaw"


@dataclass
class FCState:
    """The autopilot's state; the vehicle's is in ``body`` (also readable as attributes)."""

    armed: bool = False
    mode: str = "STABILIZE"
    body: Body = field(default_factory=Body)
    setpoint: Setpoint | None = None
    hold: tuple[float, float, float] | None = None  # where a hold mode holds
    rtl_phase: str = ""
    yaw_goal: float | None = None  # CONDITION_YAW target (ArduPilot)
    yaw_goal_rate: float | None = None
    landed_since: float | None = None
    last_setpoint: float = -math.inf  # monotonic time of the last setpoint received (any mode)
    commands: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:  # north, east, up, vn, ... from the body
        if name in ("north", "east", "up", "vn", "ve", "vu", "yaw", "roll", "pitch", "yaw_rate"):
            return getattr(self.body, name)
        raise AttributeError(name)


class _Port:
    """One serial port of the emulator (a pty): a non-blocking writer with a bounded buffer."""

    def __init__(self, fc: SimFlightController, master: int, slave: int, path: str) -> None:
        self.fc = fc
        self.master = master
        self.slave = slave
        self.path = path
        self.codec = MavCodec(fc.system_id, fc.component_id)  # this port's parser
        self.out = bytearray()
        self.max_out = 0

    def write(self, data: bytes, *, force: bool = False) -> None:
        if self.master < 0:
            return
        if not force and len(self.out) + len(data) > OUT_BUFFER_MAX:
            self.fc.dropped += 1
            return
        self.out += data
        self.max_out = max(self.max_out, len(self.out))
        self.flush()

    def flush(self) -> None:
        if self.master < 0 or not self.out:
            return
        try:
            n = os.write(self.master, self.out)
            del self.out[:n]
        except BlockingIOError:
            pass
        except OSError:
            return
        loop = asyncio.get_running_loop()
        if self.out:
            loop.add_writer(self.master, self.flush)
        else:
            loop.remove_writer(self.master)

    def on_readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: no slave side open; stop polling instead of spinning
            if self.master >= 0:
                asyncio.get_running_loop().remove_reader(self.master)
            return
        for msg in self.codec.feed(data):
            self.fc.handle(msg, self)

    def close(self) -> None:
        loop = self.fc._loop
        if self.master >= 0 and loop is not None:
            loop.remove_reader(self.master)
            loop.remove_writer(self.master)
            os.close(self.master)
            self.master = -1
            self.fc._max_out_closed = max(self.fc._max_out_closed, self.max_out)
        if self.slave >= 0:  # the last open slave fd must go too, or reads would just block
            os.close(self.slave)
            self.slave = -1


class SimFlightController:
    def __init__(self, *, rate_hz: float = 10.0, heartbeat_hz: float = 1.0,
                 home: tuple[float, float, float] = DEFAULT_HOME, system_id: int = 1,
                 component_id: int = 1, prearm_ok: bool = True, flavour: Flavour = "ardupilot",
                 limits: Limits = DEFAULT_LIMITS, wind: tuple[float, float] = (0.0, 0.0),
                 components: Sequence[str] = (), packs: int = 1, pack_cells: int = 3,
                 pack_capacity_ah: float = 5.0,
                 unknown: Mapping[int, Sequence[str]] | None = None,
                 rtl_alt: float = DEFAULT_RTL_ALT_M) -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")
        bad = [c for c in components if c not in EXTRA_COMPONENTS]
        if bad:
            raise ValueError(f"unknown components {bad}; known: {', '.join(EXTRA_COMPONENTS)}")
        if packs < 1:
            raise ValueError("packs must be >= 1")
        for pack_id, fields in (unknown or {}).items():
            wrong = [f for f in fields if f not in BATTERY_UNKNOWN_FIELDS]
            if wrong or not 0 <= pack_id < packs:
                raise ValueError(f"unknown[{pack_id}]: pack ids 0..{packs - 1}, fields "
                                 f"{', '.join(BATTERY_UNKNOWN_FIELDS)}")
        self.flavour: Flavour = flavour
        self.rate_hz = rate_hz
        self.heartbeat_hz = heartbeat_hz
        self.home = home
        self.prearm_ok = prearm_ok
        self.limits = limits
        self.wind = wind
        self.rtl_alt = rtl_alt
        self.system_id = system_id
        self.component_id = component_id
        self.codec = MavCodec(system_id, component_id)
        self.extra = {name: MavCodec(system_id, EXTRA_COMPONENTS[name][0]) for name in components}
        self.packs = [Pack(cells=pack_cells, capacity_ah=pack_capacity_ah) for _ in range(packs)]
        self.unknown = {k: frozenset(v) for k, v in (unknown or {}).items()}
        self.state = FCState(mode="STABILIZE" if flavour == "ardupilot" else "MANUAL")
        self.port = ""
        self.gcs_heartbeats = 0
        self.ignored = 0  # messages received that it does not act on
        self.refused_setpoints = 0
        self.malformed = 0  # commands with unusable parameters (answered DENIED)
        self.mute_autopilot = False  # fault: the autopilot's HEARTBEAT stops (other components go on)
        self.dropped = 0
        self.sent = 0
        self.sent_by_type: dict[str, int] = {}
        self._max_out_closed = 0
        self.intervals: dict[int, float] = {}  # message id -> s (SET_MESSAGE_INTERVAL); <= 0 off
        self._ports: list[_Port] = []
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = time.monotonic()

    # ----- lifecycle -------------------------------------------------------------------------------
    async def start(self, link: str | None = None) -> str:
        """Create the pty and start streaming; returns the device path for the driver (``link``,
        a symlink to the pty kept stable across restarts, if given)."""
        self._loop = asyncio.get_running_loop()
        main = self._open_port(link)
        self.port = main.path
        self._t0 = time.monotonic()
        self._task = self._loop.create_task(self._stream(), name="sim_fc")
        log.info("emulated %s flight controller on %s", self.flavour, self.port)
        return self.port

    def add_port(self, link: str | None = None) -> str:
        """A second (third...) serial port, like an FC's TELEM2: it gets the same telemetry and
        takes commands; answers go to the port the command came from. Call after ``start()``."""
        if self._loop is None:
            raise RuntimeError("start() the emulator before adding ports")
        return self._open_port(link).path

    def _open_port(self, link: str | None) -> _Port:
        assert self._loop is not None
        master, slave, path = open_pty()
        if link is not None:
            link_pty(path, link)
            path = link
        port = _Port(self, master, slave, path)
        self._ports.append(port)
        self._loop.add_reader(master, port.on_readable)
        return port

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self.disconnect()

    def disconnect(self) -> None:
        """Close the device side: the driver's port reads fail from now on (unplugged)."""
        for port in self._ports:
            port.close()
        self._ports.clear()
        if self._task is not None:
            self._task.cancel()

    def inject_garbage(self, data: bytes) -> None:
        """Put raw bytes on the line between messages (noise, a wrong baud rate...)."""
        for port in self._ports:
            port.write(data, force=True)

    # ----- geometry ---------------------------------------------------------------------------------
    def geo(self) -> tuple[float, float, float]:
        """``(lat, lon, alt AMSL)`` of the vehicle."""
        lat0, lon0, alt0 = self.home
        b = self.state.body
        lat = lat0 + b.north / M_PER_DEG
        lon = lon0 + b.east / (M_PER_DEG * math.cos(math.radians(lat0)))
        return lat, lon, alt0 + b.up

    def local(self, lat: float, lon: float) -> tuple[float, float]:
        """``(north, east)`` metres from home of a global position."""
        lat0, lon0, _ = self.home
        return (lat - lat0) * M_PER_DEG, (lon - lon0) * M_PER_DEG * math.cos(math.radians(lat0))

    def pose(self) -> tuple[float, float, float, float]:
        """``(east, north, up, yaw)``: metres from home and heading (rad clockwise from north)."""
        b = self.state.body
        return b.east, b.north, b.up, b.yaw

    # ----- I/O --------------------------------------------------------------------------------------
    @property
    def max_out_buffer(self) -> int:
        return max((p.max_out for p in self._ports), default=self._max_out_closed)

    def send(self, msg: Any, codec: MavCodec | None = None, port: _Port | None = None) -> None:
        """Encode ``msg`` (as the autopilot, or as ``codec``'s component) to ``port`` or every port."""
        self.sent += 1
        t = msg.get_type()
        self.sent_by_type[t] = self.sent_by_type.get(t, 0) + 1
        data = (codec or self.codec).encode(msg)
        for p in (port,) if port is not None else self._ports:
            p.write(data)

    # ----- protocol --------------------------------------------------------------------------------
    def _for_us(self, msg: Any) -> bool:
        ts = getattr(msg, "target_system", 0)
        tc = getattr(msg, "target_component", 0)
        return ts in (0, self.system_id) and tc in (0, self.component_id)

    def handle(self, msg: Any, port: _Port | None = None) -> None:
        """Act on one received message (from ``port``; answers go back there)."""
        t = msg.get_type()
        if t == "HEARTBEAT":
            self.gcs_heartbeats += 1
            return
        if not self._for_us(msg):
            self.ignored += 1
            return
        if t == "COMMAND_LONG":
            try:
                result = self._command(msg)
            except (ValueError, OverflowError):  # NaN or out-of-range parameters
                self.malformed += 1
                result = int(mavlink.MAV_RESULT_DENIED)
            self.send(self.codec.mav.command_ack_encode(
                msg.command, result, 0, 0, msg.get_srcSystem(), msg.get_srcComponent()), port=port)
        elif t == "SET_MODE":
            result = self._set_mode(int(msg.base_mode), int(msg.custom_mode), None)
            if self.flavour == "ardupilot":  # ArduPilot acks SET_MODE with the message id
                self.send(self.codec.mav.command_ack_encode(
                    mavlink.MAVLINK_MSG_ID_SET_MODE, result, 0, 0, msg.get_srcSystem(), msg.get_srcComponent()),
                    port=port)
        elif t == "SET_POSITION_TARGET_LOCAL_NED":
            self._setpoint_local(msg)
        elif t == "SET_POSITION_TARGET_GLOBAL_INT":
            self._setpoint_global(msg)
        else:
            self.ignored += 1

    def _accepts_setpoints(self) -> bool:
        """ArduPilot takes setpoints only in GUIDED; PX4 records them in any mode (the stream)."""
        return self.flavour == "px4" or self.behaviour() == "guided"

    def _refuse(self) -> None:
        self.refused_setpoints += 1

    def _parse_mask(self, mask: int) -> tuple[bool, bool, bool, bool] | None:
        """``(use position, use velocity, use yaw, use yaw rate)``; None if not flyable."""
        pos_bits, vel_bits = mask & IGNORE_POS, mask & IGNORE_VEL
        if pos_bits not in (0, IGNORE_POS) or vel_bits not in (0, IGNORE_VEL):
            return None  # partial position or velocity: the autopilots refuse these
        use_pos, use_vel = pos_bits == 0, vel_bits == 0
        if not use_pos and not use_vel:
            return None  # acceleration/force or yaw only: not emulated
        return use_pos, use_vel, not mask & IGNORE_YAW, not mask & IGNORE_YAW_RATE

    def _setpoint_local(self, msg: Any) -> None:
        now = time.monotonic()
        parsed = self._parse_mask(msg.type_mask)
        frame = msg.coordinate_frame
        if parsed is None or frame not in LOCAL_FRAMES or not self._accepts_setpoints():
            self._refuse()
            return
        use_pos, use_vel, use_yaw, use_rate = parsed
        b = self.state.body
        body = frame in (mavlink.MAV_FRAME_BODY_NED, mavlink.MAV_FRAME_BODY_OFFSET_NED)  # velocity by heading
        offset = frame in (mavlink.MAV_FRAME_LOCAL_OFFSET_NED, mavlink.MAV_FRAME_BODY_OFFSET_NED)
        body_pos = frame == mavlink.MAV_FRAME_BODY_OFFSET_NED  # position by heading too
        c, s = math.cos(b.yaw), math.sin(b.yaw)

        def rot(x: float, y: float, turn: bool) -> tuple[float, float]:  # (fwd, right) -> (north, east)
            return (x * c - y * s, x * s + y * c) if turn else (x, y)

        pos = vel = None
        if use_pos:
            n, e = rot(msg.x, msg.y, body_pos)
            up = -msg.z
            if offset:
                n, e, up = n + b.north, e + b.east, up + b.up
            pos = (n, e, up)
        if use_vel:
            vn, ve = rot(msg.vx, msg.vy, body)
            vel = (vn, ve, -msg.vz)
        yaw = wrap_pi(msg.yaw + (b.yaw if body_pos else 0.0)) if use_yaw and math.isfinite(msg.yaw) else None
        rate = msg.yaw_rate if use_rate and math.isfinite(msg.yaw_rate) else None
        self._take(Setpoint(now, msg.type_mask, pos, vel, yaw, rate, "local"))

    def _setpoint_global(self, msg: Any) -> None:
        now = time.monotonic()
        parsed = self._parse_mask(msg.type_mask)
        frame = msg.coordinate_frame
        if parsed is None or frame not in GLOBAL_FRAMES or not self._accepts_setpoints():
            self._refuse()
            return
        use_pos, use_vel, use_yaw, use_rate = parsed
        pos = vel = None
        if use_pos:
            n, e = self.local(msg.lat_int / 1e7, msg.lon_int / 1e7)  # degE7 in every frame
            amsl = frame in (mavlink.MAV_FRAME_GLOBAL_INT, mavlink.MAV_FRAME_GLOBAL)
            up = msg.alt - self.home[2] if amsl else msg.alt
            pos = (n, e, up)
        if use_vel:
            vel = (msg.vx, msg.vy, -msg.vz)
        yaw = wrap_pi(msg.yaw) if use_yaw and math.isfinite(msg.yaw) else None
        rate = msg.yaw_rate if use_rate and math.isfinite(msg.yaw_rate) else None
        self._take(Setpoint(now, msg.type_mask, pos, vel, yaw, rate, "global"))

    def _take(self, sp: Setpoint) -> None:
        s = self.state
        s.last_setpoint = sp.t
        s.setpoint = sp
        s.commands.append(f"setpoint:{sp.source}")
        if sp.yaw is not None or sp.yaw_rate is not None:
            s.yaw_goal = s.yaw_goal_rate = None  # the setpoint's yaw replaces CONDITION_YAW

    def _command(self, msg: Any) -> int:
        s = self.state
        c = msg.command
        s.commands.append(str(c))
        accepted: int = mavlink.MAV_RESULT_ACCEPTED
        failed: int = mavlink.MAV_RESULT_FAILED
        denied: int = mavlink.MAV_RESULT_DENIED
        rejected: int = mavlink.MAV_RESULT_TEMPORARILY_REJECTED
        px4 = self.flavour == "px4"
        b = s.body
        if c == mavlink.MAV_CMD_COMPONENT_ARM_DISARM:
            if msg.param1 >= 0.5:
                if s.armed:
                    return accepted
                if not self.prearm_ok or self.behaviour() in ("rtl", "land"):
                    return rejected if px4 else failed
                s.armed = True
                s.landed_since = None
                s.hold = (b.north, b.east, b.up)
            else:
                if not b.on_ground and msg.param2 != FORCE_DISARM_MAGIC:  # in the air, not forced
                    return denied
                self._disarm()
            return accepted
        if c == mavlink.MAV_CMD_NAV_TAKEOFF:
            return self._takeoff(msg.param7)
        if c == mavlink.MAV_CMD_NAV_RETURN_TO_LAUNCH:
            self._enter("AUTO.RTL" if px4 else "RTL")
            return accepted
        if c == mavlink.MAV_CMD_NAV_LAND:
            self._enter("AUTO.LAND" if px4 else "LAND")
            return accepted
        if c == mavlink.MAV_CMD_DO_SET_MODE:
            return self._set_mode(int(msg.param1), int(msg.param2), int(msg.param3))
        if c == mavlink.MAV_CMD_CONDITION_YAW:
            if px4:
                return int(mavlink.MAV_RESULT_UNSUPPORTED)
            if not s.armed or b.on_ground or self.behaviour() != "guided":
                return failed
            angle = math.radians(msg.param1)
            goal = b.yaw + (angle * (-1.0 if msg.param3 < 0 else 1.0) if msg.param4 >= 0.5 else 0.0)
            s.yaw_goal = wrap_pi(goal if msg.param4 >= 0.5 else angle)
            s.yaw_goal_rate = math.radians(msg.param2 if msg.param2 > 0 else DEFAULT_YAW_RATE_DPS)
            return accepted
        if c == mavlink.MAV_CMD_SET_MESSAGE_INTERVAL:
            msg_id, interval_us = int(msg.param1), msg.param2
            if interval_us == 0:
                self.intervals.pop(msg_id, None)
            else:
                self.intervals[msg_id] = interval_us / 1e6 if interval_us > 0 else -1.0
            return accepted
        return int(mavlink.MAV_RESULT_UNSUPPORTED)

    def _takeoff(self, alt: float) -> int:
        s = self.state
        b = s.body
        if self.flavour == "ardupilot":
            if not s.armed or s.mode != "GUIDED" or not b.on_ground:
                return int(mavlink.MAV_RESULT_FAILED)
            target = max(1.0, alt)
            s.setpoint = Setpoint(time.monotonic(), IGNORE_VEL | IGNORE_ACC | IGNORE_YAW | IGNORE_YAW_RATE,
                                  (b.north, b.east, target), None, None, None, "takeoff")
            return int(mavlink.MAV_RESULT_ACCEPTED)
        if not s.armed:
            return int(mavlink.MAV_RESULT_TEMPORARILY_REJECTED)
        target = alt - self.home[2] if math.isfinite(alt) else b.up + PX4_TAKEOFF_ALT_M
        self._enter("AUTO.TAKEOFF")
        s.hold = (b.north, b.east, max(1.0, target))
        return int(mavlink.MAV_RESULT_ACCEPTED)

    def _set_mode(self, base_mode: int, custom: int, sub: int | None) -> int:
        if not base_mode & mavlink.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED:
            return int(mavlink.MAV_RESULT_UNSUPPORTED)
        if self.flavour == "ardupilot":
            name = COPTER_MODE_NAMES.get(custom)
            if name is None:
                return int(mavlink.MAV_RESULT_DENIED)
        else:
            if custom >= 1 << 16 or sub is None:  # the whole custom_mode (SET_MODE, or p2 encoded)
                name = px4_mode_name(custom)
            else:
                name = px4_mode_name((custom << 16) | (sub << 24))
            if name not in PX4_MODES:
                return int(mavlink.MAV_RESULT_DENIED)
            if name == "OFFBOARD" and time.monotonic() - self.state.last_setpoint > OFFBOARD_STREAM_S:
                return int(mavlink.MAV_RESULT_TEMPORARILY_REJECTED)
            if name == "AUTO.TAKEOFF":
                return self._takeoff(math.nan)
        self._enter(name)
        return int(mavlink.MAV_RESULT_ACCEPTED)

    def _enter(self, mode: str) -> None:
        s = self.state
        b = s.body
        if mode == s.mode:
            return
        s.mode = mode
        s.rtl_phase = "climb"
        s.hold = (b.north, b.east, b.up)
        s.yaw_goal = s.yaw_goal_rate = None
        if self.flavour == "ardupilot":
            s.setpoint = None  # ArduPilot drops its guided target on a mode change; PX4 keeps the stream

    def _disarm(self) -> None:
        s = self.state
        s.armed = False
        s.setpoint = None
        s.yaw_goal = s.yaw_goal_rate = None
        s.landed_since = None

    def behaviour(self, mode: str | None = None) -> str:
        """What the (current) mode does: guided, hold, rtl, land, takeoff or manual."""
        m = self.state.mode if mode is None else mode
        table = _ARDU_BEHAVIOUR if self.flavour == "ardupilot" else _PX4_BEHAVIOUR
        return table.get(m, "hold")

    def custom_mode(self) -> int:
        m = self.state.mode
        return COPTER_MODES[m] if self.flavour == "ardupilot" else px4_custom_mode(m)

    # ----- simulation ------------------------------------------------------------------------------
    def active_setpoint(self, now: float | None = None) -> Setpoint | None:
        """The setpoint being flown now (None outside GUIDED/OFFBOARD)."""
        s = self.state
        if not s.armed or self.behaviour() != "guided" or s.setpoint is None:
            return None
        sp = s.setpoint
        now = time.monotonic() if now is None else now
        if (self.flavour == "ardupilot" and sp.pos is None and sp.vel is not None
                and now - sp.t > GUIDED_VELOCITY_TIMEOUT_S):
            b = s.body  # velocity timeout: ArduCopter stops and holds where it is
            s.setpoint = Setpoint(now, IGNORE_VEL | IGNORE_ACC | IGNORE_YAW | IGNORE_YAW_RATE,
                                  (b.north, b.east, b.up), None, None, None, "timeout")
            return s.setpoint
        return sp

    def _goto(self, target: tuple[float, float, float], speed: float = CRUISE_MPS) -> Want:
        b = self.state.body
        lim = self.limits
        dn, de, du = target[0] - b.north, target[1] - b.east, target[2] - b.up
        dist = math.hypot(dn, de)
        h = approach(dist, min(speed, lim.max_speed_h), lim.max_accel_h)
        vn, ve = (dn / dist * h, de / dist * h) if dist > 1e-6 else (0.0, 0.0)
        vu = approach(du, lim.max_speed_up if du > 0 else lim.max_speed_down, lim.max_accel_v)
        return Want(vn, ve, vu)

    def _want(self, now: float) -> Want | None:
        s = self.state
        b = s.body
        if not s.armed:
            return None
        behaviour = self.behaviour()
        if behaviour == "guided":
            if self.flavour == "px4" and now - s.last_setpoint > OFFBOARD_LOSS_S:
                log.info("offboard setpoint stream lost for %.1f s: AUTO.LOITER", now - s.last_setpoint)
                self._enter("AUTO.LOITER")
                return self._want(now)
            sp = self.active_setpoint(now)
            if sp is None:
                want = self._goto(s.hold or (b.north, b.east, b.up))
            elif sp.pos is not None:
                cap = math.hypot(sp.vel[0], sp.vel[1]) if sp.vel is not None else CRUISE_MPS
                want = self._goto(sp.pos, cap if cap > 0.1 else CRUISE_MPS)
            else:
                assert sp.vel is not None
                want = Want(*sp.vel)
                if self.flavour == "ardupilot" and b.on_ground:  # ArduCopter needs a takeoff
                    want = Want()
            if sp is not None:
                want.yaw, want.yaw_rate = sp.yaw, sp.yaw_rate
            if s.yaw_goal is not None:
                err = wrap_pi(s.yaw_goal - b.yaw)
                rate = s.yaw_goal_rate or math.radians(DEFAULT_YAW_RATE_DPS)
                want.yaw_rate = math.copysign(min(rate, 2.0 * abs(err)), err)
                want.yaw = None
            return want
        if behaviour == "takeoff":
            target = s.hold or (b.north, b.east, PX4_TAKEOFF_ALT_M)
            if abs(target[2] - b.up) < ARRIVED_M / 2:
                self._enter("AUTO.LOITER")
            return self._goto(target)
        if behaviour == "land":
            target = s.hold or (b.north, b.east, 0.0)
            w = self._goto((target[0], target[1], b.up))
            w.vu = -LAND_MPS
            return w
        if behaviour == "rtl":
            return self._rtl()
        if behaviour == "manual":
            return Want(0.0, 0.0, 0.0)
        return self._goto(s.hold or (b.north, b.east, b.up))

    def _rtl(self) -> Want:
        s = self.state
        b = s.body
        far = math.hypot(b.north, b.east) > ARRIVED_M
        if s.rtl_phase == "climb":
            alt = max(b.up, self.rtl_alt) if far else b.up
            if not far or b.up >= alt - ARRIVED_M / 2:
                s.rtl_phase = "return"
                s.hold = (0.0, 0.0, alt)
            else:
                return self._goto((b.north, b.east, alt))
        if s.rtl_phase == "return":
            target = s.hold or (0.0, 0.0, b.up)
            if math.hypot(b.north, b.east) <= ARRIVED_M and math.hypot(b.vn, b.ve) < 0.3:
                s.rtl_phase = "land"
            else:
                return self._goto((0.0, 0.0, target[2]))
        w = self._goto((0.0, 0.0, b.up))
        w.vu = -LAND_MPS
        return w

    def step(self, dt: float, now: float | None = None) -> None:
        """Advance the emulation by ``dt`` seconds (the stream calls it every tick)."""
        s = self.state
        now = time.monotonic() if now is None else now
        want = self._want(now)
        s.body.step(dt, want, self.limits, self.wind)
        b = s.body
        landing = self.behaviour() == "land" or (self.behaviour() == "rtl" and s.rtl_phase == "land")
        if s.armed and b.on_ground and landing:
            if s.landed_since is None:
                s.landed_since = now
            delay = PX4_DISARM_LAND_S if self.flavour == "px4" else 0.0
            if now - s.landed_since >= delay:
                self._disarm()
        amps = vehicle_current(b.load, s.armed)
        for pack in self.packs:
            pack.drain(amps / len(self.packs), dt)

    def battery(self) -> tuple[float, float, int]:
        """``(volts, amps, percent remaining)`` of the vehicle (pack 0's voltage, total current)."""
        return (self.packs[0].voltage, sum(p.current for p in self.packs),
                round(min(p.remaining for p in self.packs) * 100))

    # ----- telemetry -------------------------------------------------------------------------------
    def _boot_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000) & 0xFFFFFFFF

    def _battery_status(self, pack_id: int) -> Any:
        p = self.packs[pack_id]
        unknown = self.unknown.get(pack_id, frozenset())
        cells = [65535] * 10
        if "voltage" not in unknown:
            cells[0] = round(p.voltage * 1000)  # whole-pack voltage in cell 0, per the spec
        current = -1 if "current" in unknown else round(p.current * 100)
        remaining = -1 if "remaining" in unknown else round(p.remaining * 100)
        temperature = 32767 if "temperature" in unknown else 2500
        consumed = -1 if "consumed" in unknown else round(p.used_ah * 1000)
        return self.codec.mav.battery_status_encode(
            pack_id, mavlink.MAV_BATTERY_FUNCTION_ALL, mavlink.MAV_BATTERY_TYPE_LIPO, temperature, cells,
            current, consumed, -1, remaining)

    def _sys_status(self) -> Any:
        p = self.packs[0]
        unknown = self.unknown.get(0, frozenset())
        volts = 65535 if "voltage" in unknown else round(p.voltage * 1000)
        amps = -1 if "current" in unknown else round(sum(q.current for q in self.packs) * 100)
        pct = -1 if "remaining" in unknown else round(p.remaining * 100)
        return self.codec.mav.sys_status_encode(0, 0, 0, 500, volts, amps, pct, 0, 0, 0, 0, 0, 0)

    def _telemetry(self, msg_id: int) -> list[Any]:
        m = self.codec.mav
        s = self.state
        b = s.body
        boot_ms = self._boot_ms()
        if msg_id == mavlink.MAVLINK_MSG_ID_GLOBAL_POSITION_INT:
            lat, lon, alt = self.geo()
            return [m.global_position_int_encode(
                boot_ms, round(lat * 1e7), round(lon * 1e7), round(alt * 1000), round(b.up * 1000),
                round(b.vn * 100), round(b.ve * 100), round(-b.vu * 100),
                round(math.degrees(b.yaw) % 360 * 100) % 36000)]
        if msg_id == mavlink.MAVLINK_MSG_ID_LOCAL_POSITION_NED:
            return [m.local_position_ned_encode(boot_ms, b.north, b.east, -b.up, b.vn, b.ve, -b.vu)]
        if msg_id == mavlink.MAVLINK_MSG_ID_ATTITUDE:
            return [m.attitude_encode(boot_ms, b.roll, b.pitch, b.yaw, 0.0, 0.0, b.yaw_rate)]
        if msg_id == mavlink.MAVLINK_MSG_ID_VFR_HUD:
            throttle = round(min(100.0, 50.0 * b.load)) if s.armed else 0
            return [m.vfr_hud_encode(math.hypot(b.vn - self.wind[0], b.ve - self.wind[1]), math.hypot(b.vn, b.ve),
                                     round(math.degrees(b.yaw) % 360) % 360, throttle, self.geo()[2], b.vu)]
        if msg_id == mavlink.MAVLINK_MSG_ID_SYS_STATUS:
            return [self._sys_status()]
        if msg_id == mavlink.MAVLINK_MSG_ID_BATTERY_STATUS:
            return [self._battery_status(i) for i in range(len(self.packs))]
        if msg_id == mavlink.MAVLINK_MSG_ID_POSITION_TARGET_LOCAL_NED:
            sp = self.active_setpoint()
            if sp is None:
                return []
            mask = sp.type_mask & ~FORCE_SET
            x, y, z = (sp.pos[0], sp.pos[1], -sp.pos[2]) if sp.pos is not None else (0.0, 0.0, 0.0)
            vx, vy, vz = (sp.vel[0], sp.vel[1], -sp.vel[2]) if sp.vel is not None else (0.0, 0.0, 0.0)
            return [m.position_target_local_ned_encode(
                boot_ms, mavlink.MAV_FRAME_LOCAL_NED, mask, x, y, z, vx, vy, vz, 0.0, 0.0, 0.0,
                sp.yaw if sp.yaw is not None else 0.0, sp.yaw_rate if sp.yaw_rate is not None else 0.0)]
        return []

    def heartbeat(self) -> None:
        """Send the autopilot's HEARTBEAT and one from each extra component."""
        s = self.state
        base = mavlink.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED
        if s.armed:
            base |= mavlink.MAV_MODE_FLAG_SAFETY_ARMED
        if self.behaviour() == "guided":
            base |= mavlink.MAV_MODE_FLAG_GUIDED_ENABLED
        status = mavlink.MAV_STATE_ACTIVE if s.armed else mavlink.MAV_STATE_STANDBY
        for name, codec in self.extra.items():  # before the autopilot's: a driver must not take these
            self.send(codec.mav.heartbeat_encode(EXTRA_COMPONENTS[name][1], mavlink.MAV_AUTOPILOT_INVALID,
                                                 0, 0, mavlink.MAV_STATE_ACTIVE), codec)
        autopilot = mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA if self.flavour == "ardupilot" else mavlink.MAV_AUTOPILOT_PX4
        if self.mute_autopilot:
            return
        self.send(self.codec.mav.heartbeat_encode(
            mavlink.MAV_TYPE_QUADROTOR, autopilot, base, self.custom_mode(), status))

    STREAMED: tuple[int, ...] = (
        mavlink.MAVLINK_MSG_ID_GLOBAL_POSITION_INT, mavlink.MAVLINK_MSG_ID_LOCAL_POSITION_NED,
        mavlink.MAVLINK_MSG_ID_ATTITUDE, mavlink.MAVLINK_MSG_ID_VFR_HUD, mavlink.MAVLINK_MSG_ID_SYS_STATUS,
        mavlink.MAVLINK_MSG_ID_BATTERY_STATUS, mavlink.MAVLINK_MSG_ID_POSITION_TARGET_LOCAL_NED,
    )

    def _interval(self, msg_id: int) -> float:
        return self.intervals.get(msg_id, 1.0 / self.rate_hz)

    async def _stream(self) -> None:
        hb_period = 1.0 / self.heartbeat_hz
        start = time.monotonic()
        next_hb = start
        due = {mid: start for mid in self.STREAMED}
        last = start
        while True:
            now = time.monotonic()
            self.step(now - last, now)
            last = now
            if now >= next_hb:
                self.heartbeat()
                next_hb = max(next_hb + hb_period, now - hb_period)
            for mid in self.STREAMED:
                period = self._interval(mid)
                if period <= 0 or now < due[mid]:
                    continue
                for msg in self._telemetry(mid):
                    self.send(msg)
                due[mid] = max(due[mid] + period, now - period)  # no burst after a stall
            live = [due[mid] for mid in self.STREAMED if self._interval(mid) > 0]
            wake = min([next_hb, *live])
            tick = min(0.05, 1.0 / self.rate_hz)  # dynamics step at least every tick
            await asyncio.sleep(max(0.0, min(wake, now + tick) - time.monotonic()))


def main(argv: list[str] | None = None) -> None:
    """``python -m drivers.serial.sim_fc --link /tmp/fc``: run the emulator in its own process."""
    import argparse

    p = argparse.ArgumentParser(description="Emulated MAVLink flight controller on a pty.")
    p.add_argument("--link", required=True, help="symlink path to create for the pty")
    p.add_argument("--flavour", choices=FLAVOURS, default="ardupilot")
    p.add_argument("--rate-hz", type=float, default=10.0, help="telemetry ticks per second")
    p.add_argument("--heartbeat-hz", type=float, default=1.0)
    p.add_argument("--components", default="", help="comma list of extra components: gimbal,camera,companion")
    p.add_argument("--packs", type=int, default=1, help="battery packs (BATTERY_STATUS ids 0..n-1)")
    p.add_argument("--wind", default="0,0", help="wind north,east in m/s")
    p.add_argument("--duration-s", type=float, default=0.0, help="0 = until killed")
    args = p.parse_args(argv)
    wind_n, wind_e = (float(v) for v in args.wind.split(","))

    async def run() -> None:
        fc = SimFlightController(rate_hz=args.rate_hz, heartbeat_hz=args.heartbeat_hz, flavour=args.flavour,
                                 components=[c for c in args.components.split(",") if c], packs=args.packs,
                                 wind=(wind_n, wind_e))
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
