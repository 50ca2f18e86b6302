"""World writes through the device API (``entity.spawn``, ``entity.set``, ``entity.unset``,
``entity.rm``) pass the policy point in a running device (embedded nats-server): principal the
API caller (``Edge-Caller``; the CLI's ``cli``), action ``kv``, resource ``<entity>.<component>``
or ``<entity>``; denied by default, allowed by a rule, a deny rule over it; a denied write is a
403 naming the rule and changes nothing; every write is metered for its caller."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edge.cli.client import ApiError, DeviceClient
from edge.cli.main import main
from edge.config import load_config
from edge.runtime import Runtime
from rigs.runtime import url_of

pytestmark = pytest.mark.timeout(120)

DEV = "apw"

POLICY = """
[[rule]]
name = "cli-drones"
effect = "allow"
principal = "caller:cli"
action = "kv"
resource = ["drone-0", "drone-0.>", "new-0", "new-0.>"]

[[rule]]
name = "no-battery"
effect = "deny"
principal = "caller:*"
action = "kv"
resource = "*.battery"
reason = "the battery is the driver's"

[[rule]]
name = "north-writer"
effect = "allow"
principal = "caller:ops"
action = "kv"
resource = ">"
labels = { fleet = "north" }
"""

CONFIG = """
[device]
id = "apw"
[policy]
file = "policy.toml"
watch_interval = 0
[[entities]]
id = "drone-0"
kind = "drone"
components = { position = { x = 1.0, y = 2.0, z = 3.0 } }
[[entities]]
id = "scout"
kind = "drone"
labels = { fleet = "north" }
components = { position = { x = 0.0 } }
"""


async def raw(rt: Runtime, verb: str, body: dict[str, Any], caller: str | None = None) -> Any:
    """A request as any NATS user can send it (no header: anonymous)."""
    assert rt.nc is not None
    msg = await rt.nc.request(f"edge.{DEV}.api.entity.{verb}", json.dumps(body).encode(), timeout=5,
                              headers={"Edge-Caller": caller} if caller else None)
    return msg


async def test_api_writes_are_denied_by_default_allowed_by_a_rule_and_metered(rt: Runtime) -> None:
    set_x = {"id": "drone-0", "component": "position", "values": {"x": 9.0}}
    msg = await raw(rt, "set", set_x)  # anonymous: no rule allows it
    reply = json.loads(msg.data)
    assert reply["ok"] is False and msg.headers["Nats-Service-Error-Code"] == "403"
    err = reply["error"]
    assert err["error"] == "PolicyDenied" and err["rule"] == "default" and err["reason"] == "denied"
    assert err["principal"] == "caller:anonymous" and err["resource"] == "drone-0.position"
    assert err["action"] == "kv" and "caller:anonymous may not write 'drone-0.position'" in err["message"]
    assert rt.world.get("drone-0", "position")["x"] == 1.0  # nothing was written

    async with DeviceClient(url_of(rt), DEV) as c:  # the CLI's client: Edge-Caller "cli"
        assert (await c.call("entity", "set", set_x))["x"] == 9.0  # allowed by cli-drones
        with pytest.raises(ApiError) as info:  # a deny rule over the allow rule
            await c.call("entity", "set", {"id": "drone-0", "component": "battery", "values": {"voltage": 11.1}})
        assert info.value.fields["rule"] == "no-battery" and info.value.fields["why"] == "the battery is the driver's"
        assert not rt.world.has("drone-0", "battery")
        with pytest.raises(ApiError) as info:  # another entity: no rule for cli
            await c.call("entity", "set", {"id": "scout", "component": "position", "values": {"x": 5.0}})
        assert info.value.fields["rule"] == "default" and rt.world.get("scout", "position")["x"] == 0.0
        # spawn decides the entity and each component it brings; rm and unset decide what they remove
        spawned = await c.call("entity", "spawn", {"id": "new-0", "components": {"position": {"x": 1.0}}})
        assert spawned["id"] == "new-0"
        with pytest.raises(ApiError) as info:
            await c.call("entity", "spawn", {"id": "new-1"})
        assert info.value.fields["resource"] == "new-1" and "new-1" not in rt.world
        with pytest.raises(ApiError) as info:
            await c.call("entity", "spawn", {"id": "new-0x", "components": {"battery": {}}})
        assert info.value.fields["rule"] == "default" and "new-0x" not in rt.world
        await c.call("entity", "unset", {"id": "new-0", "component": "position"})
        await c.call("entity", "rm", {"id": "new-0"})
        assert "new-0" not in rt.world
        with pytest.raises(ApiError) as info:
            await c.call("entity", "rm", {"id": "scout"})
        assert info.value.fields["rule"] == "default" and "scout" in rt.world
        # reads are no writes: never decided
        assert (await c.call("entity", "get", {"id": "scout"}))["id"] == "scout"

    # a condition on the target entity's labels
    ok = json.loads((await raw(rt, "set", {"id": "scout", "component": "position", "values": {"x": 7.0}},
                               caller="ops")).data)
    assert ok["ok"] is True and rt.world.get("scout", "position")["x"] == 7.0
    nope = json.loads((await raw(rt, "set", set_x, caller="ops")).data)
    assert nope["ok"] is False and nope["error"]["rule"] == "default"


async def test_api_write_usage_and_denials_show_in_edge_accounting(
        rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    async with DeviceClient(url_of(rt), DEV) as c:
        for x in range(3):
            await c.call("entity", "set", {"id": "drone-0", "component": "position", "values": {"x": float(x)}})
    await raw(rt, "set", {"id": "drone-0", "component": "position", "values": {"x": 1.0}})
    code = await asyncio.to_thread(main, ["accounting", "--url", url_of(rt), "--device", DEV, "--json",
                                          "--top", "50"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    rows = {r["principal"]: r for r in out["top"]["messages"]}
    assert rows["caller:cli"]["kv_writes"] == 3 and rows["caller:cli"]["denied"] == 0
    assert rows["caller:cli"]["bytes"] > 0
    assert rows["caller:anonymous"]["kv_writes"] == 1 and rows["caller:anonymous"]["denied"] == 1
    last = out["denials"][-1]
    assert (last["principal"], last["action"], last["resource"], last["rule"]) == (
        "caller:anonymous", "kv", "drone-0.position", "default")
    assert rt.js is not None  # the denial is an event in the EVT stream, like every denial
    ev = json.loads((await rt.js.get_last_msg("EVT", f"edge.{DEV}.evt.policy.denied")).data)
    assert ev["action"] == "kv" and ev["resource"] == "drone-0.position"


async def test_bad_ids_are_refused_naming_the_key_before_any_decision(rt: Runtime) -> None:
    before = rt.status()["policy"]["denied"]
    async with DeviceClient(url_of(rt), DEV) as c:
        # a dotted component would name another resource than the one written: refused first
        with pytest.raises(ApiError) as info:
            await c.call("entity", "set", {"id": "drone-0", "component": "position.x", "values": {"x": 1}})
        assert info.value.fields["key"] == "component" and "position.x" in info.value.message
        with pytest.raises(ApiError) as info:
            await c.call("entity", "set", {"id": "drone-0.position", "component": "position", "values": {}})
        assert info.value.fields["entity"] == "drone-0.position" and info.value.fields["key"] == "id"
        with pytest.raises(ApiError) as info:
            await c.call("entity", "spawn", {"id": "new-0", "components": {"Bad Name": {}}})
        assert info.value.fields["key"] == "components" and "new-0" not in rt.world
    assert rt.status()["policy"]["denied"] == before  # refused as bad input, not decided


async def test_without_a_policy_file_api_writes_are_allowed_and_metered(tmp_path: Path) -> None:
    (tmp_path / "device.toml").write_text(CONFIG.replace('[policy]\nfile = "policy.toml"\nwatch_interval = 0\n', ""))
    runtime = Runtime(load_config(tmp_path / "device.toml", data_dir=tmp_path / "data"))
    await runtime.start()
    try:
        reply = json.loads((await raw(runtime, "set", {"id": "scout", "component": "position",
                                                        "values": {"x": 4.0}})).data)
        assert reply["ok"] is True and runtime.world.get("scout", "position")["x"] == 4.0
        status = runtime.status()["policy"]
        assert status["enforcing"] is False and status["denied"] == 0
        assert runtime.nc is not None
        acct = await runtime.nc.request(f"edge.{DEV}.api.accounting.get", b'{"top": 50}', timeout=5)
        usage = json.loads(acct.data)["result"]["top"]["messages"]
        row = next(r for r in usage if r["principal"] == "caller:anonymous")
        assert row["kv_writes"] == 1 and row["messages"] == 1
    finally:
        await runtime.stop()
