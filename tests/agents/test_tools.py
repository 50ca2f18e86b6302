"""The ``edge-tools`` service on a real nats-server with a real World, real models and a real
(synthetic-camera) frame: every tool, schema validation, permissions, config and the NATS snippet."""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_support import DEVICE, device_context
from nats.aio.client import Client

from drivers.camera.frames import Frame, LatestFrame
from drivers.camera.pattern import face_image
from edge.agents.jsonschema import SchemaViolation, validate
from edge.errors import ConfigError
from edge.nats.commands import CommandRequest
from edge.inference.blazeface import FaceDetector, face_model_path
from edge.inference.registry import ModelRegistry, ModelSpec
from edge.inference.vision import DetectionPipeline
from edge.agents.tools.service import (
    TOOL_NAMES,
    ToolPermissions,
    ToolsConfig,
    ToolsService,
    parse_tools_config,
)
from edge.world.store import World

pytestmark = pytest.mark.timeout(60)

TOOLS = f"edge.{DEVICE}.tools"
NATS_SERVER = Path(sys.executable).parent / "nats-server"


@pytest.fixture
async def start_tools(nc: Client, world: World) -> AsyncIterator[Any]:
    services: list[ToolsService] = []

    async def start(config: ToolsConfig | None = None, **kw: Any) -> ToolsService:
        svc = ToolsService(config or ToolsConfig(), **kw)
        await svc.start(await device_context(DEVICE, world, nc))
        services.append(svc)
        return svc

    yield start
    for svc in services:
        await svc.stop()


async def call(nc: Client, tool: str, body: Any = None, caller: str | None = None,
               raw: bytes | None = None) -> tuple[dict[str, Any], str | None]:
    """(reply body, error code or None)."""
    data = raw if raw is not None else json.dumps(body or {}).encode()
    headers = {"Edge-Caller": caller} if caller else None
    msg = await nc.request(f"{TOOLS}.{tool}", data, timeout=5, headers=headers)
    code = msg.headers.get("Nats-Service-Error-Code") if msg.headers else None
    return json.loads(msg.data), code


async def ok(nc: Client, svc: ToolsService, tool: str, body: Any = None) -> Any:
    reply, code = await call(nc, tool, body)
    assert code is None and reply["ok"], reply
    validate(reply["result"], svc.tools[tool].output_schema)  # the advertised schema is honest
    return reply["result"]


# -- world tools ------------------------------------------------------------------------------


async def test_list_entities_and_read_component(nc: Client, start_tools: Any, world: World) -> None:
    svc = await start_tools()
    world.spawn("cam-1", "camera")
    res = await ok(nc, svc, "list_entities")
    assert [e["id"] for e in res["entities"]] == ["cam-1", "drone-1", "drone-2"]
    assert "battery" in res["entities"][1]["components"]
    res = await ok(nc, svc, "list_entities", {"kind": "drone"})
    assert [e["id"] for e in res["entities"]] == ["drone-1", "drone-2"]
    res = await ok(nc, svc, "read_component", {"entity": "drone-1", "component": "battery"})
    assert res["values"]["level"] == 0.9
    reply, code = await call(nc, "read_component", {"entity": "drone-9", "component": "battery"})
    assert code == "404" and reply["error"]["error"] == "EntityError" and reply["error"]["tool"] == "read_component"
    reply, code = await call(nc, "read_component", {"entity": "drone-1", "component": "warp"})
    assert code == "400" and "unknown component 'warp'" in reply["error"]["message"]


async def test_read_sensor_prefers_fresh_telemetry(nc: Client, start_tools: Any) -> None:
    svc = await start_tools()
    res = await ok(nc, svc, "read_sensor", {"entity": "drone-1", "sensor": "battery"})
    assert res["source"] == "world" and res["age_s"] is None and res["values"]["level"] == 0.9
    await nc.publish(f"edge.{DEVICE}.tele.drone-1.battery", b'{"level": 0.42, "voltage": 14.1}')
    await nc.publish(f"edge.{DEVICE}.tele.imu-7.imu", b'{"ax": 0.1}')
    await nc.flush()
    await asyncio.sleep(0.05)
    res = await ok(nc, svc, "read_sensor", {"entity": "drone-1", "sensor": "battery"})
    assert res["source"] == "telemetry" and res["values"] == {"level": 0.42, "voltage": 14.1}
    assert 0 <= res["age_s"] < 1
    res = await ok(nc, svc, "read_sensor", {"entity": "imu-7", "sensor": "imu"})  # not in the world
    assert res["values"] == {"ax": 0.1}
    reply, code = await call(nc, "read_sensor", {"entity": "drone-1", "sensor": "lidar"})
    assert code == "404" and "known: battery" in reply["error"]["message"]


