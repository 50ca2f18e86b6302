"""The runtime side of the hardware drivers: a DriverContext over the world and NATS, and the
supervised set of drivers as a runtime layer (``edge status`` section ``drivers``).

Driver readings become component updates (``World.set``; an entity a driver names is created on
first use with kind ``device``) and telemetry/events on NATS; commands reach drivers through NATS
subscriptions on ``edge.<device>.cmd.<entity>.<verb>``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from drivers.base import Driver, Handler, Unsubscribe, Value
from drivers.camera.frames import LatestFrame
from drivers.supervisor import DriverSupervisor
from edge.errors import ConfigError, DriverError, EdgeError, SchemaError
from edge.world.schema import NAME_RE, ComponentSchema, FieldType
from edge.world.store import World

if TYPE_CHECKING:
    from edge.runtime import Runtime

log = logging.getLogger("edge.hardware")


class RuntimeDriverContext:
    """DriverContext implemented over a World and a NATS connection."""

    def __init__(self, device: str, world: World, nc: Client) -> None:
        self.device = device
        self.world = world
        self.nc = nc
        self.rejected = 0

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
        await self.nc.publish(subject, payload)

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


def build_drivers(tables: list[dict[str, Any]], *, file: str | None) -> list[Driver]:
    """Drivers from the config's ``[[drivers]]`` tables (each needs a unique ``name``)."""
    from drivers.config import build_driver

    out: list[Driver] = []
    seen: set[str] = set()
    for i, table in enumerate(tables):
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError("every driver needs a name", key=f"drivers[{i}].name", file=file)
        if name in seen:
            raise ConfigError(f"driver name {name!r} is used twice", key=f"drivers[{i}].name", file=file)
        seen.add(name)
        out.append(build_driver(name, table, file=file))
    return out


class HardwareLayer:
    """Starts, supervises and stops the device's drivers."""

    status_section = "drivers"

    def __init__(self, drivers: list[Driver]) -> None:
        self.drivers = drivers
        self.supervisor: DriverSupervisor | None = None

    async def start(self, runtime: Runtime) -> None:
        assert runtime.nc is not None
        ctx = RuntimeDriverContext(runtime.device, runtime.world, runtime.nc)
        self.supervisor = DriverSupervisor(ctx, self.drivers)
        await self.supervisor.start()
        log.info("%d drivers started", len(self.drivers))

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()

    def status(self) -> list[dict[str, Any]]:
        if self.supervisor is None:
            return []
        return [s.to_dict() for s in self.supervisor.status()]

    def frames(self, camera: str | None = None) -> LatestFrame | None:
        """The latest-frame slot of a camera driver (the first camera if no name is given)."""
        for d in self.drivers:
            slot = getattr(d, "frames", None)
            if isinstance(slot, LatestFrame) and (camera is None or d.name == camera):
                return slot
        return None
