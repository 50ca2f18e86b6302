"""A MAVLink ground-station peer for tests: a second serial link to the emulated flight
controller (its ``add_port()``), sending raw standard messages (setpoints, COMMAND_LONG) and
waiting for COMMAND_ACK, written from common.xml rather than with the driver's code."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

from drivers.serial.link import SerialLink
from drivers.serial.mavcodec import MavCodec

PEER_SYSTEM = 250
PEER_COMPONENT = 191
VELOCITY_MASK = 0b0000_1101_1100_0111  # use vx, vy, vz; ignore position, acceleration, yaw, yaw rate
VELOCITY_YAW_MASK = 0b0000_1001_1100_0111  # velocity and yaw
POSITION_MASK = 0b0000_1101_1111_1000  # use x, y, z


class GcsPeer:
    def __init__(self, port: str) -> None:
        self.link = SerialLink(port)
        self.codec = MavCodec(PEER_SYSTEM, PEER_COMPONENT)
        self.received: list[Any] = []
        self._acks: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._stream: asyncio.Task[None] | None = None

    async def open(self) -> GcsPeer:
        await self.link.open()
        self._task = asyncio.create_task(self._read())
        return self

    async def close(self) -> None:
        for t in (self._stream, self._task):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        await self.link.close()

    async def _read(self) -> None:
        while True:
            for msg in self.codec.feed(await self.link.read()):
                self.received.append(msg)
                if msg.get_type() == "COMMAND_ACK" and msg.target_system == PEER_SYSTEM:
                    self._acks.put_nowait(msg)

    async def send(self, msg: Any) -> None:
        await self.link.write(self.codec.encode(msg))

    async def command(self, command: int, *params: float, target_component: int = 1) -> int:
        """COMMAND_LONG; returns the COMMAND_ACK's MAV_RESULT."""
        p = [float(x) for x in params] + [0.0] * (7 - len(params))
        while not self._acks.empty():
            self._acks.get_nowait()
        await self.send(self.codec.mav.command_long_encode(1, target_component, command, 0, *p))
        while True:
            ack = await asyncio.wait_for(self._acks.get(), 3.0)
            if ack.command == command:
                return int(ack.result)

    def local_ned(self, frame: int, mask: int, *, pos: tuple[float, float, float] = (0.0, 0.0, 0.0),
                  vel: tuple[float, float, float] = (0.0, 0.0, 0.0), yaw: float = 0.0,
                  yaw_rate: float = 0.0) -> Any:
        return self.codec.mav.set_position_target_local_ned_encode(
            0, 1, 1, frame, mask, *pos, *vel, 0.0, 0.0, 0.0, yaw, yaw_rate)

    def stream(self, msg: Any, hz: float = 10.0) -> None:
        """Send ``msg`` at ``hz`` until :meth:`stop_stream` (replaces a running stream)."""
        self.stop_stream()

        async def run() -> None:
            while True:
                await self.send(msg)
                await asyncio.sleep(1.0 / hz)

        self._stream = asyncio.create_task(run())

    def stop_stream(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    def last(self, msg_type: str) -> Any:
        for msg in reversed(self.received):
            if msg.get_type() == msg_type:
                return msg
        return None


def takeoff_alt(flavour: str, home_alt: float, above_home: float) -> float:
    """MAV_CMD_NAV_TAKEOFF param7: ArduPilot takes metres above home, PX4 metres AMSL."""
    return above_home if flavour == "ardupilot" else home_alt + above_home


NAN = math.nan
