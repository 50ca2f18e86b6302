"""Attacker clients against a running device's NATS surface, written from docs/subjects.md and
docs/agents.md: the device API (``edge.<d>.api.*``), the tools service (``edge.<d>.tools.*``) and
the command subjects (``edge.<d>.cmd.<entity>.<verb>``). Every malformed, oversized, deeply
nested, wildcard-laden or out-of-range request gets the documented error shape; the services keep
answering; nothing in the world or in the ``edge-state`` bucket changes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from edge.agents.decisions import MAX_INGESTED_BYTES
from edge.agents.tools.service import MAX_SENSOR_BYTES
from edge.demo.actuator import SimActuator
from edge.nats.commands import MAX_COMMAND_BYTES
from edge.nats.service import MAX_MESSAGE_CHARS
from edge.nats.subjects import STATE_BUCKET
from edge.runtime import Runtime
from rigs.runtime import device_from_files

pytestmark = pytest.mark.timeout(120)

DEV = "atk"
API = f"edge.{DEV}.api."
TOOLS = f"edge.{DEV}.tools."
CMD = f"edge.{DEV}.cmd."
CLI = {"Edge-Caller": "cli"}

POLICY = """
[[rule]]
name = "cli-writes"
effect = "allow"
principal = "caller:cli"
action = "kv"
resource = ">"

[[rule]]
name = "flood-writes"
effect = "allow"
principal = "caller:flood"
action = "kv"
resource = ">"

[[limit]]
name = "flood-burst"
principal = "caller:flood"
action = "kv"
resource = ">"
rate = 0.001
burst = 5

[[rule]]
name = "anyone-commands"
effect = "allow"
principal = "caller:*"
action = "command"
resource = ">"
"""

CONFIG = """
[device]
id = "atk"
[policy]
file = "policy.toml"
watch_interval = 0
[safety.drone-0]
ceiling = 50.0
[[entities]]
id = "drone-0"
kind = "drone"
labels = { fleet = "north" }
components = { position = { x = 1.0, y = 2.0, z = 3.0 }, flight = { armed = true, mode = "GUIDED" } }
"""

#: JSON nested deeper than any decoder's recursion limit.
DEEP = b"[" * 100_000 + b"]" * 100_000
#: An integer too large for a float (``math.isfinite`` raises OverflowError on it).
HUGE_INT = ("1" + "0" * 400).encode()


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[tuple[Runtime, Client]]:
    """A running device (its sim actuator serves drone-0's velocity/hold/rtl, guarded by the
    envelope) and a second client, as an attacker connects."""
    async with device_from_files(tmp_path, {"policy.toml": POLICY, "device.toml": CONFIG}, [SimActuator()]) as both:
        yield both


async def snapshot(rt: Runtime) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The world (every entity's meta and components) and the flushed ``edge-state`` bucket."""
    world = rt.world
    assert rt.persister is not None and rt.js is not None
    await rt.persister.flush()
    entities = {m.id: (m.to_dict(), world.get_all(m.id)) for m in world.entities()}
    kv = await rt.js.key_value(STATE_BUCKET)
    keys = sorted(await kv.keys())
    stored = {}
    for key in keys:
        entry = await kv.get(key)
        stored[key] = entry.value or b""
    return entities, stored


async def call(nc: Client, subject: str, data: bytes, headers: dict[str, str] | None = None
               ) -> tuple[dict[str, str], dict[str, Any]]:
    msg = await nc.request(subject, data, timeout=5, headers=headers)
    return dict(msg.headers or {}), json.loads(msg.data)


def assert_refused(headers: dict[str, str], reply: dict[str, Any], code: str, error: str) -> None:
    """The documented error shape: ``{"ok": false, "error": {"error", "message", ...}}`` and the
    ``Nats-Service-Error`` headers."""
    assert reply["ok"] is False, reply
    assert headers.get("Nats-Service-Error-Code") == code, (headers, reply)
    assert reply["error"]["error"] == error, reply
    assert reply["error"]["message"] and headers["Nats-Service-Error"]
    assert len(reply["error"]["message"]) <= MAX_MESSAGE_CHARS


