"""Motion commands for a MAVLink autopilot: encoding per flavour, the setpoint stream, acks.

Key components
- :class:`MavCommander`: the verbs of the flight-controller driver (``arm``, ``disarm``,
  ``takeoff``, ``land``, ``rtl``, ``hold``, ``set_mode``, ``velocity``, ``position``, ``goto``,
  ``yaw``, ``yaw_rate``), each turned into the MAVLink message(s) of the autopilot's flavour
  (ArduPilot or PX4, from the autopilot's HEARTBEAT.autopilot or configured), and answered:
  COMMAND_LONG verbs by the autopilot's COMMAND_ACK (MAV_RESULT as a word: ``ACCEPTED``,
  ``DENIED``, ...); setpoints, which have no ack, by watching the autopilot's echo of its active
  target (POSITION_TARGET_LOCAL_NED, POSITION_TARGET_GLOBAL_INT) for ``confirm_timeout_s``:
  ``result`` is ``TRACKING`` (``confirmed_by`` names the echo) or ``UNCONFIRMED``.
- The setpoint stream (:meth:`MavCommander.stream`): the active setpoint is re-sent at
  ``setpoint_hz`` on an absolute schedule (no drift, no bursts after a stall). A rate setpoint
  (velocity, PX4 yaw rate) that is not refreshed by a new command for ``setpoint_timeout_s``
  becomes a hold (zero velocity, streamed), reported as event ``setpoint_timeout``. ``land``,
  ``rtl`` and ``takeoff`` stop the stream once accepted. PX4 leaves OFFBOARD when the stream
  stops, so ``set_mode OFFBOARD`` first streams a hold for ``px4_prestream_s`` and only then asks
  for the mode.
- PX4's modes by name (``POSCTL``, ``OFFBOARD``, ``AUTO.LOITER``, ...) and their custom_mode
  come from :mod:`drivers.serial.mavcodec` (``PX4_MODES``, ``px4_mode_name``), as the telemetry's do.

Frames and units (the device's, converted here): local velocity ``x`` east, ``y`` north, ``z`` up
(m/s) -> MAV_FRAME_LOCAL_NED (vx north, vy east, vz down); body velocity ``x`` forward, ``y``
left, ``z`` up -> MAV_FRAME_BODY_OFFSET_NED (forward, right, down); positions m east/north/up of
the autopilot's origin -> LOCAL_NED; ``goto`` lat/lon deg and ``alt`` m above home ->
SET_POSITION_TARGET_GLOBAL_INT in MAV_FRAME_GLOBAL_RELATIVE_ALT_INT; yaw degrees clockwise from
north, yaw rate deg/s clockwise-positive.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from drivers.base import CommandHandler
from drivers.serial.mavcodec import (
    COPTER_MODE_NAMES,
    COPTER_MODES,
    NOT_AUTOPILOT_TYPES,
    PX4_MODES,
    enum_name,
    mavlink,
    px4_mode_name,
)

log = logging.getLogger("edge.drivers.mavlink")

DEFAULT_SETPOINT_HZ = 10.0
DEFAULT_SETPOINT_TIMEOUT_S = 3.0  # s without a fresh rate command before the stream holds
DEFAULT_CONFIRM_TIMEOUT_S = 0.5  # s to wait for the autopilot's echo of a setpoint
DEFAULT_PX4_PRESTREAM_S = 1.0  # s of setpoints before PX4 is asked for OFFBOARD
DEFAULT_COMMAND_TIMEOUT_S = 3.0  # s to wait for a COMMAND_ACK
FORCE_DISARM_MAGIC = 21196  # param2 of COMPONENT_ARM_DISARM that forces a disarm in flight
MAX_SPEED = 100.0  # m/s: larger arguments are refused as nonsense (the envelope limits further)
MAX_YAW_RATE = 720.0  # deg/s
MAX_YAW_RATE_DURATION_S = 10.0
VELOCITY_TOLERANCE = 0.05  # m/s: an echo this close confirms a velocity setpoint
POSITION_TOLERANCE = 0.1  # m
GLOBAL_TOLERANCE_E7 = 20  # 1e-7 deg: about 0.2 m

# POSITION_TARGET_TYPEMASK bits (common.xml): set = ignore
IGNORE_POS = 0x007
IGNORE_VEL = 0x038
IGNORE_ACC = 0x1C0
IGNORE_YAW = 0x400
IGNORE_YAW_RATE = 0x800
MASK_VELOCITY = IGNORE_POS | IGNORE_ACC | IGNORE_YAW | IGNORE_YAW_RATE  # 0xDC7
MASK_POSITION = IGNORE_VEL | IGNORE_ACC | IGNORE_YAW | IGNORE_YAW_RATE  # 0xDF8


class Flavour(enum.StrEnum):
    ARDUPILOT = "ardupilot"
    PX4 = "px4"


AUTOPILOTS = ("auto", "ardupilot", "px4")

#: Modes in which the autopilot flies setpoints.
SETPOINT_MODES = {Flavour.ARDUPILOT: ("GUIDED", "GUIDED_NOGPS"), Flavour.PX4: ("OFFBOARD",)}
HOLD_MODES = {Flavour.ARDUPILOT: "LOITER", Flavour.PX4: "AUTO.LOITER"}
#: Heartbeats of these vehicle types are not the autopilot's (gimbals, cameras, companions).


def mode_name(flavour: Flavour, custom_mode: int) -> str:
    if flavour is Flavour.PX4:
        return px4_mode_name(custom_mode)
    return COPTER_MODE_NAMES.get(custom_mode, f"custom:{custom_mode}")


def _number(args: Mapping[str, Any], key: str, lo: float, hi: float, default: float | None = None) -> float:
    v = args.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"'{key}' must be a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


@dataclass(frozen=True, slots=True)
class Setpoint:
    """One streamed target. ``message`` builds the frame for a time_boot_ms; ``rate`` setpoints
    time out to a hold; ``matches`` recognises the autopilot's echo of it."""

    kind: str  # velocity | position | goto | hold
    frame: int
    mask: int
    values: tuple[float, ...]  # LOCAL_NED: x y z vx vy vz yaw yaw_rate; GLOBAL: lat_e7 lon_e7 alt
    rate: bool
    fresh_at: float

    @property
    def is_global(self) -> bool:
        return self.kind == "goto"


