"""``edge-tools``: the device's capabilities as tools for external (LLM) agents, over NATS.

A NATS micro service (``$SRV.INFO.edge-tools``) with one endpoint per tool on
``edge.<device>.tools.<name>`` plus ``edge.<device>.tools.schema``, which lists the tools the
caller may use in the form LLM tool-calling APIs take (``name``, ``description``,
``input_schema``; plus ``output_schema``). Each endpoint's metadata carries the same schemas.

Requests are JSON objects checked against the tool's input schema (:mod:`edge.agents.jsonschema`);
replies are ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"error", "message", ...}}``
with the ``Nats-Service-Error``/``-Code`` headers: 400 invalid request, 403 denied, 404 unknown
entity/sensor, 503 capability missing on this device (no camera, no models, nothing serving
commands), 504 no answer to a command in time. ``send_command`` is a command request
(:class:`~edge.nats.commands.CommandClient`): its ``ack`` is the command's own answer, so a
refused command is a successful tool call whose ``ack`` says ``"ok": false`` and why.

Permissions: the caller names itself in the ``Edge-Caller`` request header. :class:`ToolPermissions`
maps callers to the tools they may call; a denied call is counted and refused with 403. The header
is attribution and a second check only: on a real deployment the enforcement point is the NATS
account/user permissions on the ``edge.<device>.tools.*`` subjects
(:meth:`ToolPermissions.nats_permissions` prints the matching snippet). With the device's policy
point (``policy``), every call is decided there (principal ``caller:<name>``, action ``call``,
the permissions as the grant; ``run_model`` and ``capture_frame``'s detection also ``infer`` of
the model, their time metered) and a denial's 403 names the rule (docs/policy.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from drivers.camera.frames import LatestFrame
from edge.agents.tools.errors import ToolDenied, ToolError, ToolNotFound, ToolTimeout, ToolUnavailable
from edge.agents.tools.permissions import (
    ANONYMOUS,
    CALLER_HEADER,
    MAX_ACK_TIMEOUT_S,
    ToolPermissions,
    ToolsConfig,
    parse_tools_config,
)
from edge.agents.tools.schemas import (
    ANY_OBJ,
    DETECTION_OUT,
    ENTITY,
    ENTITY_OUT,
    MAX_THUMBNAIL_PX,
    STR,
    TENSOR_IN,
    TENSOR_OUT,
    TOOL_NAMES,
    Tool,
    _obj,
)
from edge.agents.tools.tensors import tensor_in, tensor_out
from edge.errors import EdgeError, EntityError
from edge.inference.registry import ModelRegistry
from edge.inference.vision import Detector, ModelDetector, resize
from edge.layer import DeviceContext
from edge.errors import LifecycleError
from edge.nats import subjects
from edge.nats.commands import CommandClient, CommandTimeout, CommandUnanswered
from edge.nats.service import code_of, error_body, loads, ok_body, respond_error, respond_ok
from edge.policy.point import OFF, PolicyPoint
from edge.world.store import World

if TYPE_CHECKING:
    from edge.language.search import Knowledge

log = logging.getLogger("edge.agents.tools")

SERVICE_NAME = "edge-tools"
SERVICE_VERSION = "1.0.0"
DETECT_TIMEOUT_S = 5.0  # capture_frame's detector run
#: The ``infer`` resource of a detector that does not name its model.
DETECTOR_RESOURCE = "detector"
MAX_SENSOR_KEYS = 4096  # (entity, component) telemetry entries remembered
#: Largest telemetry message (bytes) remembered for ``read_sensor``; a larger one is counted and
#: dropped, so the cache stays at most MAX_SENSOR_KEYS small readings whoever publishes there.
MAX_SENSOR_BYTES = 16 * 1024

#: The camera the tools use: its frames and a detector (either may be None).
CameraFinder = Callable[[], tuple[LatestFrame | None, Detector | None]]

__all__ = [
    "CALLER_HEADER", "SERVICE_NAME", "TOOL_NAMES", "ToolDenied", "ToolError", "ToolNotFound", "ToolPermissions",
    "ToolTimeout", "ToolUnavailable", "ToolsConfig", "ToolsService", "parse_tools_config",
]


class ToolCallRecorder(Protocol):
    """[replay hook] Told every tool call and the reply it got (set by the composition root;
    None = not recorded): the tool, the caller, the request body, the reply's code ("200" or
    the error code) and its body. Synchronous; must not block or raise (docs/replay.md)."""

    def on_tool_call(self, tool: str, caller: str, request: bytes, code: str,
                     reply: bytes) -> None: ...


class ToolsService:
    """Serves the tools of one device as a layer (section ``tools``).

    Its providers are given explicitly: ``models`` (the model registry) enables ``run_model``;
    ``camera`` (called per request: the frames and the detector, e.g. the inference layer's
    first vision pipeline) enables ``capture_frame``. ``frames``/``detector`` are a fixed camera
    for callers without a finder.
    """

    name = "tools"

    def __init__(
        self,
        config: ToolsConfig | None = None,
        *,
        models: ModelRegistry | None = None,
        camera: CameraFinder | None = None,
        frames: LatestFrame | None = None,
        detector: Detector | None = None,
        knowledge: Knowledge | None = None,
        policy: PolicyPoint | None = None,
    ) -> None:
        self.config = config or ToolsConfig()
        self.knowledge = knowledge  # enables search_knowledge (the language layer's search)
        self.policy = policy
        self.models = models
        self.camera = camera
        self.frames = frames
        self.detector = detector
        self.calls: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.denied: dict[str, int] = defaultdict(int)  # by caller
        self.last_denied: dict[str, Any] | None = None
        self._ctx: DeviceContext | None = None
        self._service: Service | None = None
        self._tele_sub: Subscription | None = None
        self._unknown_sub: Subscription | None = None
        self.unknown = 0  # requests for a tool this device does not have (answered 404)
        self.sensors_dropped = 0  # telemetry messages over MAX_SENSOR_BYTES, not remembered
        self._sensors: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
        self.tools = self._tools()
        self._commands: CommandClient | None = None
        #: [replay hook] told every call and its reply; None = not recorded (edge.replay)
        self.recorder: ToolCallRecorder | None = None

    @property
    def ctx(self) -> DeviceContext:
        if self._ctx is None:
            raise LifecycleError("the tools service is not started; call start(ctx) first")
        return self._ctx

    @property
    def device(self) -> str:
        return self.ctx.device

    @property
    def world(self) -> World:
        return self.ctx.world

    def resolve_models(self) -> ModelRegistry | None:
        return self.models

    def resolve_camera(self) -> tuple[LatestFrame | None, Detector | None]:
        if self.frames is not None:
            return self.frames, self.detector
        if self.camera is not None:
            frames, detector = self.camera()
            return frames, self.detector or detector
        return None, None

    def subject(self, name: str) -> str:
        return subjects.tools(self.device, name)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        self._commands = CommandClient(ctx.nc, ctx.device)
        if not self.config.enabled:
            log.info("tools service disabled by config")
            return
        nc = ctx.nc
        self._tele_sub = await nc.subscribe(subjects.telemetry(ctx.device), cb=self._on_tele)
        svc = await add_service(nc, name=SERVICE_NAME, version=SERVICE_VERSION,
                                description=f"tools of device {ctx.device} for external agents",
                                metadata={"device": ctx.device, "caller_header": CALLER_HEADER})
        await svc.add_endpoint(name="schema", subject=self.subject("schema"), handler=self._schema_endpoint,
                               metadata={"description": "List the tools this caller may use."})
        for tool in self.tools.values():
            await svc.add_endpoint(
                name=tool.name, subject=self.subject(tool.name), handler=self._wrap(tool),
                metadata={"description": tool.description, "input_schema": json.dumps(tool.input_schema),
                          "output_schema": json.dumps(tool.output_schema)})
        self._service = svc
        self._unknown_sub = await nc.subscribe(self.subject("*"), cb=self._on_unknown)
        log.info("tools service up on %s", self.subject("*"))

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
            self._service = None
        for sub in (self._tele_sub, self._unknown_sub):
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception:  # noqa: BLE001  the connection may already be closed
                    pass
        self._tele_sub = self._unknown_sub = None

    def status(self) -> dict[str, Any]:
        frames, detector = self.resolve_camera()
        models = self.resolve_models()
        return {
            "enabled": self.config.enabled, "open": self.config.permissions.open,
            "calls": dict(self.calls), "errors": dict(self.errors), "denied": dict(self.denied),
            "unknown": self.unknown, "sensors_dropped": self.sensors_dropped,
            "last_denied": self.last_denied, "sensors_seen": len(self._sensors),
            "camera": frames is not None, "detector": detector is not None,
            "models": models.names() if models is not None else None,
            "knowledge": self.knowledge is not None,
        }

    def schemas(self, caller: str | None = None) -> list[dict[str, Any]]:
        perms = self.config.permissions
        return [t.spec() for t in self.tools.values() if caller is None or perms.allowed(caller, t.name)]

    # -- plumbing -----------------------------------------------------------------------------

    async def _on_unknown(self, msg: Msg) -> None:
        """A request on ``tools.<name>`` for a tool this device does not have: a 404 naming the
        tools, instead of a silent timeout (the language layer's recorder also listens there, so
        NATS would never say "no responders")."""
        name = msg.subject.rsplit(".", 1)[-1]
        if name == "schema" or name in self.tools or not msg.reply:
            return
        self.unknown += 1
        err = ToolNotFound(f"no tool {name[:64]!r} on device {self.device} (tools: {', '.join(self.tools)})",
                           tool=name)
        await self.ctx.nc.publish(msg.reply, error_body(err), headers={
            "Nats-Service-Error": err.message, "Nats-Service-Error-Code": err.code})

    async def _on_tele(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        if len(parts) != 5:
            return
        key = (parts[3], parts[4])
        if len(msg.data) > MAX_SENSOR_BYTES:
            self.sensors_dropped += 1
            return
        if key not in self._sensors and len(self._sensors) >= MAX_SENSOR_KEYS:
            return
        try:
            values = loads(msg.data)
        except ValueError:
            return
        if isinstance(values, dict):
            self._sensors[key] = (values, time.monotonic())

    @staticmethod
    def _caller(req: Request) -> str:
        headers = req.headers or {}
        return headers.get(CALLER_HEADER) or ANONYMOUS

    async def _schema_endpoint(self, req: Request) -> None:
        caller = self._caller(req)
        await respond_ok(req, {"device": self.device, "caller": caller, "tools": self.schemas(caller)})

    def _wrap(self, tool: Tool) -> Callable[[Request], Awaitable[None]]:
        async def handle(req: Request) -> None:
            caller = self._caller(req)
            self.calls[tool.name] += 1
            allowed = self.config.permissions.allowed(caller, tool.name)
            rule: dict[str, str] = {}
            if self.policy is not None:  # the policy point decides, the permissions are the grant
                d = self.policy.check("caller", caller, "call", tool.name, size=len(req.data),
                                      granted=allowed)
                if d is not OFF:  # no policy file: metered only, the permissions alone decide
                    allowed = d.allowed
                    rule = {"rule": d.rule, "why": d.reason}
            if not allowed:
                self.denied[caller] += 1
                self.last_denied = {"t": time.time(), "caller": caller, "tool": tool.name}
                log.warning("tool %s denied to caller %s", tool.name, caller)
                err = ToolDenied(f"caller '{caller}' may not use tool '{tool.name}'"
                                 + (f": {rule['why']}" if rule else ""), tool=tool.name, caller=caller, **rule)
                self._record(tool.name, caller, req.data, code_of(err), err)
                await respond_error(req, err)
                return
            try:
                try:
                    body = loads(req.data) if req.data else {}
                except ValueError as exc:
                    raise ToolError(f"request body is not JSON: {exc}", tool=tool.name) from exc
                tool.check(body)
                result = await tool.handler(body, caller)
            except EdgeError as err:
                self.errors[tool.name] += 1
                code = "404" if isinstance(err, EntityError) else code_of(err)
                err.fields.setdefault("tool", tool.name)
                self._record(tool.name, caller, req.data, code, err)
                await respond_error(req, err, code)
                return
            except Exception as exc:  # noqa: BLE001  never let a tool kill the service
                self.errors[tool.name] += 1
                log.exception("tool %s failed", tool.name)
                internal = EdgeError(f"internal error: {type(exc).__name__}: {exc}", tool=tool.name)
                self._record(tool.name, caller, req.data, "500", internal)
                await respond_error(req, internal, "500")
                return
            self._record(tool.name, caller, req.data, "200", result)
            await respond_ok(req, result)

        return handle

    def _record(self, tool: str, caller: str, request: bytes, code: str, answer: Any) -> None:
        rec = self.recorder
        if rec is None:  # [replay hook] nothing is built when not recording
            return
        reply = error_body(answer) if isinstance(answer, EdgeError) else ok_body(answer)
        rec.on_tool_call(tool, caller, bytes(request), code, reply)

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
                 "m/s, 'rtl', 'hold') and wait for its answer. ack.ok is false (with ack.error and ack.reason) "
                 "when the command was refused, e.g. its driver is down or in backoff.",
                 _obj({"entity": ENTITY, "verb": {"type": "string", "minLength": 1, "maxLength": 64},
                       "args": ANY_OBJ,
                       "timeout_s": {"type": "number", "minimum": 0.01, "maximum": MAX_ACK_TIMEOUT_S}},
                      ["entity", "verb"]),
                 _obj({"entity": STR, "verb": STR, "subject": STR, "ack": ANY_OBJ, "rtt_ms": {"type": "number"}},
                      ["entity", "verb", "subject", "ack", "rtt_ms"]),
                 self.send_command),
            Tool("search_knowledge", "Search what the device knows by meaning: its log lines, flight controller "
                 "status texts, agent decisions, command results, tool calls, operator notes and manuals. "
                 "Filter by entity, kinds (statustext, decision, command, log, tool_call, note, doc, ...) and "
                 "time (Unix seconds). Each hit has text, source, t, score and the stream and seq it came from "
                 "(cite them in a decision record).",
                 _obj({"query": {"type": "string", "minLength": 1, "maxLength": 1000}, "entity": ENTITY,
                       "kinds": {"type": "array", "items": STR, "maxItems": 20},
                       "since": {"type": "number"}, "until": {"type": "number"},
                       "limit": {"type": "integer", "minimum": 1, "maximum": 50}}, ["query"]),
                 _obj({"query": STR, "mode": STR, "hits": {"type": "array", "items": _obj({
                     "text": STR, "kind": STR, "entity": {"type": "string"}, "source": {"type": "string"},
                     "t": {"type": "number"}, "stream": {"type": ["string", "null"]},
                     "seq": {"type": ["integer", "null"]}, "score": {"type": "number"},
                     "similarity": {"type": ["number", "null"]}}, ["text", "kind", "source", "t", "score"])}},
                      ["query", "mode", "hits"]),
                 self.search_knowledge),
        ]
        return {t.name: t for t in tools}

    async def search_knowledge(self, body: dict[str, Any], caller: str) -> dict[str, Any]:
        if self.knowledge is None:
            raise ToolUnavailable("no language index: the language layer is off on this device",
                                  reason="no-language")
        hits = await self.knowledge.search(body["query"], entity=body.get("entity"), kinds=body.get("kinds"),
                                           since=body.get("since"), until=body.get("until"),
                                           limit=int(body.get("limit", 5)))
        keep = ("text", "kind", "entity", "source", "t", "stream", "seq", "score", "similarity")
        return {"query": body["query"], "mode": self.knowledge.mode(),
                "hits": [{k: v for k, v in h.to_dict().items() if k in keep} for h in hits]}

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
            model = detector.name if isinstance(detector, ModelDetector) else DETECTOR_RESOURCE
            if self.policy is not None:  # the detection is the caller's inference
                d = self.policy.check("caller", caller, "infer", model, size=int(frame.image.nbytes),
                                      granted=True)
                if not d.allowed:
                    raise ToolDenied(f"caller '{caller}' may not run model '{model}': {d.reason}",
                                     tool="capture_frame", caller=caller, rule=d.rule, why=d.reason)
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(DETECT_TIMEOUT_S):
                    found = await detector.detect(frame.image)
            except TimeoutError as err:
                raise ToolTimeout(f"the detector took longer than {DETECT_TIMEOUT_S} s") from err
            finally:
                if self.policy is not None:
                    self.policy.add_infer("caller", caller, time.perf_counter() - t0)
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
        if self.policy is not None:
            d = self.policy.check("caller", caller, "infer", name, granted=True)
            if not d.allowed:
                raise ToolDenied(f"caller '{caller}' may not run model '{name}': {d.reason}",
                                 tool="run_model", caller=caller, rule=d.rule, why=d.reason)
        model = models.get(name)  # InferenceError (400) names the loaded models
        arrays = []
        for i, spec in enumerate(body["inputs"]):
            info = model.inputs[i] if i < len(model.inputs) else None
            default = np.dtype(np.float32) if info is None or info.quantized else info.dtype
            arrays.append(tensor_in(spec, default, f"inputs[{i}]"))
        t0 = time.perf_counter()
        outputs = await models.infer(name, arrays)
        latency = (time.perf_counter() - t0) * 1e3
        if self.policy is not None:
            self.policy.add_infer("caller", caller, latency / 1e3)
        encoding = body.get("output_encoding", "json")
        return {"model": name, "outputs": [tensor_out(np.asarray(o), encoding) for o in outputs],
                "latency_ms": round(latency, 3)}

    async def send_command(self, body: dict[str, Any], caller: str) -> dict[str, Any]:
        entity, verb = body["entity"], body["verb"]
        for key, value in (("entity", entity), ("verb", verb)):
            if not subjects.is_id(value):
                raise ToolError(f"$.{key}: use {subjects.ID_RULE}", path=f"$.{key}")
        timeout = float(body.get("timeout_s", self.config.ack_timeout))
        cmd = subjects.command(self.device, entity, verb)
        client = self._commands or CommandClient(self.ctx.nc, self.device)
        try:  # a request: the answer is correlated by its command id, so callers never share acks
            res = await client.send(entity, verb, body.get("args", {}), timeout=timeout, caller=caller)
        except CommandTimeout as err:
            raise ToolTimeout(f"no answer to {cmd} within {timeout} s", subject=cmd, entity=entity,
                              verb=verb, id=err.id) from err
        except CommandUnanswered as err:
            raise ToolUnavailable(err.message, reason="unanswered", subject=cmd, entity=entity,
                                  verb=verb) from err
        return {"entity": entity, "verb": verb, "subject": cmd, "ack": res.answer, "rtt_ms": res.rtt_ms}
