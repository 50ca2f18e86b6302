"""A flight controller over MAVLink 2 on a serial port (ArduPilot-style).

Key components
- :class:`MAVLinkDriver`: opens the port, sends a GCS HEARTBEAT every ``heartbeat_s``, waits for
  the autopilot's first HEARTBEAT (``link_timeout_s``), asks for telemetry at ``telemetry_hz``
  (MAV_CMD_SET_MESSAGE_INTERVAL), and turns messages into components:

  ======================  ==================================================================
  HEARTBEAT               ``flight{armed, mode, system_status}`` (the autopilot's only)
  GLOBAL_POSITION_INT     ``geo{lat, lon deg, alt m AMSL}``, ``velocity{x east, y north, z up}``
  LOCAL_POSITION_NED      ``position{x east, y north, z up}`` m from the EKF origin
  ATTITUDE                ``attitude{roll, pitch, yaw}`` rad (aerospace: yaw clockwise from N)
  BATTERY_STATUS id N     ``battery`` (id 0) / ``battery_N``: ``{voltage, current, level, unknown}``
  SYS_STATUS              ``battery{...}`` while no BATTERY_STATUS id 0 is heard
  STATUSTEXT              event ``statustext``
  ======================  ==================================================================

  Decoding (which component is the autopilot, packs, unknown sentinels, rate counters) is
  :mod:`drivers.serial.mavtelemetry`; ``details()`` shows it in ``edge status``.

  Commands (``edge.<device>.cmd.<entity>.<verb>``, JSON): ``arm``, ``disarm`` (``force``),
  ``takeoff`` (``alt`` m above home), ``land``, ``rtl``, ``set_mode`` (``mode``: ArduCopter name),
  ``goto`` (``lat``, ``lon`` deg, ``alt`` m above home; SET_POSITION_TARGET_GLOBAL_INT, which has
  no ack: the ack says ``"result": "SENT"``). COMMAND_LONG verbs wait for the COMMAND_ACK
  (``command_timeout_s``) and ack ``{"ok", "command", "result"}``.
- Bytes that are not MAVLink are counted (``bad_bytes``) and skipped; the parser resyncs.
- No HEARTBEAT for ``link_timeout_s`` fails the driver (the supervisor reopens the port).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, ClassVar

from drivers.base import CommandHandler, Driver
from drivers.config import Table
from drivers.serial.link import DEFAULT_BAUD, SerialLink
from drivers.serial.mavcodec import COPTER_MODES, MavCodec, enum_name, mavlink
from drivers.serial.mavtelemetry import TelemetryDecoder
from edge.errors import DriverError

DEFAULT_HEARTBEAT_S = 1.0  # seconds between our GCS heartbeats
DEFAULT_LINK_TIMEOUT_S = 5.0  # seconds without an autopilot heartbeat before the link is lost
DEFAULT_COMMAND_TIMEOUT_S = 3.0  # seconds to wait for a COMMAND_ACK
DEFAULT_TELEMETRY_HZ = 10.0
GCS_SYSTEM_ID = 255
GCS_COMPONENT_ID = 190  # MAV_COMP_ID_MISSIONPLANNER
FORCE_DISARM_MAGIC = 21196  # param2 of ARM_DISARM that forces a disarm in flight
POSITION_TARGET_MASK = 0x0FF8  # use lat/lon/alt only: ignore velocity, acceleration, yaw
UINT16_MAX = 65535
STREAMED = ("GLOBAL_POSITION_INT", "LOCAL_POSITION_NED", "ATTITUDE", "SYS_STATUS", "BATTERY_STATUS",
            "POSITION_TARGET_LOCAL_NED")


def _number(args: dict[str, Any], key: str, lo: float, hi: float) -> float:
    v = args.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ValueError(f"'{key}' must be a number in [{lo}, {hi}]")
    return float(v)


class MAVLinkDriver(Driver):
    kind: ClassVar[str] = "mavlink"

    def __init__(
        self,
        name: str,
        entity: str,
        *,
        port: str,
        baudrate: int = DEFAULT_BAUD,
        target_system: int = 1,
        target_component: int = 1,
        telemetry_hz: float = DEFAULT_TELEMETRY_HZ,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        link_timeout_s: float = DEFAULT_LINK_TIMEOUT_S,
        command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
        link: SerialLink | None = None,
        publish_telemetry: bool = True,
    ) -> None:
        super().__init__(name, entity, publish_telemetry=publish_telemetry)
        self.port = port
        self.baudrate = baudrate
        self.target_system = target_system
        self.target_component = target_component
        self.telemetry_hz = telemetry_hz
        self.heartbeat_s = heartbeat_s
        self.link_timeout_s = link_timeout_s
        self.command_timeout_s = command_timeout_s
        self._given_link = link
        self.link: SerialLink | None = None
        self.codec = MavCodec(GCS_SYSTEM_ID, GCS_COMPONENT_ID)
        self.messages = 0
        self.last_heartbeat = 0.0
        self._first_heartbeat = asyncio.Event()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._autopilot = mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA
        self.telemetry = TelemetryDecoder(target_component)

    @property
    def where(self) -> str:
        return self.port

    @property
    def bad_bytes(self) -> int:
        return self.codec.bad_bytes

    # ----- lifecycle ------------------------------------------------------------------------------
    async def _open(self) -> None:
        self.codec = MavCodec(GCS_SYSTEM_ID, GCS_COMPONENT_ID)
        self._first_heartbeat = asyncio.Event()
        self.telemetry = TelemetryDecoder(self.target_component)
        self.link = self._given_link or SerialLink(self.port, self.baudrate)
        await self.link.open()
        self._spawn(self._reader(), "reader")
        self._spawn(self._heartbeats(), "heartbeat")
        try:
            await asyncio.wait_for(self._first_heartbeat.wait(), self.link_timeout_s)
        except TimeoutError:
            raise DriverError(
                f"no MAVLink heartbeat on {self.port} within {self.link_timeout_s} s "
                f"(check wiring, baud rate {self.baudrate}, and that the FC sends MAVLink)",
                device=self.port, cause="no heartbeat",
            ) from None
        interval_us = 1e6 / self.telemetry_hz
        for name in STREAMED:
            msg_id = getattr(mavlink, f"MAVLINK_MSG_ID_{name}")
            await self._send(self.codec.mav.command_long_encode(
                self.target_system, self.target_component, mavlink.MAV_CMD_SET_MESSAGE_INTERVAL,
                0, msg_id, interval_us, 0, 0, 0, 0, 0))

    def commands(self) -> dict[str, CommandHandler]:
        return {
            "arm": self._arm, "disarm": self._disarm, "takeoff": self._takeoff, "land": self._land,
            "rtl": self._rtl, "set_mode": self._set_mode, "goto": self._goto,
        }

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.link_timeout_s / 4)
            silent = time.monotonic() - self.last_heartbeat
            if silent > self.link_timeout_s:
                raise DriverError(
                    f"flight controller on {self.port} silent for {silent:.1f} s",
                    device=self.port, cause="heartbeat lost",
                )

    async def _close(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()
        link, self.link = self.link, None
        if link is not None:
            await link.close()

    # ----- I/O ------------------------------------------------------------------------------------
    async def _send(self, msg: Any) -> None:
        if self.link is None:
            raise OSError(f"{self.port} is not open")
        await self.link.write(self.codec.encode(msg))

    async def _heartbeats(self) -> None:
        while True:
            await self._send(self.codec.mav.heartbeat_encode(
                mavlink.MAV_TYPE_GCS, mavlink.MAV_AUTOPILOT_INVALID, 0, 0, mavlink.MAV_STATE_ACTIVE))
            await asyncio.sleep(self.heartbeat_s)

    async def _reader(self) -> None:
        assert self.link is not None
        link = self.link
        while True:
            data = await link.read()
            bad = self.codec.bad_bytes
            for msg in self.codec.feed(data):
                if msg.get_srcSystem() != self.target_system:
                    continue
                self.messages += 1
                await self._handle(msg)
            if self.codec.bad_bytes != bad:
                self._error(f"{self.codec.bad_bytes - bad} bytes of garbage dropped")

    async def _handle(self, msg: Any) -> None:
        t = msg.get_type()
        if t == "COMMAND_ACK":
            fut = self._pending.get(msg.command)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            self.telemetry.rates.tick(t)
            return
        if t == "STATUSTEXT":
            self.telemetry.rates.tick(t)
            await self._event("statustext", {"severity": msg.severity, "text": msg.text})
            return
        try:
            readings = self.telemetry.decode(msg)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:  # a message we cannot read
            self.telemetry.malformed += 1
            self._error(f"{t} not decoded: {exc}")
            return
        if t == "HEARTBEAT" and readings:  # the autopilot's: the link is alive
            self._autopilot = msg.autopilot
            self.last_heartbeat = time.monotonic()
            self._first_heartbeat.set()
        elif t == "GLOBAL_POSITION_INT" and readings:
            self._sample()
        for component, values in readings:
            try:
                await self._emit(component, values)
            except DriverError as exc:  # the world refused the reading (schema): counted, not fatal
                self.telemetry.malformed += 1
                self._error(exc)

    def details(self) -> dict[str, Any]:
        """For ``edge status``: the autopilot component, the other components heard, the battery
        packs and a count and rate per message type."""
        return self.telemetry.status()

    # ----- commands --------------------------------------------------------------------------------
    async def command_long(self, command: int, *params: float) -> dict[str, Any]:
        """Send COMMAND_LONG and wait for its COMMAND_ACK; returns the ack fields."""
        p = [float(x) for x in params] + [0.0] * (7 - len(params))
        if command in self._pending and not self._pending[command].done():
            raise RuntimeError(f"{enum_name('MAV_CMD', command, '')} already waiting for an ack")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[command] = fut
        try:
            await self._send(self.codec.mav.command_long_encode(
                self.target_system, self.target_component, command, 0, *p))
            try:
                ack = await asyncio.wait_for(fut, self.command_timeout_s)
            except TimeoutError:
                raise TimeoutError(
                    f"no COMMAND_ACK for {enum_name('MAV_CMD', command, '')} "
                    f"within {self.command_timeout_s} s") from None
        finally:
            self._pending.pop(command, None)
        self._sample()
        result = enum_name("MAV_RESULT", ack.result, "MAV_RESULT_")
        return {"ok": ack.result == mavlink.MAV_RESULT_ACCEPTED,
                "command": enum_name("MAV_CMD", command, ""), "result": result}

    async def _arm(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.command_long(mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 1)

    async def _disarm(self, args: dict[str, Any]) -> dict[str, Any]:
        force = FORCE_DISARM_MAGIC if args.get("force") is True else 0
        return await self.command_long(mavlink.MAV_CMD_COMPONENT_ARM_DISARM, 0, force)

    async def _takeoff(self, args: dict[str, Any]) -> dict[str, Any]:
        alt = _number(args, "alt", 0.5, 10000.0)
        return await self.command_long(mavlink.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, math.nan, 0, 0, alt)

    async def _land(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.command_long(mavlink.MAV_CMD_NAV_LAND)

    async def _rtl(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.command_long(mavlink.MAV_CMD_NAV_RETURN_TO_LAUNCH)

    async def _set_mode(self, args: dict[str, Any]) -> dict[str, Any]:
        mode = str(args.get("mode", "")).upper()
        if mode not in COPTER_MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(COPTER_MODES)}")
        return await self.command_long(mavlink.MAV_CMD_DO_SET_MODE,
                                       mavlink.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, COPTER_MODES[mode])

    async def _goto(self, args: dict[str, Any]) -> dict[str, Any]:
        lat = _number(args, "lat", -90.0, 90.0)
        lon = _number(args, "lon", -180.0, 180.0)
        alt = _number(args, "alt", -1000.0, 10000.0)
        await self._send(self.codec.mav.set_position_target_global_int_encode(
            0, self.target_system, self.target_component,
            mavlink.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT, POSITION_TARGET_MASK,
            round(lat * 1e7), round(lon * 1e7), alt, 0, 0, 0, 0, 0, 0, 0, 0))
        self._sample()
        return {"command": "SET_POSITION_TARGET_GLOBAL_INT", "result": "SENT"}


def from_config(t: Table) -> MAVLinkDriver:
    from drivers.serial.params import mavlink_params  # the keys, read where the load-time check reads them

    return MAVLinkDriver(t.name, t.entity, publish_telemetry=t.publish, **mavlink_params(t))
