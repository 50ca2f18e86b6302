"""A test-side MAVLink autopilot peer on a pty, written from common.xml with pymavlink.

It is not an emulator (nothing flies): it decodes every frame the driver sends (kept with its
arrival time), answers COMMAND_LONG with COMMAND_ACK (ACCEPTED unless told otherwise), keeps the
armed flag and custom_mode that ARM_DISARM and DO_SET_MODE ask for, sends HEARTBEATs as ArduPilot
(MAV_AUTOPILOT_ARDUPILOTMEGA, ArduCopter custom modes) or PX4 (MAV_AUTOPILOT_PX4, main mode in bits
16-23 and sub mode in bits 24-31 of custom_mode), refuses PX4 OFFBOARD without a setpoint stream,
and echoes each setpoint as POSITION_TARGET_LOCAL_NED / POSITION_TARGET_GLOBAL_INT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

from pymavlink.dialects.v20 import common as mav

from drivers.serial.link import open_pty

PX4_OFFBOARD = 6 << 16
PX4_POSCTL = 3 << 16
ARDU_GUIDED = 4
ARDU_STABILIZE = 0


@dataclass
class Received:
    t: float
    msg: Any

    @property
    def type(self) -> str:
        return str(self.msg.get_type())


class MavPeer:
    """One autopilot (system 1, component 1) on the master side of a pty."""

    def __init__(self, flavour: str = "ardupilot", *, heartbeat_hz: float = 10.0, echo: bool = True) -> None:
        self.flavour = flavour
        self.heartbeat_hz = heartbeat_hz
        self.echo = echo
        self.armed = False
        self.custom_mode = ARDU_STABILIZE if flavour == "ardupilot" else PX4_POSCTL
        self.results: dict[int, int] = {}  # command -> MAV_RESULT to answer
        self.silent: set[int] = set()  # commands never acked
        self.in_progress: set[int] = set()  # commands first answered IN_PROGRESS
        self.extra_heartbeats: list[tuple[int, int, int]] = []  # (component, type, autopilot)
        self.position_ned = (0.0, 0.0, 0.0)  # reported in LOCAL_POSITION_NED
        self.received: list[Received] = []
        self.dropped = 0  # frames not written: the pty's buffer was full
        self.mav = mav.MAVLink(None, srcSystem=1, srcComponent=1)
        self.port = ""
        self._master = -1
        self._slave = -1
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._master, self._slave, self.port = open_pty()
        loop = asyncio.get_running_loop()
        loop.add_reader(self._master, self._readable)
        if self.heartbeat_hz > 0:
            self._tasks.append(loop.create_task(self._heartbeats()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._master)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- what arrived ---------------------------------------------------------------------------

    def of(self, kind: str, since: float = 0.0) -> list[Received]:
        return [r for r in self.received if r.type == kind and r.t >= since]

    def setpoints(self, since: float = 0.0) -> list[Received]:
        return [r for r in self.received if r.type.startswith("SET_POSITION_TARGET") and r.t >= since]

    def commands(self, command: int | None = None) -> list[Any]:
        return [r.msg for r in self.of("COMMAND_LONG") if command is None or r.msg.command == command]

    async def wait(self, pred: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, "the peer did not see it in time"
            await asyncio.sleep(0.01)

    # -- sending ------------------------------------------------------------------------------

    def send(self, msg: Any, *, component: int = 1) -> None:
        self.mav.srcComponent = component
        try:
            os.write(self._master, msg.pack(self.mav))
        except BlockingIOError:  # nobody reads the other end: dropped, as on a UART
            self.dropped += 1
        finally:
            self.mav.srcComponent = 1
        self.mav.seq = (self.mav.seq + 1) % 256

    def heartbeat(self) -> None:
        autopilot = mav.MAV_AUTOPILOT_ARDUPILOTMEGA if self.flavour == "ardupilot" else mav.MAV_AUTOPILOT_PX4
        base = mav.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED | (mav.MAV_MODE_FLAG_SAFETY_ARMED if self.armed else 0)
        self.send(self.mav.heartbeat_encode(mav.MAV_TYPE_QUADROTOR, autopilot, base, self.custom_mode,
                                            mav.MAV_STATE_ACTIVE if self.armed else mav.MAV_STATE_STANDBY))
        for component, kind, ap in self.extra_heartbeats:
            self.send(self.mav.heartbeat_encode(kind, ap, 0, 12345, mav.MAV_STATE_ACTIVE), component=component)

    async def _heartbeats(self) -> None:
        while True:
            self.heartbeat()
            # alt 500 m AMSL, on the ground at home
            self.send(self.mav.global_position_int_encode(0, 473977420, 85455940, 500_000, 0, 0, 0, 0, 0))
            self.send(self.mav.local_position_ned_encode(0, *self.position_ned, 0, 0, 0))
            await asyncio.sleep(1.0 / self.heartbeat_hz)

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:
            return
        now = time.monotonic()
        for msg in self.mav.parse_buffer(data) or []:
            self.received.append(Received(now, msg))
            self._answer(msg)

    def _answer(self, msg: Any) -> None:
        t = msg.get_type()
        if t == "COMMAND_LONG":
            self._command(msg)
        elif t == "SET_POSITION_TARGET_LOCAL_NED" and self.echo:
            self.send(self.mav.position_target_local_ned_encode(
                msg.time_boot_ms, msg.coordinate_frame, msg.type_mask, msg.x, msg.y, msg.z, msg.vx, msg.vy,
                msg.vz, msg.afx, msg.afy, msg.afz, msg.yaw, msg.yaw_rate))
        elif t == "SET_POSITION_TARGET_GLOBAL_INT" and self.echo:
            self.send(self.mav.position_target_global_int_encode(
                msg.time_boot_ms, msg.coordinate_frame, msg.type_mask, msg.lat_int, msg.lon_int, msg.alt,
                msg.vx, msg.vy, msg.vz, msg.afx, msg.afy, msg.afz, msg.yaw, msg.yaw_rate))

    def _command(self, msg: Any) -> None:
        cmd = msg.command
        if cmd in self.silent:
            return
        result = self.results.get(cmd, mav.MAV_RESULT_ACCEPTED)
        if cmd == mav.MAV_CMD_DO_SET_MODE and result == mav.MAV_RESULT_ACCEPTED:
            if self.flavour == "px4":
                mode = int(msg.param2) << 16 | int(msg.param3) << 24
                recent = self.setpoints(time.monotonic() - 0.5)
                if mode == PX4_OFFBOARD and len(recent) < 2:  # PX4: no stream, no OFFBOARD
                    result = mav.MAV_RESULT_DENIED
                else:
                    self.custom_mode = mode
            else:
                self.custom_mode = int(msg.param2)
        elif cmd == mav.MAV_CMD_COMPONENT_ARM_DISARM and result == mav.MAV_RESULT_ACCEPTED:
            self.armed = msg.param1 == 1
        if cmd in self.in_progress:
            self.send(self.mav.command_ack_encode(cmd, mav.MAV_RESULT_IN_PROGRESS, 50, 0, 255, 190))
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, lambda: self.send(self.mav.command_ack_encode(cmd, result, 100, 0, 255, 190)))
            return
        self.send(self.mav.command_ack_encode(cmd, result, 0, 0, 255, 190))
        if result == mav.MAV_RESULT_ACCEPTED:
            self.heartbeat()  # the new state at once
