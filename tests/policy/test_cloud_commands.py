"""Cloud commands played locally pass the policy point: a device runtime as a leaf node of a real
hub (its nats-server, accounts, the device's ``CMD_<device>`` queue); a command queued on the hub
is played by the uplink as ``operator:cloud`` and denied by default (its result, mirrored to the
hub, says ``denied`` with the rule), then allowed by a rule after a reload and run by the driver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from edge.config import load_config
from edge.runtime import Runtime
from edge.sync.hub.fleet import provision_device, send_command
from edge.sync.hub.server import HubServer

pytestmark = pytest.mark.timeout(120)

DEVICE = """
[device]
id = "dev1"
[hub]
url = "{leaf}"
user = "dev1"
password = "{password}"
[policy]
file = "policy.toml"
watch_interval = 0
[[entities]]
id = "pod"
[[drivers]]
name = "lamp"
kind = "led"
entity = "pod"
backend = "emulated"
pin = 22
"""

NOTHING = """
[[rule]]
name = "cli-only"
effect = "allow"
principal = "caller:cli"
action = "command"
"""

CLOUD_LAMP = NOTHING + """
[[rule]]
name = "cloud-lamp"
effect = "allow"
principal = "operator:cloud"
action = "command"
resource = "pod.lamp"
link = "up"
"""


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    server = HubServer(tmp_path / "hub")
    await server.start(supervise=True)
    try:
        yield server
    finally:
        await server.stop()


async def eventually(fn: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            try:
                if result := await fn():
                    return result
            except Exception:  # noqa: BLE001  not there yet (no such message)
                pass
            await asyncio.sleep(0.2)


async def test_cloud_commands_are_denied_by_default_and_allowed_by_a_rule(tmp_path: Path, hub: HubServer) -> None:
    cred = await hub.add_device("dev1")
    cloud = await nats.connect(hub.client_url)
    js = cloud.jetstream()
    await provision_device(js, "dev1")
    (tmp_path / "policy.toml").write_text(NOTHING)
    path = tmp_path / "dev1.toml"
    path.write_text(DEVICE.format(leaf=hub.leaf_url, password=cred.password))
    rt = Runtime(load_config(path, data_dir=tmp_path / "dev1"))
    await rt.start()
    try:
        async def result(cid: str) -> dict[str, Any]:
            msg = await js.get_last_msg("EVT_dev1", f"edge.dev1.ack.{cid}")
            return json.loads(msg.data or b"")  # type: ignore[no-any-return]

        await send_command(js, "dev1", "pod.lamp", json.dumps({"on": True}).encode(), msg_id="c-1")
        denied = await eventually(lambda: result("c-1"))
        assert denied["ok"] is False and denied["reason"] == "denied" and denied["rule"] == "default"
        assert "operator:cloud may not send 'lamp' to 'pod'" in denied["error"]
        assert rt.world.get("pod", "lamp")["value"] == 0.0  # the driver never saw it: still off

        (tmp_path / "policy.toml").write_text(CLOUD_LAMP)
        rt.reload_policy()
        await send_command(js, "dev1", "pod.lamp", json.dumps({"on": True}).encode(), msg_id="c-2")
        assert await eventually(lambda: result("c-2")) == {"ok": True, "id": "c-2", "value": 1.0}
        assert rt.world.get("pod", "lamp")["value"] == 1.0
        assert rt.status()["sync"]["commands"]["played"] == 2
        usage = {r["principal"]: r for r in _top(rt)}
        assert usage["operator:cloud"]["commands"] == 2 and usage["operator:cloud"]["denied"] == 1
    finally:
        await rt.stop()
        await cloud.close()


def _top(rt: Runtime) -> list[dict[str, Any]]:
    layer = next(layer for layer in rt.layers or [] if layer.name == "policy")
    rows: list[dict[str, Any]] = layer.accounting(100)["top"]["messages"]  # type: ignore[attr-defined]
    return rows
