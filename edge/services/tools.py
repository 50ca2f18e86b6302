"""``edge-tools``: the device's capabilities as tools for external (LLM) agents, over NATS.

A NATS micro service (``$SRV.INFO.edge-tools``) with one endpoint per tool on
``edge.<device>.tools.<name>`` plus ``edge.<device>.tools.schema``, which lists the tools the
caller may use in the form LLM tool-calling APIs take (``name``, ``description``,
``input_schema``; plus ``output_schema``). Each endpoint's metadata carries the same schemas.

Requests are JSON objects checked against the tool's input schema (:mod:`edge.agents.jsonschema`);
replies are ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"error", "message", ...}}``
with the ``Nats-Service-Error``/``-Code`` headers: 400 invalid request, 403 denied, 404 unknown
entity/sensor, 503 capability missing on this device (no camera, no models), 504 no ack in time.

Permissions: the caller names itself in the ``Edge-Caller`` request header. :class:`ToolPermissions`
maps callers to the tools they may call; a denied call is counted and refused with 403. The header
is attribution and a second check only: on a real deployment the enforcement point is the NATS
account/user permissions on the ``edge.<device>.tools.*`` subjects
(:meth:`ToolPermissions.nats_permissions` prints the matching snippet).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from drivers.camera.frames import LatestFrame
from edge import subjects
from edge.agents.base import RuntimeView
from edge.agents.jsonschema import validate
from edge.errors import ConfigError, EdgeError, EntityError
from edge.inference.registry import ModelRegistry
from edge.inference.vision import DetectionPipeline, Detector, resize
from edge.world.store import World

log = logging.getLogger("edge.services.tools")

SERVICE_NAME = "edge-tools"
SERVICE_VERSION = "1.0.0"
CALLER_HEADER = "Edge-Caller"
ANONYMOUS = "anonymous"
WILDCARD = "*"
DEFAULT_ACK_TIMEOUT_S = 2.0  # send_command waits this long for the ack unless told otherwise
MAX_ACK_TIMEOUT_S = 30.0
DETECT_TIMEOUT_S = 5.0  # capture_frame's detector run
MAX_JSON_ELEMENTS = 100_000  # larger model outputs must be asked for as base64
MAX_SENSOR_KEYS = 4096  # (entity, component) telemetry entries remembered
MAX_THUMBNAIL_PX = 128
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DTYPES = ["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"]


# -- errors -----------------------------------------------------------------------------------


class ToolError(EdgeError):
    """A tool call was refused; ``code`` is the HTTP-like status sent in the service headers."""

    code = "400"

    def __init__(self, message: str, *, tool: str | None = None, **fields: Any) -> None:
        super().__init__(message, tool=tool, **fields)
        self.tool = tool


class ToolDenied(ToolError):
    code = "403"


class ToolNotFound(ToolError):
    code = "404"


class ToolUnavailable(ToolError):
    code = "503"


class ToolTimeout(ToolError):
    code = "504"


# -- permissions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolPermissions:
    """Caller -> allowed tool names. ``"*"`` as a caller is everyone (including callers without the
    header); ``"*"`` as a tool is every tool. ``open`` (no table configured) allows everything."""

    callers: Mapping[str, frozenset[str]] = field(default_factory=dict)
    open: bool = True

    def allowed(self, caller: str, tool: str) -> bool:
        if self.open:
            return True
        for who in (caller, WILDCARD):
            tools = self.callers.get(who)
            if tools is not None and (tool in tools or WILDCARD in tools):
                return True
        return False

    def nats_permissions(self, device: str, tools: Sequence[str]) -> str:
        """A nats-server ``authorization { users = [...] }`` snippet matching these permissions."""
        lines = ["# edge-tools callers of device " + device + "; '*' tools must be granted to every user",
                 "authorization {", "  users = ["]
        for caller, allowed in sorted(self.callers.items()):
            if caller == WILDCARD:
                continue
            names = sorted(tools) if WILDCARD in allowed else sorted(set(allowed) | set(self.callers.get(WILDCARD, ())))
            subs = [f'"edge.{device}.tools.schema"'] + [f'"edge.{device}.tools.{n}"' for n in names if n != WILDCARD]
            lines += [
                f'    {{ user = "{caller}", password = "CHANGE-ME-{caller}",',
                f"      permissions = {{ publish = {{ allow = [{', '.join(subs)}] }},",
                '                      subscribe = { allow = ["_INBOX.>"] } } }',
            ]
        lines += ["  ]", "}"]
        return "\n".join(lines)


@dataclass(frozen=True)
class ToolsConfig:
    """The ``[tools]`` table: ``enabled``, ``ack_timeout`` (s), ``[tools.callers]`` name = [tools]."""

    enabled: bool = True
    ack_timeout: float = DEFAULT_ACK_TIMEOUT_S
    permissions: ToolPermissions = field(default_factory=ToolPermissions)


def parse_tools_config(raw: Any, *, file: str | None = None) -> ToolsConfig:
    """Validate a ``[tools]`` table (None -> defaults: enabled, open permissions)."""
    if raw is None:
        return ToolsConfig()
    if not isinstance(raw, Mapping):
        raise ConfigError("expected a table", key="tools", file=file)
    unknown = sorted(set(raw) - {"enabled", "ack_timeout", "callers"})
    if unknown:
        raise ConfigError("unknown setting", key=f"tools.{unknown[0]}", file=file)
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("expected true or false", key="tools.enabled", file=file)
    ack = raw.get("ack_timeout", DEFAULT_ACK_TIMEOUT_S)
    if isinstance(ack, bool) or not isinstance(ack, (int, float)) or not 0 < ack <= MAX_ACK_TIMEOUT_S:
        raise ConfigError(f"expected seconds in (0, {MAX_ACK_TIMEOUT_S}]", key="tools.ack_timeout", file=file)
    if "callers" not in raw:
        return ToolsConfig(enabled, float(ack))
    callers = raw["callers"]
    if not isinstance(callers, Mapping):
        raise ConfigError("expected a table of caller = [tool names]", key="tools.callers", file=file)
    known = set(TOOL_NAMES) | {WILDCARD}
    table: dict[str, frozenset[str]] = {}
    for caller, tools in callers.items():
        key = f"tools.callers.{caller}"
        if caller != WILDCARD and not TOKEN_RE.match(caller):
            raise ConfigError("caller names are 1-64 characters of A-Z a-z 0-9 _ -", key=key, file=file)
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            raise ConfigError("expected a list of tool names", key=key, file=file)
        bad = sorted(set(tools) - known)
        if bad:
            raise ConfigError(f"unknown tool '{bad[0]}'; tools: {', '.join(TOOL_NAMES)}", key=key, file=file)
        table[caller] = frozenset(tools)
    return ToolsConfig(enabled, float(ack), ToolPermissions(table, open=False))


# -- tools ------------------------------------------------------------------------------------


Handler = Callable[[dict[str, Any], str], Awaitable[Any]]


@dataclass
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    handler: Handler

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema,
                "output_schema": self.output_schema}


def _obj(props: dict[str, Any], required: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False, **extra}


STR = {"type": "string", "minLength": 1}
ENTITY = {"type": "string", "minLength": 1, "maxLength": 64, "description": "entity id, e.g. drone-1"}
ANY_OBJ: dict[str, Any] = {"type": "object"}
ENTITY_OUT = _obj({"id": STR, "kind": {"type": "string"}, "labels": ANY_OBJ,
                   "components": {"type": "array", "items": STR}}, ["id", "kind", "labels", "components"])
DETECTION_OUT = _obj({"label": {"type": "string"}, "score": {"type": "number"},
                      "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                      "keypoints": {"type": "array"}}, ["label", "score", "box"])
TENSOR_IN = _obj({
    "data": {"type": "array", "description": "nested lists of numbers (row-major)"},
    "b64": {"type": "string", "description": "raw little-endian bytes, base64; needs shape and dtype"},
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "dtype": {"type": "string", "enum": DTYPES},
})
TENSOR_OUT = _obj({"shape": {"type": "array", "items": {"type": "integer"}}, "dtype": {"type": "string"},
                   "data": {"type": "array"}, "b64": {"type": "string"}}, ["shape", "dtype"])
TOOL_NAMES = ("list_entities", "read_component", "read_sensor", "capture_frame", "run_model", "send_command")


def _tensor_in(spec: Mapping[str, Any], default_dtype: np.dtype[Any], where: str) -> npt.NDArray[Any]:
    dtype = np.dtype(spec["dtype"]) if "dtype" in spec else default_dtype
    if "b64" in spec:
        if "shape" not in spec or "dtype" not in spec:
            raise ToolError(f"{where}: 'b64' needs 'shape' and 'dtype'", tool="run_model")
        try:
            raw = base64.b64decode(spec["b64"], validate=True)
        except ValueError as err:
            raise ToolError(f"{where}: 'b64' is not base64: {err}", tool="run_model") from err
        shape = tuple(int(d) for d in spec["shape"])
        want = int(np.prod(shape)) * dtype.itemsize
        if len(raw) != want:
            raise ToolError(f"{where}: {len(raw)} bytes do not fill shape {list(shape)} of {dtype} "
                            f"({want} bytes)", tool="run_model")
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    if "data" not in spec:
        raise ToolError(f"{where}: give 'data' (nested lists) or 'b64' + 'shape' + 'dtype'", tool="run_model")
    try:
        arr = np.asarray(spec["data"], dtype=dtype)
    except (ValueError, TypeError) as err:
        raise ToolError(f"{where}: 'data' is not a regular array of numbers: {err}", tool="run_model") from err
    if "shape" in spec and list(arr.shape) != [int(d) for d in spec["shape"]]:
        raise ToolError(f"{where}: data has shape {list(arr.shape)}, not {spec['shape']}", tool="run_model")
    return arr


def _tensor_out(arr: npt.NDArray[Any], encoding: str) -> dict[str, Any]:
    out: dict[str, Any] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
    if encoding == "b64":
        out["b64"] = base64.b64encode(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()).decode()
    elif arr.size > MAX_JSON_ELEMENTS:
        raise ToolError(f"output of {arr.size} elements is too large for JSON; ask for output_encoding 'b64'",
                        tool="run_model")
    else:
        out["data"] = arr.tolist()
    return out


class ToolsService:
    """Serves the tools of one device (a runtime extra: ``start(runtime)``/``stop()``/``status()``).

    ``frames`` and ``detector`` enable ``capture_frame`` (e.g. a camera driver's LatestFrame and a
    DetectionPipeline's detector); ``models`` enables ``run_model``. Those not given are looked up
    on the runtime at call time (its extras' ``registry`` and ``pipelines``, then
    ``runtime.camera_frames()``), so the service can start before the perception layer is up.
    """

    status_section = "tools"

    def __init__(
        self,
        config: ToolsConfig = ToolsConfig(),
        *,
        models: ModelRegistry | None = None,
        frames: LatestFrame | None = None,
        detector: Detector | None = None,
    ) -> None:
        self.config = config
        self.models = models
        self.frames = frames
        self.detector = detector
        self.calls: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.denied: dict[str, int] = defaultdict(int)  # by caller
        self.last_denied: dict[str, Any] | None = None
        self._runtime: RuntimeView | None = None
        self._service: Service | None = None
        self._tele_sub: Subscription | None = None
        self._sensors: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
        self._cmd_locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self.tools = self._tools()

    @property
    def device(self) -> str:
        assert self._runtime is not None, "ToolsService is not started"
        return self._runtime.device

    @property
    def world(self) -> World:
        assert self._runtime is not None, "ToolsService is not started"
        return self._runtime.world

    @property
    def nc(self) -> Client:
        assert self._runtime is not None and self._runtime.nc is not None, "ToolsService is not started"
        return self._runtime.nc

    def resolve_models(self) -> ModelRegistry | None:
        if self.models is not None:
            return self.models
        for extra in getattr(self._runtime, "extras", None) or ():
            registry = getattr(extra, "registry", None)
            if isinstance(registry, ModelRegistry):
                return registry
        return None

    def resolve_camera(self) -> tuple[LatestFrame | None, Detector | None]:
        if self.frames is not None:
            return self.frames, self.detector
        for extra in getattr(self._runtime, "extras", None) or ():
            for pipeline in getattr(extra, "pipelines", None) or ():
                if isinstance(pipeline, DetectionPipeline):
                    return pipeline.source, self.detector or pipeline.detector
        finder = getattr(self._runtime, "camera_frames", None)
        frames = finder(None) if callable(finder) else None
        return (frames, self.detector) if isinstance(frames, LatestFrame) else (None, None)

    def subject(self, name: str) -> str:
        return f"{subjects.PREFIX}.{self.device}.tools.{name}"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, runtime: RuntimeView) -> None:
        if runtime.nc is None:
            raise EdgeError("ToolsService needs a NATS connection")
        self._runtime = runtime
        if not self.config.enabled:
            log.info("tools service disabled by config")
            return
        nc = runtime.nc
        self._tele_sub = await nc.subscribe(f"{subjects.PREFIX}.{runtime.device}.tele.>", cb=self._on_tele)
        svc = await add_service(nc, name=SERVICE_NAME, version=SERVICE_VERSION,
                                description=f"tools of device {runtime.device} for external agents",
                                metadata={"device": runtime.device, "caller_header": CALLER_HEADER})
        await svc.add_endpoint(name="schema", subject=self.subject("schema"), handler=self._schema_endpoint,
                               metadata={"description": "List the tools this caller may use."})
        for tool in self.tools.values():
            await svc.add_endpoint(
                name=tool.name, subject=self.subject(tool.name), handler=self._wrap(tool),
                metadata={"description": tool.description, "input_schema": json.dumps(tool.input_schema),
                          "output_schema": json.dumps(tool.output_schema)})
        self._service = svc
        log.info("tools service up on %s", self.subject("*"))

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
            self._service = None
        if self._tele_sub is not None:
            try:
                await self._tele_sub.unsubscribe()
            except Exception:  # noqa: BLE001  the connection may already be closed
                pass
            self._tele_sub = None

    def status(self) -> dict[str, Any]:
        frames, detector = self.resolve_camera()
        models = self.resolve_models()
        return {
            "enabled": self.config.enabled, "open": self.config.permissions.open,
            "calls": dict(self.calls), "errors": dict(self.errors), "denied": dict(self.denied),
            "last_denied": self.last_denied, "sensors_seen": len(self._sensors),
            "camera": frames is not None, "detector": detector is not None,
            "models": models.names() if models is not None else None,
        }

    def schemas(self, caller: str | None = None) -> list[dict[str, Any]]:
        perms = self.config.permissions
        return [t.spec() for t in self.tools.values() if caller is None or perms.allowed(caller, t.name)]

    # -- plumbing -----------------------------------------------------------------------------

    async def _on_tele(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        if len(parts) != 5:
            return
        key = (parts[3], parts[4])
        if key not in self._sensors and len(self._sensors) >= MAX_SENSOR_KEYS:
            return
        try:
            values = json.loads(msg.data)
        except ValueError:
            return
        if isinstance(values, dict):
            self._sensors[key] = (values, time.monotonic())

    @staticmethod
    def _caller(req: Request) -> str:
        headers = req.headers or {}
        return headers.get(CALLER_HEADER) or ANONYMOUS

    @staticmethod
    async def _reply_error(req: Request, err: EdgeError, code: str) -> None:
        body = json.dumps({"ok": False, "error": err.to_dict()}, default=str).encode()
        await req.respond_error(code, err.message, data=body)

    async def _schema_endpoint(self, req: Request) -> None:
        caller = self._caller(req)
        body = {"ok": True, "result": {"device": self.device, "caller": caller, "tools": self.schemas(caller)}}
        await req.respond(json.dumps(body).encode())

    def _wrap(self, tool: Tool) -> Callable[[Request], Awaitable[None]]:
        async def handle(req: Request) -> None:
            caller = self._caller(req)
            self.calls[tool.name] += 1
            if not self.config.permissions.allowed(caller, tool.name):
                self.denied[caller] += 1
                self.last_denied = {"t": time.time(), "caller": caller, "tool": tool.name}
                log.warning("tool %s denied to caller %s", tool.name, caller)
                err = ToolDenied(f"caller '{caller}' may not use tool '{tool.name}'", tool=tool.name, caller=caller)
                await self._reply_error(req, err, err.code)
                return
            try:
                try:
                    body = json.loads(req.data) if req.data else {}
                except ValueError as exc:
                    raise ToolError(f"request body is not JSON: {exc}", tool=tool.name) from exc
                validate(body, tool.input_schema)
                result = await tool.handler(body, caller)
            except EdgeError as err:
                self.errors[tool.name] += 1
                code = err.code if isinstance(err, ToolError) else "404" if isinstance(err, EntityError) else "400"
                err.fields.setdefault("tool", tool.name)
                await self._reply_error(req, err, code)
                return
            except Exception as exc:  # noqa: BLE001  never let a tool kill the service
                self.errors[tool.name] += 1
                log.exception("tool %s failed", tool.name)
                await self._reply_error(req, EdgeError(f"internal error: {type(exc).__name__}: {exc}",
                                                       tool=tool.name), "500")
                return
            await req.respond(json.dumps({"ok": True, "result": result}, default=str).encode())

        return handle

    # -- the tools ----------------------------------------------------------------------------

    def _tools(self) -> dict[str, Tool]:
        tools = [
            Tool("list_entities", "List the device's entities (drones, sensors, ...) with the names of "
                 "their components. Optionally filter by kind.",
                 _obj({"kind": {"type": "string", "description": "only entities of this kind"}}),
                 _obj({"entities": {"type": "array", "items": ENTITY_OUT}}, ["entities"]),
                 self.list_entities),
            Tool("read_component", "Read one component (all fields) of an entity from the world state, "
                 "e.g. battery, position, velocity, flight, detections.",
                 _obj({"entity": ENTITY, "component": STR}, ["entity", "component"]),
                 _obj({"entity": STR, "component": STR, "values": ANY_OBJ}, ["entity", "component", "values"]),
                 self.read_component),
            Tool("read_sensor", "Read the latest value of a sensor: the newest telemetry of that component, "
                 "or the world state if no telemetry has arrived. age_s is the telemetry's age in seconds.",
                 _obj({"entity": ENTITY, "sensor": {**STR, "description": "component name, e.g. battery, imu"}},
                      ["entity", "sensor"]),
                 _obj({"entity": STR, "sensor": STR, "values": ANY_OBJ,
                       "source": {"type": "string", "enum": ["telemetry", "world"]},
                       "age_s": {"type": ["number", "null"]}}, ["entity", "sensor", "values", "source"]),
                 self.read_sensor),
            Tool("capture_frame", "Take the camera's latest frame and run the detector on it. Boxes are "
                 "[x0, y0, x1, y1] normalised to the frame (origin top-left). Optional small thumbnail "
                 "(raw RGB bytes, base64).",
                 _obj({"detect": {"type": "boolean"}, "min_score": {"type": "number", "minimum": 0, "maximum": 1},
                       "thumbnail_px": {"type": "integer", "minimum": 0, "maximum": MAX_THUMBNAIL_PX}}),
                 _obj({"seq": {"type": "integer"}, "width": {"type": "integer"}, "height": {"type": "integer"},
                       "age_s": {"type": "number"}, "source": {"type": "string"},
                       "detections": {"type": ["array", "null"], "items": DETECTION_OUT},
                       "thumbnail": {"type": "object"}}, ["seq", "width", "height", "age_s", "detections"]),
                 self.capture_frame),
            Tool("run_model", "Run a loaded TFLite model by name. Each input is nested JSON lists "
                 "('data', dtype defaults to the model's) or base64 bytes with 'shape' and 'dtype'.",
                 _obj({"model": STR, "inputs": {"type": "array", "minItems": 1, "items": TENSOR_IN},
                       "output_encoding": {"type": "string", "enum": ["json", "b64"]}}, ["model", "inputs"]),
                 _obj({"model": STR, "outputs": {"type": "array", "items": TENSOR_OUT}, "latency_ms": {"type": "number"}},
                      ["model", "outputs"]),
                 self.run_model),
            Tool("send_command", "Send a command to an entity (e.g. verb 'velocity' with args {x, y, z} in "
                 "m/s, 'rtl', 'hold') and wait for its acknowledgement.",
                 _obj({"entity": ENTITY, "verb": {"type": "string", "minLength": 1, "maxLength": 64},
                       "args": ANY_OBJ,
                       "timeout_s": {"type": "number", "minimum": 0.01, "maximum": MAX_ACK_TIMEOUT_S}},
                      ["entity", "verb"]),
                 _obj({"entity": STR, "verb": STR, "subject": STR, "ack": ANY_OBJ, "rtt_ms": {"type": "number"}},
                      ["entity", "verb", "subject", "ack", "rtt_ms"]),
                 self.send_command),
        ]
        return {t.name: t for t in tools}

    async def list_entities(self, body: dict[str, Any], caller: str) -> dict[str, Any]:
        metas = self.world.entities(kind=body.get("kind"))
        return {"entities": [{**m.to_dict(), "components": self.world.components_of(m.id)} for m in metas]}

    async def read_component(self, body: dict[str, Any], caller: str) -> dict[str, Any]:
        entity, comp = body["entity"], body["component"]
        return {"entity": entity, "component": comp, "values": self.world.get(entity, comp)}

    async def read_sensor(self, body: dict[str, Any], caller: str) -> dict[str, Any]:
        entity, sensor = body["entity"], body["sensor"]
        seen = self._sensors.get((entity, sensor))
        if seen is not None:
            values, at = seen
            return {"entity": entity, "sensor": sensor, "values": values, "source": "telemetry",
                    "age_s": round(time.monotonic() - at, 3)}
        if entity in self.world and self.world.has(entity, sensor):
            return {"entity": entity, "sensor": sensor, "values": self.world.get(entity, sensor),
                    "source": "world", "age_s": None}
        known = sorted({c for e, c in self._sensors if e == entity} |
                       set(self.world.components_of(entity) if entity in self.world else ()))
        raise ToolNotFound(f"entity '{entity}' has no sensor '{sensor}' (known: {', '.join(known) or 'none'})",
                           entity=entity, sensor=sensor)

    async def capture_frame(self, body: dict[str, Any], caller: str) -> dict[str, Any]:
        frames, detector = self.resolve_camera()
        if frames is None:
            raise ToolUnavailable("no camera: this device has no frame source", reason="no-camera")
        frame = frames.latest()
        if frame is None:
            raise ToolUnavailable("the camera has not produced a frame yet", reason="no-frame")
        out: dict[str, Any] = {"seq": frame.seq, "width": frame.width, "height": frame.height,
                               "age_s": round(max(0.0, time.monotonic() - frame.t), 3),
                               "source": frame.source, "detections": None}
        if body.get("detect", True) and detector is not None:
            try:
                async with asyncio.timeout(DETECT_TIMEOUT_S):
                    found = await detector.detect(frame.image)
            except TimeoutError as err:
                raise ToolTimeout(f"the detector took longer than {DETECT_TIMEOUT_S} s") from err
            floor = float(body.get("min_score", 0.0))
            out["detections"] = [
                {"label": d.label, "score": round(float(d.score), 4), "box": [round(float(v), 4) for v in d.box],
                 "keypoints": [[round(float(x), 4), round(float(y), 4)] for x, y in d.keypoints]}
                for d in found if d.score >= floor
            ]
        px = int(body.get("thumbnail_px", 0))
        if px > 0:
            h = max(1, round(px * frame.height / max(1, frame.width)))
            thumb = await asyncio.to_thread(resize, frame.image, px, h)
            out["thumbnail"] = {"width": px, "height": h, "encoding": "rgb8",
                                "b64": base64.b64encode(np.ascontiguousarray(thumb).tobytes()).decode()}
        return out

    async def run_model(self, body: dict[str, Any], caller: str) -> dict[str, Any]:
        models = self.resolve_models()
        if models is None:
            raise ToolUnavailable("no models: this device has no inference registry", reason="no-models")
        name = body["model"]
        model = models.get(name)  # InferenceError (400) names the loaded models
        arrays = []
        for i, spec in enumerate(body["inputs"]):
            info = model.inputs[i] if i < len(model.inputs) else None
            default = np.dtype(np.float32) if info is None or info.quantized else info.dtype
            arrays.append(_tensor_in(spec, default, f"inputs[{i}]"))
        t0 = time.perf_counter()
        outputs = await models.infer(name, arrays)
        latency = (time.perf_counter() - t0) * 1e3
        encoding = body.get("output_encoding", "json")
        return {"model": name, "outputs": [_tensor_out(np.asarray(o), encoding) for o in outputs],
                "latency_ms": round(latency, 3)}

    async def send_command(self, body: dict[str, Any], caller: str) -> dict[str, Any]:
        entity, verb = body["entity"], body["verb"]
        for key, value in (("entity", entity), ("verb", verb)):
            if not TOKEN_RE.match(value):
                raise ToolError(f"$.{key}: use 1-64 characters of A-Z a-z 0-9 _ -", path=f"$.{key}")
        timeout = float(body.get("timeout_s", self.config.ack_timeout))
        cmd = subjects.command(self.device, entity, verb)
        ack_subject = subjects.ack(self.device, entity, verb)
        payload = json.dumps(body.get("args", {}), separators=(",", ":")).encode()
        async with self._cmd_locks[(entity, verb)]:  # acks carry no id: one command in flight per verb
            sub = await self.nc.subscribe(ack_subject, max_msgs=1)
            try:
                t0 = time.perf_counter()
                await self.nc.publish(cmd, payload, headers={CALLER_HEADER: caller})
                try:
                    msg = await sub.next_msg(timeout=timeout)
                except TimeoutError as err:
                    raise ToolTimeout(f"no acknowledgement on {ack_subject} within {timeout} s",
                                      subject=cmd, entity=entity, verb=verb) from err
                rtt = (time.perf_counter() - t0) * 1e3
            finally:
                try:
                    await sub.unsubscribe()
                except Exception:  # noqa: BLE001  already removed after max_msgs
                    pass
        try:
            ack = json.loads(msg.data) if msg.data else {}
        except ValueError:
            ack = {"raw": msg.data.decode(errors="replace")}
        if not isinstance(ack, dict):
            ack = {"value": ack}
        return {"entity": entity, "verb": verb, "subject": cmd, "ack": ack, "rtt_ms": round(rtt, 3)}
