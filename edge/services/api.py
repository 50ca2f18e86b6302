"""The device API: entities, components and status over NATS request/reply.

Every endpoint lives under ``edge.<device>.api.`` and takes and returns JSON. A success is
``{"ok": true, "result": ...}``; a refusal is ``{"ok": false, "error": {"error": "EntityError",
"message": "...", ...fields}}`` with the micro service error headers set (400 for bad requests,
500 for internal errors). Subjects are listed in docs/subjects.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from edge import subjects
from edge.errors import EdgeError
from edge.world.store import World

log = logging.getLogger("edge.services.api")

SERVICE_NAME = "edge-device"
SERVICE_VERSION = "1.0.0"

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class RequestError(EdgeError):
    """A request to the device API is malformed."""


class RuntimeOps(Protocol):
    """What the API needs from the running runtime besides the world."""

    async def load_component(self, manifest: str) -> dict[str, Any]: ...
    async def unload_component(self, name: str) -> None: ...
    def components_status(self) -> list[dict[str, Any]]: ...
    def status(self) -> dict[str, Any]: ...


@dataclass
class Endpoint:
    group: str
    name: str
    handler: Handler
    doc: str


def _need(body: dict[str, Any], key: str, kind: type = str) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or (kind is str and not value):
        raise RequestError(f"request needs '{key}' ({kind.__name__})", key=key)
    return value


class DeviceApi:
    """Builds the endpoints over a world and the runtime's operations and serves them."""

    def __init__(self, device: str, world: World, ops: RuntimeOps) -> None:
        self.device = device
        self.world = world
        self.ops = ops
        self._service: Service | None = None
        self.endpoints = [
            Endpoint("entity", "list", self.entity_list, "List entities; filter by kind and labels."),
            Endpoint("entity", "get", self.entity_get, "One entity with all its components."),
            Endpoint("entity", "spawn", self.entity_spawn, "Create an entity with components."),
            Endpoint("entity", "set", self.entity_set, "Merge fields into one component."),
            Endpoint("entity", "unset", self.entity_unset, "Remove one component from an entity."),
            Endpoint("entity", "rm", self.entity_rm, "Remove an entity."),
            Endpoint("component", "list", self.component_list, "WebAssembly components and their state."),
            Endpoint("component", "load", self.component_load, "Load a component from a manifest path."),
            Endpoint("component", "unload", self.component_unload, "Unload a component by name."),
            Endpoint("schema", "list", self.schema_list, "Component types known on the device."),
            Endpoint("status", "get", self.status, "Runtime status (same as `edge status --json`)."),
        ]

    async def start(self, nc: Client) -> None:
        svc = await add_service(
            nc,
            name=SERVICE_NAME,
            version=SERVICE_VERSION,
            description=f"edge runtime API of device {self.device}",
            metadata={"device": self.device},
        )
        for ep in self.endpoints:
            await svc.add_endpoint(
                name=f"{ep.group}-{ep.name}",
                subject=subjects.api(self.device, ep.group, ep.name),
                handler=self._wrap(ep),
                metadata={"doc": ep.doc},
            )
        self._service = svc

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
            self._service = None

    def _wrap(self, ep: Endpoint) -> Callable[[Request], Awaitable[None]]:
        async def handle(req: Request) -> None:
            try:
                body = json.loads(req.data) if req.data else {}
                if not isinstance(body, dict):
                    raise RequestError("request body must be a JSON object")
                result = await ep.handler(body)
            except ValueError as err:
                await self._error(req, "400", RequestError(f"request body is not JSON: {err}"))
                return
            except EdgeError as err:
                await self._error(req, "400", err)
                return
            except Exception as err:  # never let a handler kill the service
                log.exception("endpoint %s.%s failed", ep.group, ep.name)
                await self._error(req, "500", EdgeError(f"internal error: {type(err).__name__}: {err}"))
                return
            await req.respond(json.dumps({"ok": True, "result": result}).encode())

        return handle

    @staticmethod
    async def _error(req: Request, code: str, err: EdgeError) -> None:
        await req.respond_error(code, err.message, data=json.dumps({"ok": False, "error": err.to_dict()}).encode())

    # -- endpoints ---------------------------------------------------------------------------

    async def entity_list(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        labels = body.get("labels")
        if labels is not None and not isinstance(labels, dict):
            raise RequestError("'labels' must be an object", key="labels")
        metas = self.world.entities(kind=body.get("kind"), labels=labels)
        return [{**m.to_dict(), "components": self.world.components_of(m.id)} for m in metas]

    async def entity_get(self, body: dict[str, Any]) -> dict[str, Any]:
        entity = _need(body, "id")
        return {**self.world.meta(entity).to_dict(), "components": self.world.get_all(entity)}

    async def entity_spawn(self, body: dict[str, Any]) -> dict[str, Any]:
        entity = _need(body, "id")
        comps = body.get("components") or {}
        labels = body.get("labels") or {}
        if not isinstance(comps, dict) or not isinstance(labels, dict):
            raise RequestError("'components' and 'labels' must be objects")
        self.world.spawn(entity, str(body.get("kind", "")), labels, comps)
        return await self.entity_get({"id": entity})

    async def entity_set(self, body: dict[str, Any]) -> dict[str, Any]:
        entity = _need(body, "id")
        comp = _need(body, "component")
        values = _need(body, "values", dict)
        return self.world.set(entity, comp, values)

    async def entity_unset(self, body: dict[str, Any]) -> None:
        self.world.unset(_need(body, "id"), _need(body, "component"))

    async def entity_rm(self, body: dict[str, Any]) -> None:
        self.world.remove(_need(body, "id"))

    async def component_list(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return self.ops.components_status()

    async def component_load(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.ops.load_component(_need(body, "manifest"))

    async def component_unload(self, body: dict[str, Any]) -> None:
        await self.ops.unload_component(_need(body, "name"))

    async def schema_list(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return [self.world.schemas.get(n).to_dict() for n in self.world.schemas.names()]

    async def status(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.ops.status()
