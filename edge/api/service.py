"""The device API: entities, components and status over NATS request/reply.

Every endpoint lives under ``edge.<device>.api.`` and takes and returns JSON. A success is
``{"ok": true, "result": ...}``; a refusal is ``{"ok": false, "error": {"error": "EntityError",
"message": "...", ...fields}}`` with the micro service error headers set (400 for bad requests,
403 for a write the policy point denies, 500 for internal errors). Subjects are listed in
docs/subjects.md.

Writes to the world (``entity.spawn``, ``entity.set``, ``entity.unset``, ``entity.rm``) pass the
device's policy point (``point``) before anything is written: principal ``caller:<name>`` (the
request's ``Edge-Caller`` header, else ``anonymous``), action ``kv``, resource
``<entity>.<component>`` for each component written or removed and ``<entity>`` for the entity
itself (spawn, rm), the target entity's labels as context. Nothing grants them: with a policy
file each needs an ``allow`` rule (docs/policy.md). Every write is metered for its caller
(``kv_writes``, ``edge accounting``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from edge.nats import subjects
from edge.errors import EdgeError
from edge.nats.service import RequestError, code_of, endpoint
from edge.layer import DeviceContext
from edge.errors import LifecycleError
from edge.policy.model import Action, PolicyDenied
from edge.wasm.manifest import NAME_RE as COMPONENT_NAME_RE, load_manifest
from edge.world.schema import NAME_RE
from edge.world.store import ENTITY_ID_RE, World

if TYPE_CHECKING:
    from edge.policy.point import PolicyPoint

log = logging.getLogger("edge.api.service")

SERVICE_NAME = "edge-device"
SERVICE_VERSION = "1.0.0"

#: Who a request is from when it has no ``Edge-Caller`` header.
ANONYMOUS = "anonymous"
_KV = Action.KV.value


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent one API request (its ``Edge-Caller``, else :data:`ANONYMOUS`) and its size."""

    name: str
    size: int = 0


Handler = Callable[[dict[str, Any], Caller], Awaitable[Any]]


class ComponentOps(Protocol):
    """The component operations the API serves (the sandbox layer has them)."""

    async def load_component(self, manifest: str) -> dict[str, Any]: ...
    async def unload_component(self, name: str) -> None: ...
    def components_status(self) -> list[dict[str, Any]]: ...


class PolicyOps(Protocol):
    """The accounting operations the API serves (the policy layer, :mod:`edge.policy.layer`)."""

    def accounting(self, n: int) -> dict[str, Any]: ...
    def reload(self) -> dict[str, Any]: ...


StatusFn = Callable[[], dict[str, Any]]


@dataclass
class Endpoint:
    group: str
    name: str
    handler: Handler
    doc: str


def _kind(body: dict[str, Any]) -> str | None:
    kind = body.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise RequestError("'kind' must be a string", key="kind")
    return kind


