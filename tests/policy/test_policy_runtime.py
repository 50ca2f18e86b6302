"""The policy point in a running device (embedded nats-server, sandbox workers, the compiled
``relay`` test component): wasm publishes, deliveries and KV writes, commands, tool calls;
denials answered with the rule, recorded as events in the EVT stream; usage records; the file
hot-reloaded (a bad one refused, the old one kept, the error in ``edge status``); ``edge
accounting`` as a table and as JSON."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, NotFoundError

from edge.cli.main import main
from edge.config import load_config
from edge.nats.commands import CommandClient, CommandRequest
from edge.runtime import Runtime

pytestmark = pytest.mark.timeout(120)

DEV = "pr"

POLICY = """
version = 1

[[rule]]
name = "no-secret-out"
effect = "deny"
principal = "component:*"
action = "publish"
resource = "edge.{device}.evt.out.secret"
reason = "secret events stay inside"

[[rule]]
name = "no-blocked-in"
effect = "deny"
principal = "component:*"
action = "deliver"
resource = "edge.{device}.evt.in.blocked"

[[rule]]
name = "no-blocked-key"
effect = "deny"
principal = "component:*"
action = "kv"
resource = "blocked"

[[rule]]
name = "planner-rtl"
effect = "allow"
principal = "caller:planner"
action = "command"
resource = "*.rtl"

[[rule]]
name = "north-hold"
effect = "allow"
principal = "caller:planner"
action = "command"
resource = "*.hold"
labels = { fleet = "north" }

[[rule]]
name = "pilot-rtl"
effect = "allow"
principal = "component:pilot"
action = "command"
resource = "*.rtl"

[[rule]]
name = "auditor-reads"
effect = "allow"
principal = "caller:auditor"
action = "call"
resource = "read_component"

[[rule]]
name = "no-intruder"
effect = "deny"
principal = "caller:intruder"
action = "*"
resource = ">"