API_ATTACKS: list[tuple[str, bytes, dict[str, str] | None, str, str]] = [
    ("entity.get", b"not json", None, "400", "RequestError"),
    ("entity.get", b"[1, 2]", None, "400", "RequestError"),
    ("entity.get", b'"drone-0"', None, "400", "RequestError"),
    ("entity.get", DEEP, None, "400", "RequestError"),
    ("entity.get", b'{"id": 5}', None, "400", "RequestError"),
    ("entity.get", b'{"id": ""}', None, "400", "RequestError"),
    ("entity.get", b'{"id": "drone-0.>"}', None, "400", "EntityError"),
    ("entity.list", b'{"kind": 5}', None, "400", "RequestError"),
    ("entity.list", b'{"labels": {"fleet": ["north"]}}', None, "400", "RequestError"),
    ("entity.list", b'{"labels": "fleet=north"}', None, "400", "RequestError"),
    ("entity.set", b'{"id": "drone-0", "component": "position", "values": {"x": NaN}}', CLI, "400", "SchemaError"),
    ("entity.set", b'{"id": "drone-0", "component": "position", "values": {"x": -Infinity}}', CLI, "400",
     "SchemaError"),
    ("entity.set", b'{"id": "drone-0", "component": "position", "values": {"x": 1e400}}', CLI, "400", "SchemaError"),
    ("entity.set", b'{"id": "drone-0", "component": "position", "values": {"x": ' + HUGE_INT + b"}}", CLI, "400",
     "SchemaError"),
    ("entity.set", b'{"id": "drone-0", "component": "position", "values": {"x": "1.0"}}', CLI, "400", "SchemaError"),
    ("entity.set", b'{"id": "drone-0", "component": "position", "values": {"w": 1.0}}', CLI, "400", "SchemaError"),
    ("entity.set", b'{"id": "drone-0", "component": "position", "values": [1.0]}', CLI, "400", "RequestError"),
    ("entity.set", b'{"id": "drone-0", "component": "flight", "values": {"armed": 1}}', CLI, "400", "SchemaError"),
    ("entity.set", b'{"id": "*", "component": "position", "values": {"x": 1.0}}', CLI, "400", "RequestError"),
    ("entity.set", b'{"id": "drone-0", "component": "position.>", "values": {"x": 1.0}}', CLI, "400",
     "RequestError"),
    ("entity.set", b'{"id": "drone-0", "component": "position", "values": {"x": 9.0}}', None, "403", "PolicyDenied"),
    ("entity.spawn", b'{"id": "drone-0..x"}', CLI, "400", "RequestError"),
    ("entity.spawn", b'{"id": "new\\u0000one"}', CLI, "400", "RequestError"),
    ("entity.spawn", b'{"id": "\\u00e9t\\u00e9"}', CLI, "400", "RequestError"),
    ("entity.spawn", b'{"id": "new-1", "kind": {"drone": true}}', CLI, "400", "RequestError"),
    ("entity.spawn", b'{"id": "new-1", "labels": {"fleet": {"north": 1}}}', CLI, "400", "RequestError"),
    ("entity.spawn", b'{"id": "new-1", "components": [1]}', CLI, "400", "RequestError"),
    ("entity.spawn", b'{"id": "new-1", "components": {"position": {"x": NaN}}}', CLI, "400", "SchemaError"),
    ("entity.spawn", b'{"id": "new-1", "components": {"*": {"x": 1.0}}}', CLI, "400", "RequestError"),
    ("entity.spawn", b'{"id": "drone-0"}', CLI, "400", "EntityError"),
    ("entity.unset", b'{"id": "drone-0", "component": "nosuch"}', CLI, "400", "EntityError"),
    ("entity.rm", b'{"id": ">"}', CLI, "400", "RequestError"),
    ("entity.rm", b'{"id": "drone-0"}', {"Edge-Caller": "*"}, "403", "PolicyDenied"),
    ("entity.rm", b'{"id": "drone-0"}', {"Edge-Caller": "cli.x"}, "403", "PolicyDenied"),
    ("entity.rm", b'{"id": "drone-0"}', {"Edge-Caller": "cli\x00" + "x" * 100}, "403", "PolicyDenied"),
    ("component.load", b'{"manifest": "/dev/zero"}', CLI, "400", "ComponentLoadError"),
    ("component.load", b'{"manifest": 7}', CLI, "400", "RequestError"),
    ("component.unload", b'{"name": "../x"}', CLI, "400", "RequestError"),
    ("accounting.get", b'{"top": 1e3}', None, "400", "RequestError"),
    ("accounting.get", b'{"top": ' + HUGE_INT + b"}", None, "400", "RequestError"),
    ("accounting.get", b'{"top": true}', None, "400", "RequestError"),
]

