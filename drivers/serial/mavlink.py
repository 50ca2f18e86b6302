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

  Commands (``edge.<device>.cmd.<entity>.<verb>``, JSON; :mod:`drivers.serial.mavcommands`):
  ``arm``, ``disarm`` (``force``), ``takeoff`` (``alt`` m above home), ``land``, ``rtl``,
  ``hold``, ``set_mode`` (``mode``: an ArduCopter or PX4 name), ``velocity`` (``x``, ``y``, ``z``
  m/s, ``frame`` local ENU or body FLU, ``yaw_rate`` deg/s), ``position`` (``x``, ``y``, ``z`` m
  ENU, ``yaw`` deg), ``goto`` (``lat``, ``lon`` deg, ``alt`` m above home), ``yaw`` (``yaw``
  deg, ``rate``, ``direction``, ``relative``), ``yaw_rate`` (``rate`` deg/s). COMMAND_LONG verbs
  are answered by the COMMAND_ACK (``result``: the MAV_RESULT word); setpoints are streamed at
  ``setpoint_hz`` and answered by the autopilot's echo (``result``: TRACKING or UNCONFIRMED).
  The flavour (ArduPilot or PX4) comes from the autopilot's HEARTBEAT or ``autopilot``.
  Decoding (which component is the autopilot, packs, unknown sentinels, rate counters) is
  :mod:`drivers.serial.mavtelemetry`; ``details()`` shows it in ``edge status``.

- Bytes that are not MAVLink are counted (``bad_bytes``) and skipped; the parser resyncs.
- No HEARTBEAT for ``link_timeout_s`` fails the driver (the supervisor reopens the port).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from drivers.base import CommandHandler, Driver
from drivers.config import Table
from drivers.serial import mavcommands
from drivers.serial.link import DEFAULT_BAUD, SerialLink
from drivers.serial.mavcodec import MavCodec, mavlink
from drivers.serial.mavcommands import MavCommander
from drivers.serial.mavtelemetry import TelemetryDecoder
from edge.errors import DriverError

DEFAULT_HEARTBEAT_S = 1.0  # seconds between our GCS heartbeats
DEFAULT_LINK_TIMEOUT_S = 5.0  # seconds without an autopilot heartbeat before the link is lost
DEFAULT_COMMAND_TIMEOUT_S = mavcommands.DEFAULT_COMMAND_TIMEOUT_S  # seconds to wait for a COMMAND_ACK
DEFAULT_TELEMETRY_HZ = 10.0
GCS_SYSTEM_ID = 255
GCS_COMPONENT_ID = 190  # MAV_COMP_ID_MISSIONPLANNER
UINT16_MAX = 65535
STREAMED = ("GLOBAL_POSITION_INT", "LOCAL_POSITION_NED", "ATTITUDE", "SYS_STATUS", "BATTERY_STATUS",
            "POSITION_TARGET_LOCAL_NED")


class MAVLinkDriver(Driver):
    kind: ClassVar[str] = "mavlink"
    vehicle: ClassVar[bool] = True

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
        autopilot: str = "auto",
        setpoint_hz: float = mavcommands.DEFAULT_SETPOINT_HZ,
        setpoint_timeout_s: float = mavcommands.DEFAULT_SETPOINT_TIMEOUT_S,
        confirm_timeout_s: float = mavcommands.DEFAULT_CONFIRM_TIMEOUT_S,
        px4_prestream_s: float = mavcommands.DEFAULT_PX4_PRESTREAM_S,
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
        self._autopilot = mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA
        self.telemetry = TelemetryDecoder(target_component)
        self.commander = MavCommander(
            send=self._send, mav=lambda: self.codec.mav, event=self._event, target_system=target_system,
            target_component=target_component, autopilot=autopilot, setpoint_hz=setpoint_hz,
            setpoint_timeout_s=setpoint_timeout_s, confirm_timeout_s=confirm_timeout_s,
            px4_prestream_s=px4_prestream_s, command_timeout_s=command_timeout_s)

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
        self.commander.reset()
        self.link = self._given_link or SerialLink(self.port, self.baudrate)
        await self.link.open()
        self._spawn(self._reader(), "reader")
        self._spawn(self._heartbeats(), "heartbeat")
        self._spawn(self.commander.stream(), "setpoints")
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
                self.target_system, self.commander.component, mavlink.MAV_CMD_SET_MESSAGE_INTERVAL,
                0, msg_id, interval_us, 0, 0, 0, 0, 0))

    def commands(self) -> dict[str, CommandHandler]:
        return {verb: self._counted(handler) for verb, handler in self.commander.verbs().items()}

    def _counted(self, handler: CommandHandler) -> CommandHandler:
        async def run(args: dict[str, Any]) -> dict[str, Any]:
            out = await handler(args)
            self._sample()
            return out

        return run

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
        self.commander.close()  # the stream stops with the link: a reconnect needs a fresh command
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
        self.commander.observe(msg)  # commands: flavour, mode, COMMAND_ACK, setpoint echoes
        t = msg.get_type()
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
        """For ``edge status``: the command side (flavour, mode, what streams, setpoints sent,
        stream gaps) and the telemetry side (the autopilot component, the other components heard,
        the battery packs, a count and rate per message type)."""
        return {**self.commander.status(), **self.telemetry.status()}

    # ----- commands --------------------------------------------------------------------------------

    async def command_long(self, command: int, *params: float) -> dict[str, Any]:
        """Send COMMAND_LONG and wait for its COMMAND_ACK; returns the answer fields."""
        return await self.commander.command_long(command, *params)


def from_config(t: Table) -> MAVLinkDriver:
    from drivers.serial.params import mavlink_params  # the keys, read where the load-time check reads them

    return MAVLinkDriver(t.name, t.entity, publish_telemetry=t.publish, **mavlink_params(t))
