"""Component loads and unloads through the device API (``component.load``, ``component.unload``,
what ``edge component load|unload`` sends) pass the policy point as action ``deploy``: principal
the API caller, resource ``component.<name>.<version>`` (the manifest is read first, to name it)
or ``component.<name>``; denied by default with a policy file, allowed by a rule; a denied load
loads nothing and a denied unload keeps the component running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli.client import ApiError, DeviceClient
from edge.runtime import Runtime
from rigs.runtime import url_of

pytestmark = pytest.mark.timeout(120)

DEV = "apd"
ECHO = Path(__file__).resolve().parents[2] / "components" / "echo" / "manifest.toml"

POLICY = """
[[rule]]
name = "cli-loads-echo"
effect = "allow"
principal = "caller:cli"
action = "deploy"
resource = "component.echo.>"

[[rule]]
name = "cli-unloads"
effect = "allow"
principal = "caller:cli"
action = "deploy"
resource = "component.*"

[[rule]]
name = "echo-runs"
effect = "allow"
principal = "component:echo"
action = ["publish", "deliver"]
resource = ">"
"""

CONFIG = """
[device]
id = "apd"
[policy]
file = "policy.toml"
watch_interval = 0
"""


def loaded(rt: Runtime) -> set[str]:
    return {c["name"] for c in rt.components_status()}


async def test_component_loads_and_unloads_are_decided_as_deploy(rt: Runtime, components_dir: Path) -> None:
    # components_dir: ECHO's module (components/build/echo.wasm) is built
    assert rt.nc is not None
    # anonymous (no Edge-Caller): no rule allows it, nothing is loaded
    msg = await rt.nc.request(f"edge.{DEV}.api.component.load", json.dumps({"manifest": str(ECHO)}).encode(),
                              timeout=10)
    reply = json.loads(msg.data)
    assert reply["ok"] is False and msg.headers["Nats-Service-Error-Code"] == "403"
    err = reply["error"]
    assert (err["principal"], err["action"], err["resource"], err["rule"]) == (
        "caller:anonymous", "deploy", "component.echo.1.0.0", "default")
    assert "echo" not in loaded(rt)

    async with DeviceClient(url_of(rt), DEV) as c:  # the CLI: Edge-Caller "cli"
        await c.call("component", "load", {"manifest": str(ECHO)})
        assert "echo" in loaded(rt)
        # an unload by another caller is denied and the component keeps running
        other = await rt.nc.request(f"edge.{DEV}.api.component.unload", b'{"name": "echo"}', timeout=10,
                                    headers={"Edge-Caller": "ops"})
        assert json.loads(other.data)["error"]["resource"] == "component.echo" and "echo" in loaded(rt)
        # a name that is not a component name is refused as bad input before any decision
        before = rt.status()["policy"]["denied"]
        with pytest.raises(ApiError) as info:
            await c.call("component", "unload", {"name": "echo.>"})
        assert info.value.fields["key"] == "name" and rt.status()["policy"]["denied"] == before
        await c.call("component", "unload", {"name": "echo"})
        assert "echo" not in loaded(rt)
