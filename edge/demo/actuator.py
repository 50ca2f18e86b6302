"""``SimActuator``: executes flight commands on simulated entities so commands get acknowledged.

On a real drone a flight-controller driver serves ``edge.<d>.cmd.<entity>.<verb>``. The demo
fleet has none, so this extra stands in for it on entities of the world (by default those of kind
``drone``):

* ``velocity`` ``{x, y, z}`` (m/s, ENU) -> the ``velocity`` component;
* ``hold`` ``{}`` -> velocity 0;
* ``rtl`` ``{}`` -> ``flight.mode = "RTL"`` and velocity toward the launch point (the origin)
  at ``rtl_speed`` m/s, horizontal only.

A command takes the entity off its demo patrol (the ``patrol`` component is removed), as a pilot
taking over would. The actuator registers with the device's command router for any entity
(``"*"``) of its verbs, so an entity with its own driver for a verb (the demo's ``drone-0`` and its
flight controller's ``rtl``) is served by that driver. Every command is answered (and recorded on
``edge.<d>.ack.<entity>.<verb>``) with ``{"ok": true, "id": ..., "velocity": ...}`` or
``{"ok": false, "id": ..., "error": "...", "reason": "failed"}``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from edge.errors import EdgeError
from edge.world.schema import is_finite_number
from edge.layer import DeviceContext
from edge.nats.commands import CommandRequest
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
        self._unregister: list[Callable[[], None]] = []

    async def start(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        for verb in VERBS:
            self._unregister.append(ctx.commands.register("*", verb, self._on_cmd, owner="the demo actuator"))

    async def stop(self) -> None:
        regs, self._unregister = self._unregister, []
        for unregister in regs:
            unregister()

    def status(self) -> dict[str, Any]:
        return {"applied": self.applied, "refused": self.refused, "last_error": self.last_error}

    async def _on_cmd(self, cmd: CommandRequest) -> dict[str, Any]:
        rt = self._ctx
        if rt is None:
            raise CommandRefused("the demo actuator is not started")
        try:
            result = self.apply(rt.world, cmd.entity, cmd.verb, cmd.args)
        except (EdgeError, ValueError) as err:
            self.refused += 1
            self.last_error = str(err)
            raise
        self.applied += 1
        return result

    def apply(self, world: World, entity: str, verb: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one command to ``world``; returns the ack fields."""
        if entity not in world or (self.kind is not None and world.meta(entity).kind != self.kind):
            raise CommandRefused(f"no simulated {self.kind or 'entity'} '{entity}'", entity=entity)
        if verb == "velocity":
            v = {axis: args.get(axis, 0.0) for axis in ("x", "y", "z")}
            for axis, value in v.items():
                if not is_finite_number(value):
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
