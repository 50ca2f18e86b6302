"""The DriverContext the runtime gives its drivers: readings into the world, messages onto NATS.

Readings become component updates (``World.set``; an entity a driver names is created on first use
with kind ``device``). Telemetry is best effort (counted drops); events and command acks go
through the device's acknowledged event publisher, so none is silently lost.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg

from drivers.base import Handler, Unsubscribe, Value
from edge.errors import DriverError, EdgeError, SchemaError
from edge.layer import Events
from edge.world.schema import NAME_RE, ComponentSchema, FieldType
from edge.world.store import World

log = logging.getLogger("edge.hardware")


class RuntimeDriverContext:
    """DriverContext implemented over a World, a NATS connection and the device's publisher."""

    def __init__(self, device: str, world: World, nc: Client, events: Events) -> None:
        self.device = device
        self.world = world
        self.nc = nc
        self.events = events
        self.rejected = 0
        self._tele = f"edge.{device}.tele."

    def update(self, entity: str, component: str, values: Mapping[str, Value]) -> None:
        try:
            if component not in self.world.schemas:
                self.world.schemas.register(infer_schema(component, values))
                log.info("driver component %s registered with fields %s", component, ", ".join(values))
            if entity not in self.world:
                self.world.spawn(entity, "device")
            self.world.set(entity, component, values)
        except EdgeError as err:
            self.rejected += 1
            raise DriverError(f"update of {entity}.{component} refused: {err.message}", cause=err.message) from err

    async def publish(self, subject: str, payload: bytes) -> None:
        if subject.startswith(self._tele):
            await self.events.telemetry(subject, payload)
        else:
            self.events.emit(subject, payload)

    async def subscribe(self, subject: str, handler: Handler) -> Unsubscribe:
        async def on_msg(msg: Msg) -> None:
            await handler(msg.subject, msg.data)

        sub = await self.nc.subscribe(subject, cb=on_msg)
        return sub.unsubscribe


def infer_schema(component: str, values: Mapping[str, Value]) -> ComponentSchema:
    """A schema for a component a driver introduces (an LED's ``{"value"}``, a button's
    ``{"pressed"}``): types from the first reading; later readings are checked against it."""
    if not NAME_RE.match(component):
        raise SchemaError(f"driver component name {component!r} must match [a-z][a-z0-9_]*", component=component)
    fields: dict[str, FieldType] = {}
    for name, value in values.items():
        fields[name] = "bool" if isinstance(value, bool) else "str" if isinstance(value, str) else "f64"
    return ComponentSchema(component, fields, doc="introduced by a driver")