#: The other services under ``api.``: the agent host's and the language layer's (off here: its
#: requests are still checked before it says it is not serving).
OTHER_API_ATTACKS: list[tuple[str, bytes, str, str]] = [
    ("agent.decisions", b'{"entity": 5}', "400", "AgentRequestError"),
    ("agent.decisions", b'{"limit": 0}', "400", "AgentRequestError"),
    ("agent.decisions", b'{"limit": ' + HUGE_INT + b"}", "400", "AgentRequestError"),
    ("agent.decisions", DEEP, "400", "RequestError"),
    ("agent.list", b"not json", "400", "RequestError"),
    ("language.note", b'{"text": "hi", "entity": "drone-0.*"}', "400", "LanguageError"),
    ("language.search", DEEP, "400", "RequestError"),
]

async def test_malformed_api_requests_are_refused_and_change_nothing(device: tuple[Runtime, Client]) -> None:
    rt, nc = device
    before = await snapshot(rt)
    errors = rt.status()["api"]["errors"]
    for endpoint, data, headers, code, error in API_ATTACKS:
        got_headers, reply = await call(nc, API + endpoint, data, headers)
        assert_refused(got_headers, reply, code, error)
    assert rt.status()["api"]["errors"] == errors + len(API_ATTACKS)  # each one counted
    for endpoint, data, code, error in OTHER_API_ATTACKS:
        got_headers, reply = await call(nc, API + endpoint, data)
        assert_refused(got_headers, reply, code, error)
    assert await snapshot(rt) == before
    # still serving, and an allowed write still works
    _, reply = await call(nc, API + "entity.set", json.dumps(
        {"id": "drone-0", "component": "position", "values": {"x": 4.0}}).encode(), CLI)
    assert reply["ok"] is True and reply["result"]["x"] == 4.0


async def test_a_refusal_of_a_request_just_under_max_payload_fits_in_its_reply(
        device: tuple[Runtime, Client]) -> None:
    """A huge id is echoed in the error; unclipped, the reply (message, field and header) was
    three times the request, over max_payload: the device answered an empty 500 instead."""
    rt, nc = device
    before = await snapshot(rt)
    room = nc.max_payload - 64
    for endpoint, body, error in [
            ("entity.get", {"id": "a" * room}, "EntityError"),
            ("entity.rm", {"id": "a" * room}, "RequestError"),
            ("component.load", {"manifest": "/" + "a" * room}, "ComponentLoadError")]:
        data = json.dumps(body).encode()
        assert nc.max_payload - 100 < len(data) <= nc.max_payload
        headers, reply = await call(nc, API + endpoint, data, CLI)
        assert_refused(headers, reply, "400", error)
        assert all(len(v) <= 256 for v in reply["error"].values() if isinstance(v, str) and v != reply["error"][
            "message"])
    # over max_payload a request cannot even be sent: the client refuses it before the wire
    with pytest.raises(nats.errors.MaxPayloadError):
        await nc.request(API + "entity.get", b"{" + b" " * nc.max_payload + b"}", timeout=1)
    assert await snapshot(rt) == before
    _, reply = await call(nc, API + "entity.get", b'{"id": "drone-0"}')
    assert reply["ok"] is True