class MavCommander:
    """The driver's commands for one autopilot over one link."""

    def __init__(
        self,
        *,
        send: Callable[[Any], Awaitable[None]],
        mav: Callable[[], Any],
        event: Callable[[str, Mapping[str, Any]], Awaitable[None]],
        target_system: int = 1,
        target_component: int = 1,
        autopilot: str = "auto",
        setpoint_hz: float = DEFAULT_SETPOINT_HZ,
        setpoint_timeout_s: float = DEFAULT_SETPOINT_TIMEOUT_S,
        confirm_timeout_s: float = DEFAULT_CONFIRM_TIMEOUT_S,
        px4_prestream_s: float = DEFAULT_PX4_PRESTREAM_S,
        command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
    ) -> None:
        if autopilot not in AUTOPILOTS:
            raise ValueError(f"autopilot must be one of {', '.join(AUTOPILOTS)}, got {autopilot!r}")
        self._send = send
        self._mav = mav
        self._event = event
        self.target_system = target_system
        self.target_component = target_component
        self._locked_component = 0  # with target_component 0: the autopilot's, from its HEARTBEAT
        self.autopilot = autopilot
        self.setpoint_hz = setpoint_hz
        self.setpoint_timeout_s = setpoint_timeout_s
        self.confirm_timeout_s = confirm_timeout_s
        self.px4_prestream_s = px4_prestream_s
        self.command_timeout_s = command_timeout_s
        self.flavour = Flavour.PX4 if autopilot == "px4" else Flavour.ARDUPILOT
        self.heard_autopilot: int | None = None
        self.mode: str | None = None
        self.armed: bool | None = None
        self.home_amsl: float | None = None
        self._active: Setpoint | None = None
        self._stream_since = time.monotonic()  # when the current stream began
        self.setpoints_sent = 0
        self.timeouts = 0
        self.last_echo: dict[str, Any] | None = None
        self.bad_messages = 0
        self._t0 = time.monotonic()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._echo_waiters: list[tuple[Setpoint, asyncio.Future[float]]] = []
        self._wake = asyncio.Event()
        self._gaps: list[float] = []  # seconds between the last stream frames (status: jitter)
        self._last_sent = 0.0

    @property
    def active(self) -> Setpoint | None:
        """The streamed setpoint (None: nothing streams)."""
        return self._active

    @active.setter
    def active(self, sp: Setpoint | None) -> None:
        if self._active is None and sp is not None:
            self._stream_since = time.monotonic()
        self._active = sp

    # -- state from the autopilot -------------------------------------------------------------

    def observe(self, msg: Any) -> None:
        """Every message from the target system (called by the driver's reader, one line). A
        message it cannot use is counted (``bad_messages``) and dropped; the reader goes on."""
        try:
            self._observe(msg)
        except Exception as err:  # noqa: BLE001  a malformed message must not stop the reader
            self.bad_messages += 1
            log.debug("ignored %s: %s", msg.get_type(), err)

    def _observe(self, msg: Any) -> None:
        t = msg.get_type()
        if t == "HEARTBEAT":
            self._heartbeat(msg)
        elif t == "COMMAND_ACK":
            self._ack(msg)
        elif t == "POSITION_TARGET_LOCAL_NED" or t == "POSITION_TARGET_GLOBAL_INT":
            self._echo(t, msg)
        elif t == "GLOBAL_POSITION_INT":
            self.home_amsl = (msg.alt - msg.relative_alt) / 1000.0

    def _is_autopilot(self, msg: Any) -> bool:
        if msg.autopilot == mavlink.MAV_AUTOPILOT_INVALID or msg.type in NOT_AUTOPILOT_TYPES:
            return False
        return msg.get_srcComponent() == self.component if self.component else True

    @property
    def component(self) -> int:
        """The autopilot's component id: ``target_component``, or with 0 the first autopilot heard."""
        return self.target_component or self._locked_component

    def _heartbeat(self, msg: Any) -> None:
        if not self._is_autopilot(msg):
            return
        if not self.component:
            self._locked_component = msg.get_srcComponent()
        self.heard_autopilot = msg.autopilot
        if self.autopilot == "auto":
            self.flavour = Flavour.PX4 if msg.autopilot == mavlink.MAV_AUTOPILOT_PX4 else Flavour.ARDUPILOT
        self.armed = bool(msg.base_mode & mavlink.MAV_MODE_FLAG_SAFETY_ARMED)
        self.mode = mode_name(self.flavour, msg.custom_mode)

    def _ack(self, msg: Any) -> None:
        mav = self._mav()
        if msg.target_system not in (0, mav.srcSystem) or msg.target_component not in (0, mav.srcComponent):
            return  # another requester's answer
        if self.component and msg.get_srcComponent() != self.component:
            return  # a gimbal or camera on the same system does not answer for the autopilot
        fut = self._pending.get(msg.command)
        if fut is None or fut.done():
            return
        if msg.result == mavlink.MAV_RESULT_IN_PROGRESS:
            return  # the final ack follows
        fut.set_result(msg)

    def _echo(self, kind: str, msg: Any) -> None:
        self.last_echo = {"message": kind, "type_mask": msg.type_mask}
        now = time.monotonic()
        for sp, fut in list(self._echo_waiters):
            if not fut.done() and _echoes(sp, kind, msg):
                fut.set_result(now)

    # -- the stream ---------------------------------------------------------------------------

    def reset(self) -> None:
        """A new link: nothing streams, nothing waits."""
        self.close()
        self.active = None
        self.mode = self.armed = None
        self._locked_component = 0
        self._t0 = time.monotonic()

    def close(self) -> None:
        """The link is gone: the stream stops, and commands waiting for an ack or an echo are
        answered with the loss (not left to time out)."""
        lost = ConnectionError("the link to the flight controller was lost")
        waiting: list[asyncio.Future[Any]] = [*self._pending.values(), *(f for _, f in self._echo_waiters)]
        for fut in waiting:
            if not fut.done():
                fut.set_exception(lost)
                fut.exception()  # retrieved here: a waiter that already left must not warn
        self._pending.clear()
        self._echo_waiters.clear()
        self.active = None

    def status(self) -> dict[str, Any]:
        gaps = sorted(self._gaps)
        return {
            "flavour": str(self.flavour), "mode": self.mode, "armed": self.armed,
            "streaming": self.active.kind if self.active else None, "setpoints_sent": self.setpoints_sent,
            "setpoint_timeouts": self.timeouts, "bad_messages": self.bad_messages,
            "stream_gap_ms": {"p50": round(gaps[len(gaps) // 2] * 1e3, 2),
                              "max": round(gaps[-1] * 1e3, 2)} if gaps else None,
        }

    async def stream(self) -> None:
        """Send the active setpoint at ``setpoint_hz`` (a driver task). A setpoint engaged by a
        command is sent at once by the command; the schedule continues from that frame."""
        period = 1.0 / self.setpoint_hz
        next_t = time.monotonic()
        while True:
            self._wake.clear()
            sp = self.active
            if sp is None:
                await self._wake.wait()
                next_t = self._last_sent + period
                continue
            now = time.monotonic()
            if sp.rate and now - sp.fresh_at > self.setpoint_timeout_s:
                self.timeouts += 1
                was, silent = sp.kind, now - sp.fresh_at
                sp = self.active = self._hold_setpoint()
                log.warning("no fresh %s command for %.1f s: holding", was, silent)
                await self._event("setpoint_timeout", {"was": was, "silent_s": round(silent, 2), "now": "hold",
                                                       "timeout_s": self.setpoint_timeout_s})
            if now >= next_t:
                await self._send_setpoint(sp)
                next_t += period
                if next_t < now - period:  # stalled: restart the schedule instead of bursting
                    next_t = now + period
            delay = next_t - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    continue
                next_t = self._last_sent + period  # a command just sent its setpoint

    async def _send_setpoint(self, sp: Setpoint) -> None:
        mav = self._mav()
        ms = int((time.monotonic() - self._t0) * 1000) & 0xFFFFFFFF
        if sp.is_global:
            lat, lon, alt = sp.values
            msg = mav.set_position_target_global_int_encode(
                ms, self.target_system, self.component, sp.frame, sp.mask, int(lat), int(lon), alt,
                0, 0, 0, 0, 0, 0, 0, 0)
        else:
            x, y, z, vx, vy, vz, yaw, yaw_rate = sp.values
            msg = mav.set_position_target_local_ned_encode(
                ms, self.target_system, self.component, sp.frame, sp.mask, x, y, z, vx, vy, vz,
                0, 0, 0, yaw, yaw_rate)
        await self._send(msg)
        now = time.monotonic()
        if self._last_sent:
            self._gaps.append(now - self._last_sent)
            del self._gaps[:-100]
        self._last_sent = now
        self.setpoints_sent += 1

    def _hold_setpoint(self) -> Setpoint:
        return Setpoint("hold", mavlink.MAV_FRAME_LOCAL_NED, MASK_VELOCITY, (0, 0, 0, 0, 0, 0, 0, 0), False,
                        time.monotonic())

    async def _engage(self, sp: Setpoint, command: str) -> dict[str, Any]:
        """Make ``sp`` the streamed setpoint, send it now and wait for its echo."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[float] = loop.create_future()
        waiter = (sp, fut)
        self._echo_waiters.append(waiter)
        t0 = time.monotonic()
        try:
            await self._send_setpoint(sp)  # on the wire now, not at the next tick
            self.active = sp
            self._wake.set()
            try:
                seen = await asyncio.wait_for(fut, self.confirm_timeout_s)
                confirmed: dict[str, Any] = {
                    "result": "TRACKING",
                    "confirmed_by": "POSITION_TARGET_GLOBAL_INT" if sp.is_global else "POSITION_TARGET_LOCAL_NED",
                    "confirm_ms": round((seen - t0) * 1e3, 1)}
            except TimeoutError:
                confirmed = {"result": "UNCONFIRMED", "confirmed_by": None,
                             "note": f"no echo of the setpoint within {self.confirm_timeout_s:g} s "
                                     f"(the autopilot may not fly setpoints in mode {self.mode or 'unknown'})"}
        finally:
            if waiter in self._echo_waiters:
                self._echo_waiters.remove(waiter)
        frame = enum_name("MAV_FRAME", sp.frame, "")
        return {"command": command, "frame": frame, "type_mask": sp.mask, "streaming_hz": self.setpoint_hz,
                "flavour": str(self.flavour), **confirmed}

    # -- COMMAND_LONG ---------------------------------------------------------------------------

    async def command_long(self, command: int, *params: float) -> dict[str, Any]:
        """Send COMMAND_LONG and wait for its (final) COMMAND_ACK; returns the answer fields."""
        p = [float(x) for x in params] + [0.0] * (7 - len(params))
        name = enum_name("MAV_CMD", command, "")
        if command in self._pending and not self._pending[command].done():
            raise RuntimeError(f"{name} is already waiting for its COMMAND_ACK")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[command] = fut
        try:
            await self._send(self._mav().command_long_encode(
                self.target_system, self.component, command, 0, *p))
            try:
                ack = await asyncio.wait_for(fut, self.command_timeout_s)
            except TimeoutError:
                raise TimeoutError(f"no COMMAND_ACK for {name} within {self.command_timeout_s:g} s") from None
        finally:
            self._pending.pop(command, None)
        result = enum_name("MAV_RESULT", ack.result, "MAV_RESULT_")
        out: dict[str, Any] = {"ok": ack.result == mavlink.MAV_RESULT_ACCEPTED, "command": name, "result": result,
                               "flavour": str(self.flavour)}
        if not out["ok"]:
            out["error"] = f"the autopilot answered {result} to {name}"
        return out

    # -- the verbs ------------------------------------------------------------------------------

    def verbs(self) -> dict[str, CommandHandler]:
        return {
            "arm": self.arm, "disarm": self.disarm, "takeoff": self.takeoff, "land": self.land,
            "rtl": self.rtl, "hold": self.hold, "set_mode": self.set_mode, "goto": self.goto,
            "velocity": self.velocity, "position": self.position, "yaw": self.yaw, "yaw_rate": self.yaw_rate,
        }

    async def arm(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.command_long(mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 1)

    async def disarm(self, args: dict[str, Any]) -> dict[str, Any]:
        force = FORCE_DISARM_MAGIC if args.get("force") is True else 0
        out = await self.command_long(mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 0, force)
        if out["ok"]:
            self.active = None
        return out

    async def _stops_stream(self, command: int, *params: float) -> dict[str, Any]:
        out = await self.command_long(command, *params)
        if out["ok"]:
            self.active = None  # the autopilot flies it on its own now
        return out

    async def takeoff(self, args: dict[str, Any]) -> dict[str, Any]:
        alt = _number(args, "alt", 0.5, 10000.0)
        if self.flavour is Flavour.PX4:  # PX4 takes the takeoff altitude AMSL
            if self.home_amsl is None:
                raise ValueError("PX4 takes the takeoff altitude above mean sea level and the home altitude "
                                 "is not known yet (no GLOBAL_POSITION_INT)")
            return await self._stops_stream(mavlink.MAV_CMD_NAV_TAKEOFF, -1, 0, 0, math.nan, math.nan, math.nan,
                                            self.home_amsl + alt)
        return await self._stops_stream(mavlink.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, alt)

    async def land(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.flavour is Flavour.PX4:  # NaN: here, at the current heading
            return await self._stops_stream(mavlink.MAV_CMD_NAV_LAND, 0, 0, 0, math.nan, math.nan, math.nan, math.nan)
        return await self._stops_stream(mavlink.MAV_CMD_NAV_LAND)

    async def rtl(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._stops_stream(mavlink.MAV_CMD_NAV_RETURN_TO_LAUNCH)

    def _mode_params(self, mode: str) -> tuple[float, ...]:
        custom = float(mavlink.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED)
        if self.flavour is Flavour.PX4:
            if mode not in PX4_MODES:
                raise ValueError(f"unknown mode {mode!r} for PX4; known: {', '.join(PX4_MODES)}")
            main, sub = PX4_MODES[mode]
            return (custom, float(main), float(sub))
        if mode not in COPTER_MODES:
            raise ValueError(f"unknown mode {mode!r} for ArduCopter; known: {', '.join(COPTER_MODES)}")
        return (custom, float(COPTER_MODES[mode]))

    async def set_mode(self, args: dict[str, Any]) -> dict[str, Any]:
        mode = str(args.get("mode", "")).upper()
        params = self._mode_params(mode)
        prestream = None
        if self.flavour is Flavour.PX4 and mode == "OFFBOARD":
            # PX4 refuses OFFBOARD without a setpoint stream and leaves it when the stream stops
            if self.active is None:
                self.active = self._hold_setpoint()
                self._wake.set()
            wait = self.px4_prestream_s - (time.monotonic() - self._stream_since)
            if wait > 0:
                await asyncio.sleep(wait)
            prestream = round(time.monotonic() - self._stream_since, 3)
        out = await self.command_long(mavlink.MAV_CMD_DO_SET_MODE, *params)
        out["mode"] = mode
        if prestream is not None:
            out["prestream_s"] = prestream
        return out

    async def hold(self, args: dict[str, Any]) -> dict[str, Any]:
        """Stop where it is: a zero-velocity setpoint in a setpoint mode (or while streaming),
        else the flavour's loiter mode."""
        if self.active is not None or (self.mode in SETPOINT_MODES[self.flavour]):
            return await self._engage(self._hold_setpoint(), "SET_POSITION_TARGET_LOCAL_NED")
        out = await self.command_long(mavlink.MAV_CMD_DO_SET_MODE, *self._mode_params(HOLD_MODES[self.flavour]))
        out["mode"] = HOLD_MODES[self.flavour]
        return out

    async def velocity(self, args: dict[str, Any]) -> dict[str, Any]:
        x = _number(args, "x", -MAX_SPEED, MAX_SPEED, 0.0)
        y = _number(args, "y", -MAX_SPEED, MAX_SPEED, 0.0)
        z = _number(args, "z", -MAX_SPEED, MAX_SPEED, 0.0)
        frame_name = args.get("frame", "local")
        if frame_name == "local":  # east/north/up -> north/east/down
            frame, vx, vy, vz = mavlink.MAV_FRAME_LOCAL_NED, y, x, -z
        elif frame_name == "body":  # forward/left/up -> forward/right/down
            frame, vx, vy, vz = mavlink.MAV_FRAME_BODY_OFFSET_NED, x, -y, -z
        else:
            raise ValueError(f"'frame' must be 'local' or 'body', got {frame_name!r}")
        mask, yaw_rate = MASK_VELOCITY, 0.0
        if "yaw_rate" in args:
            yaw_rate = math.radians(_number(args, "yaw_rate", -MAX_YAW_RATE, MAX_YAW_RATE))
            mask &= ~IGNORE_YAW_RATE
        moving = bool(vx or vy or vz or yaw_rate)  # a zero velocity is a hold: it does not time out
        sp = Setpoint("velocity", frame, mask, (0, 0, 0, vx, vy, vz, 0, yaw_rate), moving, time.monotonic())
        return await self._engage(sp, "SET_POSITION_TARGET_LOCAL_NED")

    async def position(self, args: dict[str, Any]) -> dict[str, Any]:
        x = _number(args, "x", -1e6, 1e6)
        y = _number(args, "y", -1e6, 1e6)
        z = _number(args, "z", -1000.0, 10000.0)
        mask, yaw = MASK_POSITION, 0.0
        if "yaw" in args:
            yaw = math.radians(_number(args, "yaw", -360.0, 360.0))
            mask &= ~IGNORE_YAW
        sp = Setpoint("position", mavlink.MAV_FRAME_LOCAL_NED, mask, (y, x, -z, 0, 0, 0, yaw, 0), False,
                      time.monotonic())
        return await self._engage(sp, "SET_POSITION_TARGET_LOCAL_NED")

    async def goto(self, args: dict[str, Any]) -> dict[str, Any]:
        lat = _number(args, "lat", -90.0, 90.0)
        lon = _number(args, "lon", -180.0, 180.0)
        alt = _number(args, "alt", -1000.0, 10000.0)
        sp = Setpoint("goto", mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT, MASK_POSITION,
                      (round(lat * 1e7), round(lon * 1e7), alt), False, time.monotonic())
        return await self._engage(sp, "SET_POSITION_TARGET_GLOBAL_INT")

    def _with_yaw(self, yaw: float | None, yaw_rate: float | None) -> Setpoint:
        """The active local setpoint (a hold if none) with PX4's yaw or yaw-rate field set."""
        base = self.active if self.active is not None and not self.active.is_global else self._hold_setpoint()
        v = list(base.values)
        mask = base.mask
        rate = base.rate
        if yaw is not None:
            v[6], v[7] = math.radians(yaw), 0.0
            mask = (mask & ~IGNORE_YAW) | IGNORE_YAW_RATE
        if yaw_rate is not None:
            v[6], v[7] = 0.0, math.radians(yaw_rate)
            mask = (mask & ~IGNORE_YAW_RATE) | IGNORE_YAW
            rate = True
        return replace(base, mask=mask, values=tuple(v), rate=rate, fresh_at=time.monotonic())

    async def yaw(self, args: dict[str, Any]) -> dict[str, Any]:
        yaw = _number(args, "yaw", -360.0, 360.0)
        rate = _number(args, "rate", 0.0, MAX_YAW_RATE, 0.0)
        relative = args.get("relative") is True
        direction = {"cw": 1, "ccw": -1, "shortest": 0}.get(str(args.get("direction", "shortest")))
        if direction is None:
            raise ValueError("'direction' must be 'cw', 'ccw' or 'shortest'")
        if self.flavour is Flavour.PX4:
            if relative:
                raise ValueError("PX4 takes an absolute yaw (degrees clockwise from north); 'relative' is ArduPilot's")
            return await self._engage(self._with_yaw(yaw, None), "SET_POSITION_TARGET_LOCAL_NED")
        angle = abs(yaw) if relative else yaw % 360.0
        if relative and yaw < 0:
            direction = -1
        return await self.command_long(mavlink.MAV_CMD_CONDITION_YAW, angle, rate, direction, 1 if relative else 0)

    async def yaw_rate(self, args: dict[str, Any]) -> dict[str, Any]:
        rate = _number(args, "rate", -MAX_YAW_RATE, MAX_YAW_RATE)
        if self.flavour is Flavour.PX4:
            return await self._engage(self._with_yaw(None, rate), "SET_POSITION_TARGET_LOCAL_NED")
        # ArduPilot: CONDITION_YAW turns by an angle at a rate: a rate for `duration` seconds
        duration = _number(args, "duration", 0.1, MAX_YAW_RATE_DURATION_S, 1.0)
        angle = min(abs(rate) * duration, 360.0)
        out = await self.command_long(mavlink.MAV_CMD_CONDITION_YAW, angle, abs(rate), 1 if rate >= 0 else -1, 1)
        out["turn_deg"] = round(angle, 3)
        return out


def _echoes(sp: Setpoint, kind: str, msg: Any) -> bool:
    """Whether the autopilot's target ``msg`` is setpoint ``sp`` taking effect."""
    if sp.is_global:
        if kind != "POSITION_TARGET_GLOBAL_INT":
            return False
        lat, lon, alt = sp.values
        return bool(abs(msg.lat_int - lat) <= GLOBAL_TOLERANCE_E7 and abs(msg.lon_int - lon) <= GLOBAL_TOLERANCE_E7
                    and abs(msg.alt - alt) <= POSITION_TOLERANCE)
    if kind != "POSITION_TARGET_LOCAL_NED":
        return False
    x, y, z, vx, vy, vz, yaw, yaw_rate = sp.values
    if sp.mask & IGNORE_VEL == 0:  # a velocity target
        if sp.frame == mavlink.MAV_FRAME_BODY_OFFSET_NED:  # echoed in the local frame: compare speeds
            return (abs(math.hypot(msg.vx, msg.vy) - math.hypot(vx, vy)) <= VELOCITY_TOLERANCE
                    and abs(msg.vz - vz) <= VELOCITY_TOLERANCE)
        return all(abs(a - b) <= VELOCITY_TOLERANCE for a, b in ((msg.vx, vx), (msg.vy, vy), (msg.vz, vz)))
    return all(abs(a - b) <= POSITION_TOLERANCE for a, b in ((msg.x, x), (msg.y, y), (msg.z, z)))
