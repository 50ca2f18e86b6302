"""``DemoPilot``: flies the demo's emulated drone (drone-0) through its flight controller.

At start it launches the drone the way a pilot would, through the flight-controller driver's own
command verbs (``set_mode`` GUIDED, ``arm``, ``takeoff`` to ``takeoff_alt`` m), retrying while the
driver is not up yet. It then serves ``velocity`` (``{x, y, z}`` m/s ENU) and ``hold`` for that
entity, as standard MAVLink on the emulated flight controller's second serial port
(``EmulatorsDriver.companion_port``, like a companion computer on TELEM2):
SET_POSITION_TARGET_LOCAL_NED in MAV_FRAME_LOCAL_NED with only the velocity used, streamed at
``stream_hz`` while a velocity is active (ArduCopter stops a velocity it has not heard for 3 s);
``hold`` sends zero velocity once and stops the stream.

Which one flies velocity: :func:`edge.demo.fleet.demo_parts` adds the pilot's velocity verbs only
when the flight-controller driver does not declare ``velocity`` in its ``commands()``
(:func:`edge.demo.fleet.velocity_via`). The MAVLink driver has its own (streamed setpoints behind
the safety envelope), so in the demo the pilot only launches; the velocity verbs remain for a
flight-controller driver without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from drivers.serial.link import SerialLink
from drivers.serial.mavcodec import MavCodec, mavlink
from edge.backoff import Backoff
from edge.errors import EdgeError
from edge.layer import DeviceContext
from edge.nats import subjects
from edge.nats.commands import CommandRequest

log = logging.getLogger("edge.demo.pilot")

DEFAULT_TAKEOFF_ALT_M = 10.0
DEFAULT_STREAM_HZ = 10.0
DEFAULT_MAX_SPEED = 5.0  # m/s per axis; larger velocity commands are refused
LAUNCH_TIMEOUT_S = 5.0  # s for one launch command's answer
#: Who the launch commands are from (``Edge-Caller``: ``caller:demo-pilot`` at the policy point).
CALLER = "demo-pilot"
VELOCITY_MASK = 0b0000_1101_1100_0111  # POSITION_TARGET_TYPEMASK: use vx, vy, vz only
COMPANION_SYSTEM = 1  # a companion computer on the vehicle's own system id
COMPANION_COMPONENT = mavlink.MAV_COMP_ID_ONBOARD_COMPUTER


class PilotRefused(EdgeError):
    """A velocity command the demo pilot cannot fly (bad numbers, link down)."""


class DemoPilot:
    """Launches drone-0 and (until the driver has its own) flies its velocity commands."""

    name = "demo_pilot"

    def __init__(self, entity: str, port: Callable[[], str], *, serve_velocity: bool = True,
                 takeoff_alt: float = DEFAULT_TAKEOFF_ALT_M, stream_hz: float = DEFAULT_STREAM_HZ,
                 max_speed: float = DEFAULT_MAX_SPEED) -> None:
        self.entity = entity
        self.port = port  # the emulator's companion port (a stable symlink), read when connecting
        self.serve_velocity = serve_velocity
        self.takeoff_alt = takeoff_alt
        self.stream_hz = stream_hz
        self.max_speed = max_speed
        self.codec = MavCodec(COMPANION_SYSTEM, COMPANION_COMPONENT)
        self.velocity: tuple[float, float, float] | None = None  # ENU m/s being streamed
        self.launched = False
        self.launch_error: str | None = None
        self.sent = 0
        self.applied = 0
        self.refused = 0
        self.link_errors = 0
        self._link: SerialLink | None = None
        self._ctx: DeviceContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unregister: list[Callable[[], None]] = []

    async def start(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        if self.serve_velocity:
            for verb in ("velocity", "hold"):
                self._unregister.append(ctx.commands.register(self.entity, verb, self._on_cmd,
                                                              owner="the demo pilot"))
            self._tasks.append(asyncio.create_task(self._stream(), name="demo-pilot-stream"))
        self._tasks.append(asyncio.create_task(self._launch(ctx), name="demo-pilot-launch"))

    async def stop(self) -> None:
        for unregister in self._unregister:
            unregister()
        self._unregister.clear()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self._drop_link()

    def status(self) -> dict[str, Any]:
        return {"entity": self.entity, "launched": self.launched, "launch_error": self.launch_error,
                "velocity": None if self.velocity is None else dict(zip("xyz", self.velocity, strict=True)),
                "setpoints_sent": self.sent, "applied": self.applied, "refused": self.refused,
                "link_errors": self.link_errors, "serves_velocity": self.serve_velocity}

    # -- launch ---------------------------------------------------------------------------------
    async def _launch(self, ctx: DeviceContext) -> None:
        backoff = Backoff(0.5, 5.0)
        steps: list[tuple[str, Mapping[str, Any]]] = [
            ("set_mode", {"mode": "GUIDED"}), ("arm", {}), ("takeoff", {"alt": self.takeoff_alt})]
        i = 0
        while i < len(steps):
            verb, args = steps[i]
            try:
                msg = await ctx.nc.request(subjects.command(ctx.device, self.entity, verb),
                                           json.dumps(args).encode(), timeout=LAUNCH_TIMEOUT_S,
                                           headers={subjects.CALLER_HEADER: CALLER})
                answer = json.loads(msg.data)
            except Exception as exc:  # noqa: BLE001 - no answer yet (driver starting): retry
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            if answer.get("ok"):
                i += 1
                continue
            self.launch_error = f"{verb}: {answer.get('error') or answer.get('result')}"
            await asyncio.sleep(backoff.next())
        self.launched = True
        self.launch_error = None
        log.info("demo drone %s launched to %.0f m", self.entity, self.takeoff_alt)

    # -- velocity -------------------------------------------------------------------------------
    async def _on_cmd(self, cmd: CommandRequest) -> dict[str, Any]:
        if cmd.verb == "hold":
            self.velocity = None
            await self._send_velocity((0.0, 0.0, 0.0))
            self.applied += 1
            return {"velocity": {"x": 0.0, "y": 0.0, "z": 0.0}, "sent": "SET_POSITION_TARGET_LOCAL_NED"}
        v = []
        for axis in ("x", "y", "z"):
            value = cmd.args.get(axis, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                self.refused += 1
                raise PilotRefused(f"velocity.{axis} must be a number (m/s)", entity=self.entity)
            if abs(value) > self.max_speed:
                self.refused += 1
                raise PilotRefused(f"velocity.{axis} {value} exceeds {self.max_speed} m/s", entity=self.entity)
            v.append(float(value))
        self.velocity = (v[0], v[1], v[2])
        await self._send_velocity(self.velocity)
        self.applied += 1
        return {"velocity": dict(zip("xyz", v, strict=True)), "sent": "SET_POSITION_TARGET_LOCAL_NED"}

    async def _send_velocity(self, v: tuple[float, float, float]) -> None:
        east, north, up = v
        msg = self.codec.mav.set_position_target_local_ned_encode(
            0, 1, 1, mavlink.MAV_FRAME_LOCAL_NED, VELOCITY_MASK, 0, 0, 0, north, east, -up, 0, 0, 0, 0, 0)
        try:
            link = await self._connect()
            await link.write(self.codec.encode(msg))
            self.sent += 1
        except OSError as exc:
            self.link_errors += 1
            await self._drop_link()
            raise PilotRefused(f"flight controller link {self.port()} down: {exc}", entity=self.entity) from exc

    async def _connect(self) -> SerialLink:
        if self._link is None:
            link = SerialLink(self.port())
            await link.open()
            self._link = link
            self._tasks.append(asyncio.create_task(self._drain(link), name="demo-pilot-drain"))
        return self._link

    async def _drain(self, link: SerialLink) -> None:
        """Read (and discard) the telemetry the port streams, so the emulator's buffer never fills."""
        with contextlib.suppress(Exception):
            while True:
                await link.read()

    async def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(Exception):
                await link.close()

    async def _stream(self) -> None:
        while True:
            await asyncio.sleep(1.0 / self.stream_hz)
            if self.velocity is not None:
                with contextlib.suppress(PilotRefused):
                    await self._send_velocity(self.velocity)