async def test_a_result_over_max_payload_is_a_500_saying_so(device: tuple[Runtime, Client]) -> None:
    rt, nc = device
    for i in range(4):  # each spawn fits; the list of all four does not
        _, reply = await call(nc, API + "entity.spawn", json.dumps(
            {"id": f"big-{i}", "labels": {"note": "n" * 300_000}}).encode(), CLI)
        assert reply["ok"] is True
    headers, reply = await call(nc, API + "entity.list", b"{}")
    assert_refused(headers, reply, "500", "EdgeError")
    assert "over the server's max_payload" in reply["error"]["message"]
    _, reply = await call(nc, API + "entity.list", b'{"kind": "drone"}')  # asking for less works
    assert [e["id"] for e in reply["result"]] == ["drone-0"]


TOOL_ATTACKS: list[tuple[str, bytes, str, str]] = [
    ("list_entities", b"not json", "400", "ToolError"),
    ("list_entities", DEEP, "400", "ToolError"),
    ("list_entities", b'{"kind": ' + HUGE_INT + b"}", "400", "SchemaViolation"),
    ("read_component", b'{"entity": "drone-0"}', "400", "SchemaViolation"),
    ("read_component", b'{"entity": "drone-0.*", "component": "position"}', "404", "EntityError"),
    ("read_sensor", b'{"entity": "drone-0", "sensor": "\\u0000"}', "404", "ToolNotFound"),
    ("send_command", b'{"entity": "drone-0.>", "verb": "rtl"}', "400", "ToolError"),
    ("send_command", b'{"entity": "drone-0", "verb": "rtl", "timeout_s": NaN}', "400", "SchemaViolation"),
    ("send_command", b'{"entity": "drone-0", "verb": "rtl", "timeout_s": ' + HUGE_INT + b"}", "400",
     "SchemaViolation"),
    ("send_command", b'{"entity": "drone-0", "verb": "rtl", "timeout_s": -1}', "400", "SchemaViolation"),
    ("send_command", b'{"entity": "drone-0", "verb": "rtl", "args": [1]}', "400", "SchemaViolation"),
    ("search_knowledge", b'{"query": "x", "limit": 1e9}', "400", "SchemaViolation"),
    ("no_such_tool", b"{}", "404", "ToolNotFound"),
    ("$SRV", b"{}", "404", "ToolNotFound"),
]


async def test_malformed_tool_calls_are_refused_and_change_nothing(device: tuple[Runtime, Client]) -> None:
    rt, nc = device
    before = await snapshot(rt)
    for tool, data, code, error in TOOL_ATTACKS:
        headers, reply = await call(nc, TOOLS + tool, data)
        assert_refused(headers, reply, code, error)
    assert rt.status()["tools"]["unknown"] == 2
    assert await snapshot(rt) == before
    _, reply = await call(nc, TOOLS + "list_entities", b"{}")
    assert [e["id"] for e in reply["result"]["entities"]] == ["drone-0"]


async def test_telemetry_too_large_to_remember_is_counted_and_dropped(device: tuple[Runtime, Client]) -> None:
    """``read_sensor`` remembers the latest telemetry of up to 4,096 keys; a publisher padding
    each to 1 MB would hold gigabytes. A reading over MAX_SENSOR_BYTES is not remembered."""
    rt, nc = device
    await nc.publish(f"edge.{DEV}.tele.drone-0.imu", json.dumps({"ax": 1.0, "pad": "a" * MAX_SENSOR_BYTES}).encode())
    await nc.publish(f"edge.{DEV}.tele.drone-0.gps", b'{"lat": 1.0}')
    await nc.flush()
    for _ in range(100):
        if rt.status()["tools"]["sensors_seen"] == 1:
            break
        await asyncio.sleep(0.02)
    _, reply = await call(nc, TOOLS + "read_sensor", b'{"entity": "drone-0", "sensor": "gps"}')
    assert reply["result"]["values"] == {"lat": 1.0} and reply["result"]["source"] == "telemetry"
    headers, reply = await call(nc, TOOLS + "read_sensor", b'{"entity": "drone-0", "sensor": "imu"}')
    assert_refused(headers, reply, "404", "ToolNotFound")
    assert rt.status()["tools"]["sensors_dropped"] == 1 and rt.status()["tools"]["sensors_seen"] == 1


