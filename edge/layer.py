"""The one contract every part of a running device plugs into.

Key components
- :class:`DeviceContext`: what every layer is handed at start (frozen): the device id, its NATS
  connection and JetStream context, the world, the embedded server (or None), the data dir, and
  the device's acknowledged event publisher, and its command router (where a layer registers the
  commands it serves; :mod:`edge.nats.commands`).
- :class:`Layer`: ``name`` (also its section in ``edge status``), ``start(ctx)``, ``stop()``,
  ``status()``. A layer gets its collaborators at construction, typed, from the composition root
  (:mod:`edge.runtime`); it never imports the runtime and never looks anything up on it.
- :class:`LayerStack`: starts layers in order and stops them in reverse, each step under a
  timeout, collecting every error instead of letting the first hide the rest.

Example
    class Blinker:
        name = "blinker"
        async def start(self, ctx: DeviceContext) -> None: ...
        async def stop(self) -> None: ...
        def status(self) -> dict[str, Any]: return {}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from nats.aio.client import Client
from nats.js.client import JetStreamContext

from edge.errors import LifecycleError
from edge.tasks import bounded
from edge.world.store import World

if TYPE_CHECKING:
    from edge.nats.commands import CommandRouter
    from edge.nats.server import NatsServer

__all__ = ["DEFAULT_STOP_TIMEOUT_S", "DeviceContext", "Events", "Layer", "LayerStack", "LifecycleError"]

log = logging.getLogger("edge.layer")

#: Seconds one layer's stop() may take before it is abandoned and reported.
DEFAULT_STOP_TIMEOUT_S = 10.0


class Events(Protocol):
    """The device's publishing path (:class:`edge.nats.events.DeviceEvents`).

    ``emit`` (events, detections, command answers, decisions) never blocks and never raises for
    a full outbox: it queues the message for JetStream with a message id (deduplicated by the
    stream), retried until acknowledged; overflow is counted. ``telemetry`` is best effort (a
    core publish captured by the ``TELE`` stream), its drops counted.
    """

    def emit(self, subject: str, data: bytes, *, msg_id: str | None = None,
             headers: Mapping[str, str] | None = None) -> None: ...

    async def telemetry(self, subject: str, data: bytes) -> None: ...


@dataclass(frozen=True)
class DeviceContext:
    """What a layer knows of the device. Built once by the composition root, after NATS is
    connected and the world restored, and handed to every layer's ``start``."""

    device: str
    nc: Client
    js: JetStreamContext
    world: World
    data_dir: Path
    events: Events
    commands: CommandRouter
    server: NatsServer | None = None


@runtime_checkable
class Layer(Protocol):
    """One part of the device with a lifecycle.

    MUST: ``name`` (a short identifier, the section of ``edge status``); ``start(ctx)`` that
    returns once the layer serves (raise an :class:`~edge.errors.EdgeError` to refuse to start);
    ``stop()`` that releases everything ``start`` acquired and is safe to call if ``start``
    failed or never ran; ``status()`` returning JSON-serialisable data, cheap and never raising.
    """

    name: str

    async def start(self, ctx: DeviceContext) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> Any: ...


class LayerStack:
    """An ordered list of layers: started in order, stopped in reverse."""

    def __init__(self, layers: Sequence[Layer], *, stop_timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        names = [layer.name for layer in layers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise LifecycleError(f"two layers are named '{dupes[0]}'; layer names are status sections")
        self.layers = list(layers)
        self.stop_timeout = stop_timeout
        self._started: list[Layer] = []

    def __iter__(self) -> Any:
        return iter(self.layers)

    async def start(self, ctx: DeviceContext) -> None:
        """Start every layer in order. If one fails, the started ones are stopped (in reverse)
        and the failure is raised."""
        if self._started:
            raise LifecycleError("the layers are already started; stop them before starting again")
        for layer in self.layers:
            try:
                await layer.start(ctx)
            except BaseException:
                self._started.append(layer)  # a half-started layer gets its stop() too
                errors = await self.stop()
                for err in errors:
                    log.error("stopping after a failed start: %s", err)
                raise
            self._started.append(layer)
            log.debug("layer %s started", layer.name)

    async def stop(self) -> list[str]:
        """Stop the started layers in reverse, each within ``stop_timeout`` (a layer that overruns it
        is cancelled and, if it does not end within a second, left behind); returns the errors."""
        errors: list[str] = []
        while self._started:
            layer = self._started.pop()
            try:
                await bounded(layer.stop(), self.stop_timeout)
            except TimeoutError:
                errors.append(f"{layer.name}: did not stop within {self.stop_timeout:g} s")
            except Exception as err:  # noqa: BLE001  collected: one failure must not hide the rest
                errors.append(f"{layer.name}: {type(err).__name__}: {err}")
        return errors

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for layer in self.layers:
            try:
                out[layer.name] = layer.status()
            except Exception as err:  # noqa: BLE001  status must never take the API down
                out[layer.name] = {"error": f"{type(err).__name__}: {err}"}
        return out
