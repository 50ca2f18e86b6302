"""What docs/subjects.md ("Device API") and docs/agents.md ("Tools for external agents") promise
the NATS micro services external agents use, checked against a running device from the docs
alone: service discovery (``$SRV.PING``, ``$SRV.INFO``, ``$SRV.STATS``), the documented subjects,
request and result shapes, the error envelope and its ``Nats-Service-Error`` headers, the tool
schemas (valid JSON Schema; requests and replies validated against them with the project's
validator, :mod:`edge.agents.jsonschema`), and ``edge status`` / ``--json`` through the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from edge.agents.jsonschema import validate
from edge.demo.actuator import SimActuator
from edge.runtime import Runtime
from rigs.runtime import device_from_files, url_of

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
DEV = "docs"
CONFIG = """
[device]
id = "docs"
[tools.callers]
planner = ["list_entities", "read_sensor", "send_command"]
ops = ["*"]
[[entities]]
id = "drone-0"
kind = "drone"
labels = { fleet = "north" }
components = { position = { x = 1.0, y = 2.0, z = 3.0 }, battery = { level = 0.9 } }
"""
OPS = {"Edge-Caller": "ops"}


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[tuple[Runtime, Client]]:
    async with device_from_files(tmp_path, {"device.toml": CONFIG}, [SimActuator()]) as both:
        yield both


async def call(nc: Client, subject: str, body: Any = None, headers: dict[str, str] | None = None
               ) -> tuple[dict[str, str], dict[str, Any]]:
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(subject, data, timeout=5, headers=headers)
    return dict(msg.headers or {}), json.loads(msg.data)


async def ok(nc: Client, subject: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    hdrs, reply = await call(nc, subject, body, headers)
    assert reply.get("ok") is True and set(reply) == {"ok", "result"}, reply
    assert "Nats-Service-Error-Code" not in hdrs
    return reply["result"]


async def refused(nc: Client, subject: str, body: Any, code: str, headers: dict[str, str] | None = None
                  ) -> dict[str, Any]:
    """The documented refusal: ``{"ok": false, "error": {"error": "<class>", "message", ...}}``
    with ``Nats-Service-Error`` (the message) and ``Nats-Service-Error-Code``."""
    hdrs, reply = await call(nc, subject, body, headers)
    assert reply["ok"] is False and set(reply) == {"ok", "error"}, reply
    err = reply["error"]
    assert isinstance(err["error"], str) and err["error"] and isinstance(err["message"], str), reply
    assert hdrs.get("Nats-Service-Error-Code") == code, (hdrs, reply)
    assert hdrs.get("Nats-Service-Error"), hdrs
    return dict(err)


def documented_api_subjects() -> set[str]:
    text = (ROOT / "docs" / "subjects.md").read_text()
    section = text[text.index("## Device API"):text.index("## Streams")]
    return {f"edge.{DEV}.api.{m}" for m in re.findall(r"^\| `edge\.<d>\.api\.([a-z]+\.[a-z]+)`", section, re.M)}


async def gather_replies(nc: Client, subject: str, wait: float = 1.0) -> list[dict[str, Any]]:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    await nc.flush()
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + wait
    while (left := end - loop.time()) > 0:
        try:
            out.append(json.loads((await sub.next_msg(timeout=left)).data))
        except (TimeoutError, nats.errors.TimeoutError):
            break
    await sub.unsubscribe()
    return out


# -- service discovery -------------------------------------------------------------------------


async def test_the_services_answer_srv_ping_info_and_stats(device: tuple[Runtime, Client]) -> None:
    _, nc = device
    pings = {p["name"]: p for p in await gather_replies(nc, "$SRV.PING")}
    for name in ("edge-device", "edge-tools"):
        assert pings[name]["type"] == "io.nats.micro.v1.ping_response"
        assert pings[name]["metadata"]["device"] == DEV
    info = json.loads((await nc.request("$SRV.INFO.edge-device", b"", timeout=5)).data)
    assert info["type"] == "io.nats.micro.v1.info_response"
    assert info["metadata"]["device"] == DEV  # tells which device answers
    served = {e["subject"] for e in info["endpoints"]}
    assert served == documented_api_subjects(), served ^ documented_api_subjects()

    await ok(nc, f"edge.{DEV}.api.entity.list", {})
    await refused(nc, f"edge.{DEV}.api.entity.get", b"not json", "400")
    stats = json.loads((await nc.request("$SRV.STATS.edge-device", b"", timeout=5)).data)
    assert stats["type"] == "io.nats.micro.v1.stats_response"
    by_subject = {e["subject"]: e for e in stats["endpoints"]}
    assert by_subject[f"edge.{DEV}.api.entity.list"]["num_requests"] >= 1
    assert by_subject[f"edge.{DEV}.api.entity.get"]["num_requests"] >= 1

    tinfo = json.loads((await nc.request("$SRV.INFO.edge-tools", b"", timeout=5)).data)
    subjects = {e["subject"] for e in tinfo["endpoints"]}
    for tool in ("schema", "list_entities", "read_component", "read_sensor", "capture_frame", "run_model",
                 "send_command"):
        assert f"edge.{DEV}.tools.{tool}" in subjects


# -- the device API ----------------------------------------------------------------------------


async def test_device_api_results_have_the_documented_shapes(device: tuple[Runtime, Client]) -> None:
    _, nc = device
    api = f"edge.{DEV}.api."
    cli = {"Edge-Caller": "cli"}
    rows = await ok(nc, api + "entity.list", {"kind": "drone", "labels": {"fleet": "north"}})
    assert [r["id"] for r in rows] == ["drone-0"]
    assert set(rows[0]) == {"id", "kind", "labels", "components"} and isinstance(rows[0]["components"], list)
    assert await ok(nc, api + "entity.list", {"labels": {"fleet": "south"}}) == []

    got = await ok(nc, api + "entity.get", {"id": "drone-0"})
    assert set(got) == {"id", "kind", "labels", "components", "freshness"}
    assert got["components"]["position"] == {"x": 1.0, "y": 2.0, "z": 3.0}
    assert set(got["freshness"]) >= {"position"} and "age_s" in got["freshness"]["position"]

    new = await ok(nc, api + "entity.spawn", {"id": "scout", "kind": "drone", "components": {"position": {"x": 5.0}}},
                   cli)
    assert new["id"] == "scout" and new["kind"] == "drone" and new["components"]["position"]["x"] == 5.0
    merged = await ok(nc, api + "entity.set", {"id": "scout", "component": "position", "values": {"y": 2.0}}, cli)
    assert merged["x"] == 5.0 and merged["y"] == 2.0  # the component after the merge
    assert await ok(nc, api + "entity.unset", {"id": "scout", "component": "position"}, cli) is None
    assert await ok(nc, api + "entity.rm", {"id": "scout"}, cli) is None
    await refused(nc, api + "entity.get", {"id": "scout"}, "400")

    schemas = await ok(nc, api + "schema.list", {})
    assert all(set(s) >= {"name", "fields", "units", "doc"} for s in schemas)
    assert {"position", "velocity", "battery"} <= {s["name"] for s in schemas}
    assert isinstance(await ok(nc, api + "component.list", {}), list)

    acc = await ok(nc, api + "accounting.get", {})
    assert set(acc) >= {"device", "policy", "top", "denials", "quotas"}
    assert set(acc["top"]) >= {"messages", "bytes", "gas"}
    await ok(nc, api + "accounting.get", {"top": 1000})
    for top in (0, 1001, "5", True):
        err = await refused(nc, api + "accounting.get", {"top": top}, "400")
        assert err.get("key") == "top"

    err = await refused(nc, api + "policy.reload", {}, "400")  # without a [policy] file: a 400 saying so
    assert "[policy] file" in err["message"]


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'"x"', b"[" * 50_000 + b"]" * 50_000, b'{"id": 5}',
                                  b'{"id": "drone-0", "component": "position", "values": {"x": NaN}}'])
async def test_a_malformed_api_request_is_a_400_in_the_envelope(device: tuple[Runtime, Client], body: bytes) -> None:
    _, nc = device
    subject = "entity.set" if b"values" in body else "entity.get"
    await refused(nc, f"edge.{DEV}.api.{subject}", body, "400", {"Edge-Caller": "cli"})


async def test_a_huge_id_is_clipped_in_the_refusal(device: tuple[Runtime, Client]) -> None:
    _, nc = device
    err = await refused(nc, f"edge.{DEV}.api.entity.get", {"id": "x" * 100_000}, "400")
    assert len(err["message"]) <= 512
    assert all(len(v) <= 256 for k, v in err.items() if isinstance(v, str) and k != "message")


# -- the tools service -------------------------------------------------------------------------

#: JSON Schema keywords (draft 2020-12 core, applicator and validation vocabularies, annotations).
SCHEMA_KEYWORDS = {
    "$schema", "$id", "$ref", "$defs", "$comment", "type", "enum", "const", "properties", "required",
    "additionalProperties", "patternProperties", "items", "prefixItems", "minItems", "maxItems", "uniqueItems",
    "minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "anyOf", "oneOf", "allOf", "not", "description", "title", "default", "examples",
    "minProperties", "maxProperties",
}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


def check_schema(schema: Any, where: str) -> None:
    """A JSON Schema well-formedness check (what a validator's meta-schema check refuses):
    known keywords, valid type names, ``required`` a list of unique strings naming properties,
    sub-schemas well-formed, numeric bounds numbers, enum a non-empty list."""
    assert isinstance(schema, Mapping), where
    unknown = set(schema) - SCHEMA_KEYWORDS
    assert not unknown, f"{where}: not JSON Schema keywords: {unknown}"
    if "type" in schema:
        kinds = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        assert isinstance(kinds, list) and kinds and set(kinds) <= TYPES, f"{where}.type"
    if "required" in schema:
        req = schema["required"]
        assert isinstance(req, list) and all(isinstance(r, str) for r in req) and len(set(req)) == len(req), where
        assert set(req) <= set(schema.get("properties", {})), f"{where}: required names no property"
    for name, sub in schema.get("properties", {}).items():
        check_schema(sub, f"{where}.properties.{name}")
    ap = schema.get("additionalProperties", True)
    if not isinstance(ap, bool):
        check_schema(ap, f"{where}.additionalProperties")
    if "items" in schema:
        check_schema(schema["items"], f"{where}.items")
    for kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if kw in schema:
            assert isinstance(schema[kw], (int, float)) and not isinstance(schema[kw], bool), f"{where}.{kw}"
    for kw in ("minItems", "maxItems", "minLength", "maxLength"):
        if kw in schema:
            assert isinstance(schema[kw], int) and schema[kw] >= 0, f"{where}.{kw}"
    if "enum" in schema:
        assert isinstance(schema["enum"], list) and schema["enum"], f"{where}.enum"
    for kw in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(kw, [])):
            check_schema(sub, f"{where}.{kw}[{i}]")


async def tool_schemas(nc: Client, caller: str = "ops") -> dict[str, dict[str, Any]]:
    res = await ok(nc, f"edge.{DEV}.tools.schema", {}, {"Edge-Caller": caller})
    assert set(res) == {"device", "caller", "tools"} and (res["device"], res["caller"]) == (DEV, caller)
    for t in res["tools"]:
        assert set(t) == {"name", "description", "input_schema", "output_schema"}, t
    return {t["name"]: t for t in res["tools"]}


async def test_tool_schemas_are_json_schema_and_match_the_endpoint_metadata(device: tuple[Runtime, Client]) -> None:
    _, nc = device
    tools = await tool_schemas(nc)
    assert {"list_entities", "read_component", "read_sensor", "capture_frame", "run_model",
            "send_command"} <= set(tools)
    for name, t in tools.items():
        assert t["description"]
        check_schema(t["input_schema"], f"{name}.input_schema")
        check_schema(t["output_schema"], f"{name}.output_schema")
        assert t["input_schema"]["type"] == "object" and t["output_schema"]["type"] == "object"
    info = json.loads((await nc.request("$SRV.INFO.edge-tools", b"", timeout=5)).data)
    for ep in info["endpoints"]:
        name = ep["subject"].rsplit(".", 1)[1]
        if name in tools:
            meta = ep["metadata"]
            assert meta["description"] == tools[name]["description"]
            assert json.loads(meta["input_schema"]) == tools[name]["input_schema"]
            assert json.loads(meta["output_schema"]) == tools[name]["output_schema"]
    # the documented ranges are in the schemas
    props = tools["send_command"]["input_schema"]["properties"]
    assert (props["timeout_s"]["minimum"], props["timeout_s"]["maximum"]) == (0.01, 30)
    thumb = tools["capture_frame"]["input_schema"]["properties"]["thumbnail_px"]
    assert (thumb["minimum"], thumb["maximum"]) == (0, 128)
    if "search_knowledge" in tools:
        limit = tools["search_knowledge"]["input_schema"]["properties"]["limit"]
        assert (limit["minimum"], limit["maximum"]) == (1, 50)


async def test_a_callers_schema_lists_only_its_tools(device: tuple[Runtime, Client]) -> None:
    _, nc = device
    assert set(await tool_schemas(nc, "planner")) == {"list_entities", "read_sensor", "send_command"}


async def test_tool_replies_match_their_output_schemas(device: tuple[Runtime, Client]) -> None:
    _, nc = device
    tools = await tool_schemas(nc)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("list_entities", {"kind": "drone"}),
        ("list_entities", {}),
        ("read_component", {"entity": "drone-0", "component": "position"}),
        ("read_sensor", {"entity": "drone-0", "sensor": "battery"}),
        ("send_command", {"entity": "drone-0", "verb": "hold", "args": {}, "timeout_s": 2.0}),
        ("send_command", {"entity": "drone-0", "verb": "no-such-verb"}),
    ]
    for name, body in calls:
        validate(body, tools[name]["input_schema"])  # the example requests are valid input
        result = await ok(nc, f"edge.{DEV}.tools.{name}", body, OPS)
        validate(result, tools[name]["output_schema"])
    listed = await ok(nc, f"edge.{DEV}.tools.list_entities", {"kind": "drone"}, OPS)
    assert [e["id"] for e in listed["entities"]] == ["drone-0"]
    sensor = await ok(nc, f"edge.{DEV}.tools.read_sensor", {"entity": "drone-0", "sensor": "battery"}, OPS)
    assert sensor["source"] == "world" and sensor["values"]["level"] == 0.9
    refused_cmd = await ok(nc, f"edge.{DEV}.tools.send_command", {"entity": "drone-0", "verb": "no-such-verb"}, OPS)
    ack = refused_cmd["ack"]  # a refused command is still a successful tool call
    assert ack["ok"] is False and ack["reason"] == "no-handler" and {"id", "error"} <= set(ack)
    assert refused_cmd["subject"] == f"edge.{DEV}.cmd.drone-0.no-such-verb"


async def test_tool_errors_have_the_documented_codes(device: tuple[Runtime, Client]) -> None:
    _, nc = device
    tools = f"edge.{DEV}.tools."
    err = await refused(nc, tools + "list_entities", {"kind": 5}, "400", OPS)
    assert "$.kind" in err["message"]
    err = await refused(nc, tools + "send_command", {"entity": "drone-0", "verb": "hold", "args": [1]}, "400", OPS)
    assert "$.args: expected object, got an array" in err["message"]
    await refused(nc, tools + "send_command", {"entity": "drone-0", "verb": "hold", "timeout_s": 31}, "400", OPS)
    await refused(nc, tools + "read_component", b"[1]", "400", OPS)
    err = await refused(nc, tools + "read_component", {"entity": "drone-0", "component": "position"}, "403",
                        {"Edge-Caller": "planner"})
    assert "caller 'planner' may not use tool 'read_component'" in err["message"]
    await refused(nc, tools + "list_entities", {}, "403")  # no caller, and no "*" entry: anonymous is denied
    await refused(nc, tools + "read_sensor", {"entity": "nobody", "sensor": "battery"}, "404", OPS)
    err = await refused(nc, tools + "capture_frame", {}, "503", OPS)
    assert "no camera: this device has no frame source" in err["message"]
    before = (await ok(nc, f"edge.{DEV}.api.status.get", {}))["tools"]["unknown"]
    err = await refused(nc, tools + "fly_to_the_moon", {}, "404", OPS)
    assert err["error"] == "ToolNotFound" and "list_entities" in err["message"]
    assert (await ok(nc, f"edge.{DEV}.api.status.get", {}))["tools"]["unknown"] == before + 1


# -- edge status through the real CLI ----------------------------------------------------------


async def edge_cli(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edge.cli.main", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_edge_status_and_its_json_show_the_documented_fields(device: tuple[Runtime, Client]) -> None:
    rt, nc = device
    url = url_of(rt)
    code, out, err = await edge_cli("status", "--json", "--url", url)  # the device found by $SRV.INFO
    assert code == 0, err
    doc = json.loads(out)
    api_doc = await ok(nc, f"edge.{DEV}.api.status.get", {})
    assert set(doc) == set(api_doc)  # the same document as api.status.get
    assert doc["device"] == DEV
    for key in ("commands", "answers", "duplicates", "in_flight", "queued", "refusals_unrecorded"):
        assert key in doc["commands"], key
    assert "skipped_on_restore" in doc["state"]
    for key in ("unknown", "denied", "sensors_dropped"):
        assert key in doc["tools"], key
    assert "error" in doc["policy"]
    assert {"components", "entities", "nats"} <= set(doc)

    code, out, err = await edge_cli("status", "--url", url, "--device", DEV)
    assert code == 0, err
    assert "drone-0" in out and "ENTITY" in out  # components, entities, NATS health
    assert "commands:" in out and "tools:" in out


async def test_cli_exit_codes(device: tuple[Runtime, Client]) -> None:
    rt, _ = device
    url = url_of(rt)
    code, out, err = await edge_cli("entity", "get", "nobody", "--url", url)
    assert code == 1 and err.startswith("edge: ") and err.count("\n") == 1 and "Traceback" not in err, err
    code, out, err = await edge_cli("cmd", "drone-0", "no-such-verb", "--url", url)
    assert code == 1 and json.loads(out)["reason"] == "no-handler" and "(no-handler)" in err, (out, err)
    code, out, err = await edge_cli("cmd", "drone-0", "hold", "[1]", "--url", url)
    assert code == 1 and "must be a JSON object" in err
    code, _, err = await edge_cli("entity", "frobnicate")
    assert code == 2 and "usage" in err
    code, out, err = await edge_cli("entity", "get", "drone-0", "--url", url)
    assert code == 0 and json.loads(out)["id"] == "drone-0", err