async def test_commands_that_try_to_slip_past_the_envelope_are_refused(device: tuple[Runtime, Client]) -> None:
    rt, nc = device
    before = await snapshot(rt)
    for args in [b'{"x": NaN}', b'{"x": -Infinity}', b'{"x": ' + HUGE_INT + b"}", b'{"x": "100"}',
                 b'{"x": true}', b'{"x": 1.0, "frame": "world"}']:
        _, ans = await call(nc, CMD + "drone-0.velocity", args)
        assert ans["ok"] is False and ans["reason"] == "envelope", ans
        assert ans["envelope"]["rule"] == "bad-request" and len(ans["error"]) < 200, ans
    for subject, data, headers in [
            ("drone-0.velocity", DEEP, None),
            ("drone-0.velocity", b"not json", None),
            ("drone-0.velocity", b"[1.0, 0, 0]", None),
            ("drone-0.velocity.x", b'{"x": 100.0}', None),  # a longer subject is not a command
            ("drone-0.velocity", b'{"x": 1.0}', {"Edge-Command-Id": "has space"}),
            ("drone-0.velocity", b'{"x": 1.0}', {"Edge-Command-Id": "x" * 129})]:
        _, ans = await call(nc, CMD + subject, data, headers)
        assert ans["ok"] is False and ans["reason"] == "bad-request", (subject, ans)
    _, ans = await call(nc, CMD + "drone-0.Velocity", b'{"x": 100.0}')  # verbs are exact
    assert ans["reason"] == "no-handler"
    assert await snapshot(rt) == before
    # a huge but finite speed runs clamped to the limit, not as asked
    _, ans = await call(nc, CMD + "drone-0.velocity", b'{"x": 1e308, "y": 1e308}', {"Edge-Command-Id": "v-1"})
    assert ans["ok"] is True and ans["envelope"]["decision"] == "clamped"
    assert rt.world.get("drone-0", "velocity")["x"] == pytest.approx(5.0 / 2 ** 0.5)
    # the same id again is answered from memory, not run; with other arguments it is refused
    _, again = await call(nc, CMD + "drone-0.velocity", b'{"x": 1e308, "y": 1e308}', {"Edge-Command-Id": "v-1"})
    assert again == ans
    _, other = await call(nc, CMD + "drone-0.velocity", b'{"x": 2.0}', {"Edge-Command-Id": "v-1"})
    assert other["ok"] is False and other["reason"] == "bad-request"
    assert rt.world.get("drone-0", "velocity")["x"] == pytest.approx(5.0 / 2 ** 0.5)
    assert rt.status()["commands"]["duplicates"] >= 1


async def test_a_padded_command_is_refused_before_it_runs(device: tuple[Runtime, Client]) -> None:
    """A velocity padded to just under max_payload once ran, its envelope record echoed the pad
    (900 KB into EVT, which never evicts), its clamped answer (requested + applied: 1.8 MB) was
    over max_payload so the caller got no answer, and the router remembered the payload."""
    rt, nc = device
    safety = await nc.subscribe(f"edge.{DEV}.evt.drone-0.safety")
    pad = "a" * (nc.max_payload - 1000)
    for args in ({"x": 100.0, "pad": pad}, {"x": 1.0, "pad": "a" * (MAX_COMMAND_BYTES - 10)}):
        _, ans = await call(nc, CMD + "drone-0.velocity", json.dumps(args).encode())
        assert ans["ok"] is False and ans["reason"] == "bad-request", ans
        assert f"over {MAX_COMMAND_BYTES} bytes" in ans["error"]
    assert "velocity" not in rt.world.get_all("drone-0")
    with pytest.raises(nats.errors.TimeoutError):  # no envelope record: it never got that far
        await safety.next_msg(timeout=0.5)
    # just under the bound it is an ordinary command: clamped, answered, recorded
    args = {"x": 100.0, "pad": "a" * (MAX_COMMAND_BYTES - 100)}
    _, ans = await call(nc, CMD + "drone-0.velocity", json.dumps(args).encode())
    assert ans["ok"] is True and ans["envelope"]["decision"] == "clamped"
    assert json.loads((await safety.next_msg(timeout=5)).data)["decision"] == "clamped"