def _labels(body: dict[str, Any]) -> dict[str, str]:
    labels = body.get("labels")
    if labels is None:
        return {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise RequestError("'labels' must be an object of strings", key="labels")
    return labels


def _need(body: dict[str, Any], key: str, kind: type = str) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or (kind is str and not value):
        raise RequestError(f"request needs '{key}' ({kind.__name__})", key=key)
    return value


class DeviceApi:
    """The device API as a layer: endpoints over the world, the component operations and the
    device status, each given explicitly by the composition root."""

    name = "api"

    def __init__(self, components: ComponentOps, status: StatusFn, *,
                 policy: PolicyOps | None = None, point: PolicyPoint | None = None) -> None:
        self.ops = components
        self.policy = policy
        self.point = point  # the policy point the world writes pass
        self.status_fn = status
        self._world: World | None = None
        self._device = ""
        self._service: Service | None = None
        self.requests = 0
        self.errors = 0
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
            Endpoint("status", "get", self.device_status, "Runtime status (same as `edge status --json`)."),
            Endpoint("accounting", "get", self.accounting_get,
                     "Top principals by messages, bytes and gas; recent denials; quota use."),
            Endpoint("policy", "reload", self.policy_reload,
                     "Reload the policy file now; a bad file is refused and the old policy kept."),
        ]

    @property
    def world(self) -> World:
        if self._world is None:
            raise LifecycleError("the device API is not started; start it with the device context")
        return self._world

    @property
    def device(self) -> str:
        return self._device

    async def start(self, ctx: DeviceContext) -> None:
        self._world = ctx.world
        self._device = ctx.device
        svc = await add_service(
            ctx.nc,
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

    def status(self) -> dict[str, Any]:
        return {"endpoints": len(self.endpoints), "requests": self.requests, "errors": self.errors}

    def _wrap(self, ep: Endpoint) -> Callable[[Request], Awaitable[None]]:
        name = f"{ep.group}.{ep.name}"

        async def handle(req: Request) -> None:
            self.requests += 1
            who = Caller((req.headers or {}).get(subjects.CALLER_HEADER) or ANONYMOUS, len(req.data))

            async def run(body: dict[str, Any]) -> Any:
                return await ep.handler(body, who)

            await endpoint(run, name=name, code_for=_code, on_error=self._count_error)(req)

        return handle

    def _count_error(self, err: EdgeError) -> None:
        self.errors += 1

    def _admit(self, who: Caller, entity: str, *components: str, key: str = "component") -> None:
        """Decide a write of ``components`` of ``entity`` (none: the entity itself) by ``who``;
        raises :class:`PolicyDenied` (403) naming the rule. The ids are checked first, so a
        resource is always ``<entity>`` or ``<entity>.<component>``."""
        resources = write_resources(entity, components, key=key)
        point = self.point
        if point is None:
            return
        size = who.size // len(resources)
        for resource in resources:
            d = point.check("caller", who.name, _KV, resource, size=size, entity=entity)
            if not d.allowed:
                raise PolicyDenied(f"caller:{who.name} may not write '{resource}': {d.reason}",
                                   principal=f"caller:{who.name}", action=_KV, resource=resource,
                                   rule=d.rule, reason=d.reason)

    # -- endpoints ---------------------------------------------------------------------------

    async def entity_list(self, body: dict[str, Any], who: Caller) -> list[dict[str, Any]]:
        kind, labels = _kind(body), _labels(body)
        metas = self.world.entities(kind=kind, labels=labels)
        return [{**m.to_dict(), "components": self.world.components_of(m.id)} for m in metas]

    async def entity_get(self, body: dict[str, Any], who: Caller) -> dict[str, Any]:
        entity = _need(body, "id")
        return {**self.world.meta(entity).to_dict(), "components": self.world.get_all(entity),
                "freshness": self.world.freshness(entity)}

    async def entity_spawn(self, body: dict[str, Any], who: Caller) -> dict[str, Any]:
        entity = _need(body, "id")
        comps = body.get("components") or {}
        if not isinstance(comps, dict):
            raise RequestError("'components' must be an object", key="components")
        kind, labels = _kind(body) or "", _labels(body)
        self._admit(who, entity)
        if comps:
            self._admit(who, entity, *comps, key="components")
        self.world.spawn(entity, kind, labels, comps)
        return await self.entity_get({"id": entity}, who)

    async def entity_set(self, body: dict[str, Any], who: Caller) -> dict[str, Any]:
        entity = _need(body, "id")
        comp = _need(body, "component")
        values = _need(body, "values", dict)
        self._admit(who, entity, comp)
        return self.world.set(entity, comp, values)

    async def entity_unset(self, body: dict[str, Any], who: Caller) -> None:
        entity, comp = _need(body, "id"), _need(body, "component")
        self._admit(who, entity, comp)
        self.world.unset(entity, comp)

    async def entity_rm(self, body: dict[str, Any], who: Caller) -> None:
        entity = _need(body, "id")
        self._admit(who, entity)
        self.world.remove(entity)

    async def component_list(self, body: dict[str, Any], who: Caller) -> list[dict[str, Any]]:
        return self.ops.components_status()

    def _admit_deploy(self, who: Caller, resource: str) -> None:
        """Decide a component load or unload by ``who`` (action ``deploy``, resource
        ``component.<name>.<version>`` or ``component.<name>``); raises :class:`PolicyDenied`."""
        point = self.point
        if point is None:
            return
        d = point.check("caller", who.name, Action.DEPLOY, resource, size=who.size)
        if not d.allowed:
            raise PolicyDenied(f"caller:{who.name} may not deploy '{resource}': {d.reason}",
                               principal=f"caller:{who.name}", action=Action.DEPLOY.value,
                               resource=resource, rule=d.rule, reason=d.reason)

    async def component_load(self, body: dict[str, Any], who: Caller) -> dict[str, Any]:
        path = _need(body, "manifest")
        if self.point is not None:
            # the manifest is read (capped, validated) to name the resource before deciding
            m = load_manifest(Path(path), self.device)
            self._admit_deploy(who, f"component.{m.name}.{m.version}")
        return await self.ops.load_component(path)

    async def component_unload(self, body: dict[str, Any], who: Caller) -> None:
        name = _need(body, "name")
        if not COMPONENT_NAME_RE.match(name):
            raise RequestError(f"component name {name!r} is invalid (use [a-z0-9_-], at most 64)", key="name")
        self._admit_deploy(who, f"component.{name}")
        await self.ops.unload_component(name)

    async def schema_list(self, body: dict[str, Any], who: Caller) -> list[dict[str, Any]]:
        return [self.world.schemas.get(n).to_dict() for n in self.world.schemas.names()]

    async def device_status(self, body: dict[str, Any], who: Caller) -> dict[str, Any]:
        return self.status_fn()

    def _policy(self) -> PolicyOps:
        if self.policy is None:
            raise RequestError("this device has no policy point")
        return self.policy

    async def accounting_get(self, body: dict[str, Any], who: Caller) -> dict[str, Any]:
        n = body.get("top", 10)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1000:
            raise RequestError("'top' must be an integer within 1..1000", key="top")
        return self._policy().accounting(n)

    async def policy_reload(self, body: dict[str, Any], who: Caller) -> dict[str, Any]:
        return self._policy().reload()


def _code(err: EdgeError) -> str:
    return "403" if isinstance(err, PolicyDenied) else code_of(err)


def write_resources(entity: str, components: Iterable[str] = (), *, key: str = "component") -> list[str]:
    """The policy resources of a world write: ``<entity>.<component>`` for each component, or
    ``<entity>`` for the entity itself. The entity id and component names are checked first (a
    RequestError naming the key: ``id``, or ``key`` for the components), so a name with a dot or
    a wildcard can never stand for another entity's resource."""
    if not isinstance(entity, str) or not ENTITY_ID_RE.match(entity):
        raise RequestError(f"entity id {entity!r} is invalid: use 1-64 characters of A-Z a-z 0-9 _ -",
                           key="id", entity=str(entity))
    comps = list(components)
    for comp in comps:
        if not isinstance(comp, str) or not NAME_RE.match(comp):
            raise RequestError(f"component name {comp!r} is invalid: use [a-z][a-z0-9_]*, at most 63 characters",
                               key=key)
    return [f"{entity}.{c}" for c in comps] or [entity]
