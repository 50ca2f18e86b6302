"""The DriverContext the runtime gives its drivers: readings into the world, messages onto NATS.

Readings become component updates (``World.set``; an entity a driver names is created on first use
with kind ``device``). Telemetry is best effort (counted drops); events go through the device's
acknowledged event publisher, so none is silently lost.

Commands go through the device's :class:`~edge.nats.commands.CommandRouter`. The hardware layer
registers every verb of every driver (:meth:`RuntimeDriverContext.own`) before the drivers start
and keeps the registration while the driver is stopped, starting, failed or in backoff; the
router then answers that verb at once with the driver's name and state (in backoff: the last
error and the seconds until the retry) instead of leaving the caller without an answer.
``serve`` (called by the driver once its hardware is open) plugs the live handler in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from drivers.base import CommandHandler, Driver, DriverState, Handler, Unsubscribe, Value
from drivers.supervisor import DriverStatus
from edge.errors import DriverError, EdgeError, SchemaError
from edge.hardware.sources import SourceArbiter
from edge.layer import Events
from edge.nats.commands import CommandRequest, CommandRouter, Reason, Unavailable
from edge.world.schema import NAME_RE, ComponentSchema, FieldType, SchemaRegistry
from edge.world.store import World

log = logging.getLogger("edge.hardware")


class RuntimeDriverContext:
    """DriverContext implemented over a World, a NATS connection and the device's publisher."""

    def __init__(self, device: str, world: World, nc: Client, events: Events, commands: CommandRouter) -> None:
        self.device = device
        self.world = world
        self.nc = nc
        self.events = events
        self.commands = commands
        self.rejected = 0
        self._tele = f"edge.{device}.tele."
        self._verbs: dict[tuple[str, str], DriverVerb] = {}
        self.sources: SourceArbiter | None = None  # set by the hardware layer

    def update_from(self, source: str, entity: str, component: str, values: Mapping[str, Value]) -> list[str]:
        """A reading of ``source`` (a driver name): written to the component if that driver is
        its active source, and to ``<component>_<driver>`` once it has several (edge/hardware/sources.py).
        Returns the component names written."""
        names = [component] if self.sources is None else self.sources.route(entity, component, source)
        for name in names:
            self.update(entity, name, values)
        return names

    def update(self, entity: str, component: str, values: Mapping[str, Value]) -> None:
        try:
            if component not in self.world.schemas:
                schema = variant_schema(component, self.world.schemas, values) or infer_schema(component, values)
                self.world.schemas.register(schema)
                log.info("driver component %s registered with fields %s", component, ", ".join(schema.fields))
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

    # -- commands -------------------------------------------------------------------------------

    def own(self, driver: Driver, status: Callable[[str], DriverStatus | None]) -> None:
        """Register every verb of ``driver`` with the router, answered by the driver while it
        serves and with its state (``status(name)``: the supervisor's view) while it does not.
        Raises :class:`~edge.nats.commands.CommandConflict` if another owner has a verb."""
        for verb in driver.commands():
            slot = DriverVerb(driver, verb, status)
            slot.unregister = self.commands.register(
                driver.entity, verb, slot.run, owner=f"driver '{driver.name}'", available=slot.unavailable)
            self._verbs[(driver.entity, verb)] = slot

    def disown_all(self) -> None:
        """Remove every registration made by :meth:`own` (after the drivers are stopped)."""
        for slot in self._verbs.values():
            slot.unregister()
        self._verbs.clear()

    async def serve(self, entity: str, verb: str, handler: CommandHandler) -> Unsubscribe:
        slot = self._verbs.get((entity, verb))
        if slot is None:  # a verb its driver did not declare in commands(): served while it runs
            async def run(request: CommandRequest) -> Mapping[str, Any]:
                return await handler(request.args)

            unregister = self.commands.register(entity, verb, run, owner=f"a driver of '{entity}'")

            async def unserve_dynamic() -> None:
                unregister()

            return unserve_dynamic
        slot.handler = handler

        async def unserve() -> None:
            if slot.handler is handler:
                slot.handler = None

        return unserve


class DriverVerb:
    """One verb of one driver on the router: the live handler (while the driver serves) and the
    availability check that names the driver and its state."""

    def __init__(self, driver: Driver, verb: str, status: Callable[[str], DriverStatus | None]) -> None:
        self.driver = driver
        self.verb = verb
        self.status = status
        self.handler: CommandHandler | None = None
        self.unregister: Callable[[], None] = lambda: None

    async def run(self, request: CommandRequest) -> Mapping[str, Any]:
        handler = self.handler
        if handler is None:  # the router checks availability first; this is the race's guard
            raise DriverError(f"driver '{self.driver.name}' stopped serving '{self.verb}'")
        return await handler(request.args)

    def unavailable(self) -> Unavailable | None:
        d = self.driver
        state = d.state
        if state is DriverState.RUNNING and self.handler is not None:
            return None
        st = self.status(d.name)
        cause = (st.failure_cause if st is not None else None) or d.health().last_error
        retry = st.retry_in_s if st is not None else None
        fields: dict[str, Any] = {"driver": d.name, "kind": d.kind, "where": d.where, "state": str(state),
                                  "last_error": cause}
        who = f"driver '{d.name}' ({d.kind} on {d.where})"
        if state is DriverState.BACKOFF:
            when = f"; retry in {retry:.1f} s" if retry is not None else ""
            fields["retry_in_s"] = None if retry is None else round(retry, 2)
            return Unavailable(Reason.BACKOFF, f"{who} is in backoff after: {cause or 'a failure'}{when}", fields)
        why = f" (last error: {cause})" if cause else ""
        return Unavailable(Reason.DRIVER_DOWN, f"{who} is {state}{why}", fields)


def variant_schema(component: str, schemas: SchemaRegistry, values: Mapping[str, Value]) -> ComponentSchema | None:
    """``battery_1`` (a second pack), ``geo_gps`` (one source's reading): a known component's
    fields under a name ``<known>_<suffix>``, if ``values`` fit them; else None."""
    base, sep, suffix = component.rpartition("_")
    while sep:
        if base in schemas and suffix and set(values) <= set(schemas.get(base).fields):
            known = schemas.get(base)
            return ComponentSchema(component, dict(known.fields), doc=f"{base} ({component})", units=dict(known.units))
        base, sep, _ = base.rpartition("_")
    return None


def infer_schema(component: str, values: Mapping[str, Value]) -> ComponentSchema:
    """A schema for a component a driver introduces (an LED's ``{"value"}``, a button's
    ``{"pressed"}``): types from the first reading; later readings are checked against it."""
    if not NAME_RE.match(component):
        raise SchemaError(f"driver component name {component!r} must match [a-z][a-z0-9_]*", component=component)
    fields: dict[str, FieldType] = {}
    for name, value in values.items():
        fields[name] = "bool" if isinstance(value, bool) else "str" if isinstance(value, str) else "f64"
    return ComponentSchema(component, fields, doc="introduced by a driver")