async def test_a_flood_is_answered_and_a_rate_limit_holds(device: tuple[Runtime, Client]) -> None:
    rt, nc = device
    # 500 malformed requests at once: every one answered 400, none dropped, the service alive
    replies = await asyncio.gather(*(call(nc, API + "entity.get", b"{" * (i % 7 + 1)) for i in range(500)))
    assert all(h.get("Nats-Service-Error-Code") == "400" for h, _ in replies)
    # a caller's writes over its documented limit (burst 5) are denied naming the limit
    flood = {"Edge-Caller": "flood"}
    answers = []
    for i in range(20):
        _, reply = await call(nc, API + "entity.set", json.dumps(
            {"id": "drone-0", "component": "position", "values": {"x": float(i)}}).encode(), flood)
        answers.append(reply)
    assert [a["ok"] for a in answers] == [True] * 5 + [False] * 15
    assert {a["error"]["rule"] for a in answers[5:]} == {"flood-burst"}
    assert rt.world.get("drone-0", "position")["x"] == 4.0  # the last allowed write, none after
    _, reply = await call(nc, API + "status.get", b"")
    assert reply["ok"] is True and reply["result"]["device"] == DEV


async def test_a_caller_claiming_to_be_the_failsafe_is_granted_its_hold_only(device: tuple[Runtime, Client]) -> None:
    """``Edge-Caller: safety-failsafe`` is the device's own principal; claimed by anyone, it once
    passed the policy point for every verb (docs/policy.md grants it the hold alone)."""
    rt, nc = device
    spoof = {"Edge-Caller": "safety-failsafe"}
    for verb in ("velocity", "rtl"):
        _, ans = await call(nc, CMD + f"drone-0.{verb}", b'{"x": 1.0}', spoof)
        assert ans["ok"] is False and ans["reason"] == "denied" and ans["rule"] == "default", ans
    assert "velocity" not in rt.world.get_all("drone-0")
    _, ans = await call(nc, CMD + "drone-0.hold", b"{}", spoof)
    assert ans["ok"] is True


async def test_others_decision_records_are_bounded(device: tuple[Runtime, Client]) -> None:
    """Decision records of agents the host does not run join its ring of 1,000 for
    ``api.agent.decisions``; padded ones could hold a gigabyte, unreadable ones were not counted."""
    rt, nc = device
    subject = f"edge.{DEV}.evt.drone-0.decision"
    await nc.publish(subject, json.dumps({"agent": "wasm-x", "pad": "a" * MAX_INGESTED_BYTES}).encode())
    await nc.publish(subject, b"[" * 5000 + b"]" * 5000)  # too deep to decode, small enough to try
    await nc.publish(subject, b'"not a record"')
    await nc.publish(subject, b'{"agent": "wasm-x", "decision": "hold"}')
    await nc.flush()
    decisions = rt.status()["agents"]["decisions"]
    for _ in range(100):
        decisions = rt.status()["agents"]["decisions"]
        if decisions["ingested"] == 1 and decisions["malformed"] == 2:
            break
        await asyncio.sleep(0.02)
    assert decisions["too_large"] == 1 and decisions["malformed"] == 2 and decisions["ingested"] == 1
    _, reply = await call(nc, API + "agent.decisions", b"{}")
    assert [(r["agent"], r["decision"], r["entity"]) for r in reply["result"]] == [("wasm-x", "hold", "drone-0")]