# -- camera -----------------------------------------------------------------------------------


async def test_capture_frame_without_camera(nc: Client, start_tools: Any) -> None:
    await start_tools()
    reply, code = await call(nc, "capture_frame", {})
    assert code == "503" and reply["error"]["message"] == "no camera: this device has no frame source"


async def test_capture_frame_with_real_detector(nc: Client, start_tools: Any) -> None:
    frames = LatestFrame()
    registry = ModelRegistry()
    await registry.load(ModelSpec(name="face", path=str(face_model_path())))
    try:
        svc = await start_tools(frames=frames, detector=FaceDetector(registry, "face"))
        reply, code = await call(nc, "capture_frame", {})
        assert code == "503" and "not produced a frame" in reply["error"]["message"]
        image = face_image(640, 480, ((480, 160, 110),))  # one face, right of and above the centre
        await frames.put(Frame(seq=7, t=time.monotonic(), image=image, source="pattern"))
        res = await ok(nc, svc, "capture_frame", {"thumbnail_px": 32})
        assert (res["seq"], res["width"], res["height"], res["source"]) == (7, 640, 480, "pattern")
        assert len(res["detections"]) == 1
        det = res["detections"][0]
        assert det["score"] > 0.7 and det["box"][0] < 0.75 < det["box"][2] and det["box"][1] < 0.34 < det["box"][3]
        thumb = res["thumbnail"]
        assert (thumb["width"], thumb["height"]) == (32, 24)
        assert len(base64.b64decode(thumb["b64"])) == 32 * 24 * 3
        res = await ok(nc, svc, "capture_frame", {"detect": False})
        assert res["detections"] is None
        res = await ok(nc, svc, "capture_frame", {"min_score": 1.0})
        assert res["detections"] == []
    finally:
        await registry.close()


async def test_camera_and_models_found_on_the_runtime(nc: Client, world: World, fc_registry: Any) -> None:
    """Started before perception is up: the pipeline and registry are looked up at call time."""
    registry, _, _ = fc_registry
    frames = LatestFrame()
    pipeline = DetectionPipeline(frames, FaceDetector(registry, "face"), lambda *a: None)

    pipelines: list[DetectionPipeline] = []  # the inference layer's, filled once it has started

    def camera() -> tuple[LatestFrame | None, Any]:
        return (pipelines[0].source, pipelines[0].detector) if pipelines else (None, None)

    svc = ToolsService(models=registry, camera=camera)  # given explicitly, before anything starts
    await svc.start(await device_context(DEVICE, world, nc))
    try:
        _, code = await call(nc, "capture_frame", {})
        assert code == "503"
        pipelines.append(pipeline)
        await frames.put(Frame(seq=1, t=time.monotonic(), image=face_image(64, 48, ())))
        res = await ok(nc, svc, "capture_frame", {"detect": False})
        assert (res["seq"], res["width"]) == (1, 64)
        res = await ok(nc, svc, "run_model", {"model": "fc", "inputs": [{"data": [[0, 0, 0, 0]]}]})
        assert res["outputs"][0]["shape"] == [1, 3]
        assert svc.status()["camera"] and svc.status()["models"] == ["fc"]
    finally:
        await svc.stop()


# -- models -----------------------------------------------------------------------------------


