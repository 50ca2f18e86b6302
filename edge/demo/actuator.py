"""``SimActuator``: executes flight commands on simulated entities so commands get acknowledged.

On a real drone a flight-controller driver serves ``edge.<d>.cmd.<entity>.<verb>``. The demo
fleet has none, so this extra stands in for it on entities of the world (by default those of kind
``drone``):

* ``velocity`` ``{x, y, z}`` (m/s, ENU) -> the ``velocity`` component;
* ``hold`` ``{}`` -> velocity 0;
* ``rtl`` ``{}`` -> ``flight.mode = "RTL"`` and velocity toward the launch point (the origin)
  at ``rtl_speed`` m/s, horizontal only.

A command takes the entity off its demo patrol (the ``patrol`` component is removed), as a pilot
taking over would. Every command is acknowledged on ``edge.<d>.ack.<entity>.<verb>`` with
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from edge.nats import subjects
from edge.errors import EdgeError
from edge.layer import DeviceContext
from edge.world.store import World

log = logging.getLogger("edge.demo.actuator")

DEFAULT_RTL_SPEED = 3.0  # m/s
DEFAULT_MAX_SPEED = 15.0  # m/s per axis; larger velocity commands are refused
VERBS = ("velocity", "hold", "rtl")


class CommandRefused(EdgeError):
    """A command could not be applied (unknown entity, bad arguments)."""


class SimActuator:
    """Applies ``velocity`` / ``hold`` / ``rtl`` commands to the world (a demo layer)."""

    name = "actuator"

    def __init__(self, *, kind: str | None = "drone", rtl_speed: float = DEFAULT_RTL_SPEED,
                 max_speed: float = DEFAULT_MAX_SPEED) -> None:
        self.kind = kind
        self.rtl_speed = rtl_speed
        self.max_speed = max_speed
        self.applied = 0
        self.refused = 0
        self.last_error: str | None = None
        self._ctx: DeviceContext | None = None
        self._subs: list[Subscription] = []

    async def start(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        for verb in VERBS:
            subject = subjects.command(ctx.device, "*", verb)
            self._subs.append(await ctx.nc.subscribe(subject, cb=self._on_cmd))

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001  connection already closed
                pass

    def status(self) -> dict[str, Any]:
        return {"applied": self.applied, "refused": self.refused, "last_error": self.last_error}

    async def _on_cmd(self, msg: Msg) -> None:
        rt = self._ctx
        if rt is None:
            return
        parts = msg.subject.split(".")
        entity, verb = parts[3], parts[4]
        try:
            args = json.loads(msg.data) if msg.data.strip() else {}
            if not isinstance(args, Mapping):
                raise CommandRefused("command arguments must be a JSON object")
            result = self.apply(rt.world, entity, verb, args)
            ack: dict[str, Any] = {"ok": True, **result}
            self.applied += 1
        except (EdgeError, ValueError) as err:
            self.refused += 1
            self.last_error = str(err)
            ack = {"ok": False, "error": str(err)}
        rt.events.emit(subjects.ack(rt.device, entity, verb), json.dumps(ack).encode())

    def apply(self, world: World, entity: str, verb: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one command to ``world``; returns the ack fields."""
        if entity not in world or (self.kind is not None and world.meta(entity).kind != self.kind):
            raise CommandRefused(f"no simulated {self.kind or 'entity'} '{entity}'", entity=entity)
        if verb == "velocity":
            v = {axis: args.get(axis, 0.0) for axis in ("x", "y", "z")}
            for axis, value in v.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise CommandRefused(f"velocity.{axis} must be a number (m/s)")
                if abs(value) > self.max_speed:
                    raise CommandRefused(f"velocity.{axis} {value} exceeds {self.max_speed} m/s")
        elif verb == "hold":
            v = {"x": 0.0, "y": 0.0, "z": 0.0}
        elif verb == "rtl":
            pos = world.get(entity, "position") if world.has(entity, "position") else {"x": 0.0, "y": 0.0}
            dist = math.hypot(pos["x"], pos["y"])
            scale = self.rtl_speed / dist if dist > 1e-6 else 0.0
            v = {"x": -pos["x"] * scale, "y": -pos["y"] * scale, "z": 0.0}
            world.set(entity, "flight", {"mode": "RTL"})
        else:
            raise CommandRefused(f"unknown verb '{verb}'")
        if world.has(entity, "patrol"):
            world.unset(entity, "patrol")
        world.set(entity, "velocity", v)
        return {"velocity": world.get(entity, "velocity")}