[[limit]]
name = "two-per-window"
principal = "caller:limited"
action = "call"
quota_messages = 2
window = 0.5
"""

CONFIG = """
[device]
id = "pr"
[policy]
file = "policy.toml"
usage_interval = 0.2
watch_interval = 0.05
[tools.callers]
planner = ["list_entities", "send_command"]
intruder = ["*"]
limited = ["list_entities"]
[[entities]]
id = "drone-0"
kind = "drone"
components = { position = { x = 1.0, y = 2.0, z = 3.0 } }
[[entities]]
id = "scout"
kind = "drone"
labels = { fleet = "north" }
"""


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0) -> Any:
    for _ in range(int(timeout / 0.02)):
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def last_event(rt: Runtime, subject: str, timeout: float = 10.0) -> Any:
    """The last message on ``subject`` in the EVT stream, once it is there (an emitted event is
    published with retries, so it lands a moment after the counter moves)."""
    assert rt.js is not None
    for _ in range(int(timeout / 0.05)):
        try:
            return json.loads((await rt.js.get_last_msg("EVT", subject)).data)
        except NotFoundError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"no message on {subject} in EVT in {timeout} s")


async def relay(rt: Runtime, tmp: Path, module: Path, name: str, out: str, subscribe: str,
                publish: str = f"edge.{DEV}.evt.>") -> None:
    kv = await rt.sandbox._bucket()
    await kv.put(f"{name}.out", out.encode())
    path = tmp / f"{name}.toml"
    path.write_text(f'name = "{name}"\nversion = "1.0.0"\ncontract = 1\nmodule = "{module}"\n'
                    f'[run]\nsubscribe = ["{subscribe}"]\npublish = ["{publish}"]\n')
    await rt.load_component(str(path))


class Tap:
    def __init__(self) -> None:
        self.msgs: list[Msg] = []

    async def on(self, msg: Msg) -> None:
        self.msgs.append(msg)


async def tap(rt: Runtime, subject: str) -> Tap:
    t = Tap()
    assert rt.nc is not None
    await rt.nc.subscribe(subject, cb=t.on)
    return t


def counters(rt: Runtime, name: str) -> dict[str, int]:
    return next(s for s in rt.components_status() if s["name"] == name)["counters"]  # type: ignore[no-any-return]


async def test_wasm_publishes_deliveries_and_kv_writes_pass_the_policy(
        rt: Runtime, tmp_path: Path, relay_module: Path) -> None:
    assert rt.nc is not None
    nc = rt.nc
    ok, secret = await tap(rt, f"edge.{DEV}.evt.out.ok"), await tap(rt, f"edge.{DEV}.evt.out.secret")
    denials = await tap(rt, f"edge.{DEV}.evt.policy.denied")
    await relay(rt, tmp_path, relay_module, "r1", f"edge.{DEV}.evt.out.ok", f"edge.{DEV}.evt.in.>")
    await relay(rt, tmp_path, relay_module, "r2", f"edge.{DEV}.evt.out.secret", f"edge.{DEV}.evt.in.>")
    await nc.publish(f"edge.{DEV}.evt.in.open", b"hello")
    await nc.publish(f"edge.{DEV}.evt.in.blocked", b"nope")
    await wait_for(lambda: counters(rt, "r2")["policy_denied"] >= 1 and ok.msgs)
    await nc.publish(f"edge.{DEV}.evt.in.open", b"last")  # in order behind the blocked one
    await wait_for(lambda: len(ok.msgs) == 2)
    assert [m.data for m in ok.msgs] == [b"hello", b"last"]  # the blocked message never reached r1
    assert secret.msgs == []  # the manifest grants it; the deny rule does not
    assert counters(rt, "r1")["messages"] == 2 and counters(rt, "r2")["policy_denied"] == 2
    # KV: the relay puts key=value for a message on *.put
    kv = await rt.sandbox._bucket()
    await nc.publish(f"edge.{DEV}.evt.in.put", b"blocked=1")
    await nc.publish(f"edge.{DEV}.evt.in.put", b"open=2")
    for _ in range(200):
        try:
            entry = await kv.get("r1.open")
            break
        except KeyNotFoundError:
            await asyncio.sleep(0.02)
    assert entry.value == b"2"
    with pytest.raises(KeyNotFoundError):
        await kv.get("r1.blocked")
    await wait_for(lambda: {json.loads(m.data)["rule"] for m in denials.msgs}
                   >= {"no-secret-out", "no-blocked-in", "no-blocked-key"})
    acct = rt.status()["policy"]
    assert acct["enforcing"] and acct["denied"] >= 5
    reply = await nc.request(f"edge.{DEV}.api.accounting.get", b'{"top": 5}', timeout=5)
    top = {r["principal"]: r for r in json.loads(reply.data)["result"]["top"]["gas"]}
    assert top["component:r1"]["gas"] > 0 and top["component:r1"]["kv_writes"] == 2


async def test_commands_are_denied_by_default_allowed_by_a_rule_and_the_record_names_the_rule(
        rt: Runtime) -> None:
    assert rt.nc is not None and rt.commands is not None
    ran: list[str] = []

    async def handler(req: CommandRequest) -> dict[str, Any]:
        ran.append(req.verb)
        return {"done": req.verb}

    rt.commands.register("drone-0", "rtl", handler, owner="test")
    rt.commands.register("drone-0", "arm", handler, owner="test")
    acks = await rt.nc.subscribe(f"edge.{DEV}.ack.drone-0.>")
    client = CommandClient(rt.nc, DEV)
    res = await client.send("drone-0", "rtl", {}, timeout=5, caller="planner")
    assert res.ok and res.answer["done"] == "rtl"
    res = await client.send("drone-0", "arm", {}, timeout=5, caller="planner")
    assert res.reason == "denied" and res.answer["rule"] == "default"
    assert "caller:planner may not send 'arm' to 'drone-0'" in res.answer["error"]
    res = await client.send("drone-0", "rtl", {}, timeout=5, caller="cloud")  # an operator: no rule
    assert res.reason == "denied" and "operator:cloud" in res.answer["error"]
    res = await client.send("drone-0", "rtl", {}, timeout=5)  # no caller header: anonymous
    assert res.reason == "denied" and "caller:anonymous" in res.answer["error"]
    assert ran == ["rtl"]
    records = [json.loads((await acks.next_msg(timeout=5)).data) for _ in range(4)]
    assert [r.get("reason") for r in records] == [None, "denied", "denied", "denied"]
    await acks.unsubscribe()  # a subscription of the runtime's connection left unread holds its drain at stop
    # a condition on the target entity's labels
    rt.commands.register("*", "hold", handler, owner="test")
    assert (await client.send("scout", "hold", {}, timeout=5, caller="planner")).ok
    res = await client.send("drone-0", "hold", {}, timeout=5, caller="planner")
    assert res.reason == "denied" and res.answer["rule"] == "default"
    res = await client.send("nobody", "hold", {}, timeout=5, caller="planner")  # no such entity: no labels
    assert res.reason == "denied"


async def test_a_command_a_wasm_component_publishes_is_decided_as_that_component(
        rt: Runtime, tmp_path: Path, relay_module: Path) -> None:
    assert rt.nc is not None and rt.commands is not None
    ran: list[str] = []

    async def handler(req: CommandRequest) -> dict[str, Any]:
        ran.append(req.verb)
        return {}

    rt.commands.register("drone-0", "rtl", handler, owner="test")
    acks = await tap(rt, f"edge.{DEV}.ack.drone-0.rtl")
    cmd = f"edge.{DEV}.cmd.drone-0.rtl"
    await relay(rt, tmp_path, relay_module, "pilot", cmd, f"edge.{DEV}.evt.go", publish=cmd)
    await relay(rt, tmp_path, relay_module, "rogue", cmd, f"edge.{DEV}.evt.go", publish=cmd)
    await rt.nc.publish(f"edge.{DEV}.evt.go", b"{}")
    await wait_for(lambda: len(acks.msgs) == 2)
    answers = sorted((json.loads(m.data) for m in acks.msgs), key=lambda a: a["ok"])
    assert answers[1]["ok"] is True and ran == ["rtl"]
    assert answers[0]["reason"] == "denied" and "component:rogue may not send 'rtl'" in answers[0]["error"]


async def test_tool_calls_use_the_permissions_as_the_grant_and_rules_over_them(rt: Runtime) -> None:
    assert rt.nc is not None

    async def call(tool: str, caller: str, body: dict[str, Any]) -> dict[str, Any]:
        assert rt.nc is not None
        msg = await rt.nc.request(f"edge.{DEV}.tools.{tool}", json.dumps(body).encode(), timeout=5,
                                  headers={"Edge-Caller": caller})
        return json.loads(msg.data)  # type: ignore[no-any-return]

    assert (await call("list_entities", "planner", {}))["ok"] is True  # granted by [tools.callers]
    denied = await call("list_entities", "intruder", {})  # granted too, but a deny rule decides
    assert denied["ok"] is False and denied["error"]["rule"] == "no-intruder"
    assert (await call("read_component", "auditor", {"entity": "drone-0", "component": "position"}))["ok"]
    nope = await call("list_entities", "auditor", {})  # no permission, no rule: default deny
    assert nope["ok"] is False and nope["error"]["rule"] == "default" and nope["error"]["error"] == "ToolDenied"
    # a quota: hit, then recovered when its window restarts
    results = [await call("list_entities", "limited", {}) for _ in range(3)]
    assert [r["ok"] for r in results] == [True, True, False]
    assert results[2]["error"]["rule"] == "two-per-window" and "quota of 2 messages" in results[2]["error"]["why"]
    await asyncio.sleep(0.6)
    assert (await call("list_entities", "limited", {}))["ok"] is True


async def test_hot_reload_bad_files_usage_records_and_edge_accounting(
        rt: Runtime, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rt.nc is not None and rt.commands is not None and rt.js is not None

    async def handler(req: CommandRequest) -> dict[str, Any]:
        return {}

    rt.commands.register("drone-0", "arm", handler, owner="test")
    client = CommandClient(rt.nc, DEV)
    assert (await client.send("drone-0", "arm", {}, timeout=5, caller="planner")).reason == "denied"
    policy = tmp_path / "policy.toml"
    tmp = tmp_path / "policy.new"
    tmp.write_text(POLICY.replace('resource = "*.rtl"', 'resource = ["*.rtl", "*.arm"]'))
    tmp.replace(policy)  # written atomically, as docs/policy.md asks
    await wait_for(lambda: rt.status()["policy"]["generation"] == 2)
    assert (await client.send("drone-0", "arm", {}, timeout=5, caller="planner")).ok
    policy.write_text(POLICY + '\n[[rule]]\nname = "half"\neffect = "allow"\n')  # a bad edit
    await wait_for(lambda: rt.status()["policy"]["error"])
    status = rt.status()["policy"]
    assert status["generation"] == 2 and status["error"]["rule"] == "half"
    assert "missing required key 'principal'" in status["error"]["message"]
    assert (await client.send("drone-0", "arm", {}, timeout=5, caller="planner")).ok  # the old one stays
    # usage records and denials in the EVT stream (which syncs to the hub)
    usage = await wait_for(lambda: rt.status()["policy"]["usage_records"] > 0)
    assert usage
    body = await last_event(rt, f"edge.{DEV}.evt.policy.usage")  # counted when emitted, stored a bit later
    assert body["device"] == DEV and all("principal" in r for r in body["principals"])
    denial = await last_event(rt, f"edge.{DEV}.evt.policy.denied")
    assert denial["principal"] == "caller:planner" and denial["rule"] == "default"
    # the CLI, through the device API (its own event loop: run in a thread)
    url = rt.nc.connected_url.geturl() if rt.nc.connected_url else ""
    code = await asyncio.to_thread(main, ["accounting", "--url", url, "--device", DEV, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["policy"]["generation"] == 2
    assert out["denials"][-1]["principal"] == "caller:planner"
    assert {"messages", "bytes", "gas"} == set(out["top"])
    policy.write_text(POLICY)  # fixed again; reloaded through the API, not the watcher
    code = await asyncio.to_thread(main, ["accounting", "--url", url, "--device", DEV, "--reload"])
    text = capsys.readouterr().out
    assert code == 0 and "top by messages:" in text and "recent denials:" in text and "PRINCIPAL" in text
    assert rt.status()["policy"]["error"] is None and rt.status()["policy"]["generation"] >= 3


async def test_a_bad_policy_file_stops_the_start_naming_the_rule_and_the_file(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text('[[rule]]\nname = "r"\neffect = "allow"\nprincipal = "x"\naction = "call"\n')
    (tmp_path / "device.toml").write_text(CONFIG)
    runtime = Runtime(load_config(tmp_path / "device.toml", data_dir=tmp_path / "data"))
    from edge.policy.model import PolicyError

    with pytest.raises(PolicyError) as info:
        try:
            await runtime.start()
        finally:
            await runtime.stop()
    assert "rule 'r'" in info.value.message and str(tmp_path / "policy.toml") in info.value.message