@pytest.fixture
async def fc_registry(tmp_path: Path) -> AsyncIterator[tuple[ModelRegistry, np.ndarray, np.ndarray]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
    try:
        modelgen = importlib.import_module("tflite_modelgen")
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    path = tmp_path / "fc.tflite"
    path.write_bytes(modelgen.float_fc(w, b))
    registry = ModelRegistry()
    await registry.load(ModelSpec(name="fc", path=str(path)))
    yield registry, w, b
    await registry.close()


async def test_run_model_json_and_base64(nc: Client, start_tools: Any, fc_registry: Any) -> None:
    registry, w, b = fc_registry
    svc = await start_tools(models=registry)
    x = np.array([[1.0, -2.0, 0.5, 3.0]], dtype=np.float32)
    want = x @ w.T + b
    res = await ok(nc, svc, "run_model", {"model": "fc", "inputs": [{"data": x.tolist()}]})
    out = res["outputs"][0]
    assert out["shape"] == [1, 3] and out["dtype"] == "float32"
    np.testing.assert_allclose(out["data"], want, rtol=1e-5)
    b64 = base64.b64encode(x.astype("<f4").tobytes()).decode()
    res = await ok(nc, svc, "run_model", {"model": "fc", "output_encoding": "b64",
                                          "inputs": [{"b64": b64, "shape": [1, 4], "dtype": "float32"}]})
    got = np.frombuffer(base64.b64decode(res["outputs"][0]["b64"]), dtype="<f4").reshape(1, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5)


async def test_run_model_errors(nc: Client, start_tools: Any, fc_registry: Any) -> None:
    registry, _, _ = fc_registry
    await start_tools(models=registry)
    reply, code = await call(nc, "run_model", {"model": "fc", "inputs": [{"data": [[1.0, 2.0]]}]})
    assert code == "400" and reply["error"]["reason"] == "shape" and reply["error"]["expected"] == "[1, 4]"
    reply, code = await call(nc, "run_model", {"model": "nope", "inputs": [{"data": [[1, 2, 3, 4]]}]})
    assert code == "400" and "loaded: fc" in reply["error"]["message"]
    reply, code = await call(nc, "run_model", {"model": "fc", "inputs": [{"data": [[1, 2], [3]]}]})
    assert code == "400" and "not a regular array" in reply["error"]["message"]
    reply, code = await call(nc, "run_model", {"model": "fc", "inputs": [{"b64": "AAAA", "shape": [1, 4],
                                                                          "dtype": "float32"}]})
    assert code == "400" and "3 bytes do not fill shape [1, 4]" in reply["error"]["message"]
    reply, code = await call(nc, "run_model", {"model": "fc", "inputs": [{"b64": "AAAA"}]})
    assert code == "400" and "needs 'shape' and 'dtype'" in reply["error"]["message"]


async def test_run_model_without_registry(nc: Client, start_tools: Any) -> None:
    await start_tools()
    reply, code = await call(nc, "run_model", {"model": "fc", "inputs": [{"data": [1]}]})
    assert code == "503" and reply["error"]["reason"] == "no-models"


# -- commands ---------------------------------------------------------------------------------


async def test_send_command_waits_for_ack(nc: Client, start_tools: Any) -> None:
    svc = await start_tools()
    seen: list[tuple[dict[str, Any], str | None]] = []

    async def actuator(cmd: CommandRequest) -> dict[str, Any]:
        seen.append((cmd.args, cmd.caller))
        if not isinstance(cmd.args.get("x", 0), (int, float)):
            raise ValueError("velocity.x must be a number (m/s)")
        return {"applied": cmd.args}

    svc.ctx.commands.register("drone-1", "velocity", actuator, owner="a test actuator")
    res = await ok(nc, svc, "send_command", {"entity": "drone-1", "verb": "velocity",
                                             "args": {"x": 1.5, "y": 0, "z": 0}})
    assert res["ack"] == {"ok": True, "id": res["ack"]["id"], "applied": {"x": 1.5, "y": 0, "z": 0}}
    assert res["subject"] == f"edge.{DEVICE}.cmd.drone-1.velocity" and res["rtt_ms"] > 0
    assert seen == [({"x": 1.5, "y": 0, "z": 0}, "anonymous")]
    seen.clear()
    # a refused command is a successful tool call whose ack says why; nothing serving it, too
    res = await ok(nc, svc, "send_command", {"entity": "drone-1", "verb": "velocity", "args": {"x": "fast"}})
    assert res["ack"] == {"ok": False, "id": res["ack"]["id"], "error": "velocity.x must be a number (m/s)",
                          "reason": "failed", "owner": "a test actuator"}
    res = await ok(nc, svc, "send_command", {"entity": "drone-9", "verb": "rtl"})
    assert res["ack"]["ok"] is False and res["ack"]["reason"] == "no-handler"
    assert "serves 'rtl' for 'drone-9'" in res["ack"]["error"]


async def test_send_command_timeout_and_bad_verb(nc: Client, start_tools: Any) -> None:
    svc = await start_tools()

    async def stuck(cmd: CommandRequest) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    svc.ctx.commands.register("drone-1", "rtl", stuck, owner="a stuck actuator")
    t0 = time.monotonic()
    reply, code = await call(nc, "send_command", {"entity": "drone-1", "verb": "rtl", "timeout_s": 0.2})
    assert code == "504" and "no answer to edge.dev1.cmd.drone-1.rtl within 0.2 s" in reply["error"]["message"]
    assert reply["error"]["id"]  # the command id, to find its answer on the ack subject later
    assert time.monotonic() - t0 < 2
    reply, code = await call(nc, "send_command", {"entity": "drone-1", "verb": "fly.away"})
    assert code == "400" and reply["error"]["path"] == "$.verb"
    assert svc.errors["send_command"] == 2


# -- validation and permissions ---------------------------------------------------------------


@pytest.mark.parametrize(("tool", "body", "words"), [
    ("read_component", {"entity": "drone-1"}, "$: missing required property 'component'"),
    ("read_component", {"entity": 5, "component": "battery"}, "$.entity: expected string, got the number 5"),
    ("list_entities", {"kinds": "drone"}, "$: unknown property 'kinds' (known: kind)"),
    ("run_model", {"model": "fc", "inputs": []}, "$.inputs: must have at least 1 item(s)"),
    ("run_model", {"model": "fc", "inputs": [{"data": [1]}], "output_encoding": "hex"},
     "$.output_encoding: must be one of 'json', 'b64', got 'hex'"),
    ("run_model", {"model": "fc", "inputs": [{"b64": "", "shape": [-1], "dtype": "float32"}]},
     "$.inputs[0].shape[0]: must be >= 0, got -1"),
    ("send_command", {"entity": "drone-1", "verb": "go", "timeout_s": 99}, "$.timeout_s: must be <= 30.0"),
    ("send_command", {"entity": "drone-1", "verb": "go", "args": [1]}, "$.args: expected object, got an array"),
    ("capture_frame", {"detect": 1}, "$.detect: expected boolean, got the number 1"),
])
async def test_requests_are_validated(nc: Client, start_tools: Any, tool: str, body: Any, words: str) -> None:
    await start_tools()
    reply, code = await call(nc, tool, body)
    assert code == "400" and reply["error"]["error"] == "SchemaViolation"
    assert words in reply["error"]["message"]


async def test_non_json_and_non_object_requests(nc: Client, start_tools: Any) -> None:
    await start_tools()
    reply, code = await call(nc, "list_entities", raw=b"{nope")
    assert code == "400" and "not JSON" in reply["error"]["message"]
    reply, code = await call(nc, "list_entities", raw=b"[1]")
    assert code == "400" and "expected object, got an array" in reply["error"]["message"]


PERMS = {"planner": ["list_entities", "read_sensor", "send_command"], "ops": ["*"], "*": ["list_entities"]}


async def test_permissions(nc: Client, start_tools: Any) -> None:
    svc = await start_tools(parse_tools_config({"callers": PERMS}, file="device.toml"))
    reply, code = await call(nc, "read_component", {"entity": "drone-1", "component": "battery"}, caller="planner")
    assert code == "403" and reply["error"]["error"] == "ToolDenied"
    assert reply["error"]["message"] == "caller 'planner' may not use tool 'read_component'"
    _, code = await call(nc, "read_sensor", {"entity": "drone-1", "sensor": "battery"}, caller="planner")
    assert code is None
    _, code = await call(nc, "read_component", {"entity": "drone-1", "component": "battery"}, caller="ops")
    assert code is None
    _, code = await call(nc, "list_entities", {}, caller=None)  # anonymous: the "*" entry
    assert code is None
    _, code = await call(nc, "read_sensor", {"entity": "drone-1", "sensor": "battery"})
    assert code == "403"
    _, code = await call(nc, "read_sensor", {"entity": "drone-1", "sensor": "battery"}, caller="mallory")
    assert code == "403"
    assert svc.denied == {"planner": 1, "anonymous": 1, "mallory": 1}
    assert svc.status()["last_denied"]["caller"] == "mallory"
    # denial happens before validation: a denied caller learns nothing about the request format
    reply, code = await call(nc, "run_model", {"bogus": 1}, caller="planner")
    assert code == "403"


async def test_schema_endpoint_and_metadata(nc: Client, start_tools: Any) -> None:
    await start_tools(parse_tools_config({"callers": PERMS}))
    msg = await nc.request(f"{TOOLS}.schema", b"", timeout=2, headers={"Edge-Caller": "planner"})
    body = json.loads(msg.data)["result"]
    assert body["caller"] == "planner" and body["device"] == DEVICE
    assert [t["name"] for t in body["tools"]] == ["list_entities", "read_sensor", "send_command"]
    send = body["tools"][2]
    assert send["input_schema"]["required"] == ["entity", "verb"] and send["description"]
    msg = await nc.request(f"{TOOLS}.schema", b"", timeout=2, headers={"Edge-Caller": "ops"})
    assert [t["name"] for t in json.loads(msg.data)["result"]["tools"]] == list(TOOL_NAMES)
    info = json.loads((await nc.request("$SRV.INFO.edge-tools", b"", timeout=2)).data)
    eps = {e["name"]: e for e in info["endpoints"]}
    assert eps["run_model"]["subject"] == f"{TOOLS}.run_model"
    assert json.loads(eps["run_model"]["metadata"]["input_schema"])["required"] == ["model", "inputs"]


async def test_disabled_service_serves_nothing(nc: Client, start_tools: Any) -> None:
    await start_tools(ToolsConfig(enabled=False))
    with pytest.raises(Exception):  # noqa: B017  no responders
        await nc.request(f"{TOOLS}.list_entities", b"{}", timeout=0.5)


def test_parse_tools_config() -> None:
    cfg = parse_tools_config({"ack_timeout": 1, "callers": PERMS})
    assert cfg.ack_timeout == 1.0 and not cfg.permissions.open
    assert cfg.permissions.allowed("planner", "send_command")
    assert not cfg.permissions.allowed("planner", "run_model")
    assert cfg.permissions.allowed("anyone", "list_entities")
    assert parse_tools_config(None).permissions.open
    for raw, key in [
        ({"callers": {"planner": ["fly"]}}, "tools.callers.planner"),
        ({"callers": {"planner": "list_entities"}}, "tools.callers.planner"),
        ({"callers": {"bad name": []}}, "tools.callers.bad name"),
        ({"ack_timeout": 0}, "tools.ack_timeout"),
        ({"enabled": "yes"}, "tools.enabled"),
        ({"colour": 1}, "tools.colour"),
    ]:
        with pytest.raises(ConfigError) as exc:
            parse_tools_config(raw, file="device.toml")
        assert exc.value.key == key and exc.value.file == "device.toml"


def test_nats_permission_snippet_is_valid_server_config(tmp_path: Path) -> None:
    perms = parse_tools_config({"callers": PERMS}).permissions
    snippet = perms.nats_permissions("demo", TOOL_NAMES)
    assert '"edge.demo.tools.send_command"' in snippet and '"edge.demo.tools.run_model"' in snippet
    lines = snippet.splitlines()
    planner = lines[[i for i, line in enumerate(lines) if 'user = "planner"' in line][0] + 1]
    assert "read_component" not in planner and "run_model" not in planner
    assert all(f'"edge.demo.tools.{t}"' in planner for t in ("schema", "list_entities", "send_command"))
    conf = tmp_path / "server.conf"
    conf.write_text(f"listen: 127.0.0.1:-1\n{snippet}\n")
    proc = subprocess.run([str(NATS_SERVER), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_validator() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1},
                                               "v": {"type": ["number", "null"]},
                                               "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}},
              "additionalProperties": {"type": "string"}}
    validate({"n": 2, "v": None, "tags": ["a"], "extra": "x"}, schema)
    validate({"n": 2.0}, schema)  # 2.0 is an integer in JSON
    for bad, where in [({"n": True}, "$.n"), ({"n": 1.5}, "$.n"), ({"v": float("nan")}, "$.v"),
                       ({"tags": ["a", 1]}, "$.tags[1]"), ({"tags": ["a", "b", "c"]}, "$.tags"),
                       ({"extra": 3}, "$.extra"), ({"n": 0}, "$.n")]:
        with pytest.raises(SchemaViolation) as exc:
            validate(bad, schema)
        assert exc.value.path == where
    # the whole of draft-07, not a subset: pattern, oneOf, const, ...
    strict = {"type": "object", "properties": {"id": {"type": "string", "pattern": "^drone-[0-9]+$"},
                                               "mode": {"oneOf": [{"const": "a"}, {"const": "b"}]}}}
    validate({"id": "drone-7", "mode": "b"}, strict)
    for bad, where in [({"id": "rover-1"}, "$.id"), ({"mode": "c"}, "$.mode")]:
        with pytest.raises(SchemaViolation) as exc:
            validate(bad, strict)
        assert exc.value.path == where
    with pytest.raises(SchemaViolation, match=r"^\$\.tags\[1\]: expected string, got the number 1$"):
        validate({"tags": ["a", 1]}, schema)
    _ = ToolPermissions()
