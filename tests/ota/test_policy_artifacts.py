"""Policies as signed OTA artifacts, and the device's own policy point deciding ``deploy``
(docs/ota.md, *Policies*; docs/policy.md, *Policies as OTA artifacts*)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from edge.cli.status import render
from edge.errors import LifecycleError
from edge.nats.commands import CommandClient, CommandRequest

from settings_rig import SettingsRig
from support import component, ota_status, publish_component, versions, wait_for

pytestmark = pytest.mark.timeout(90)

ALLOW_ARM = '''[[rule]]
name = "tester-may-arm"
effect = "allow"
principal = "caller:tester"
action = "command"
resource = "e1.arm"
'''
DENY_ARM = '''[[rule]]
name = "nobody-arms"
effect = "deny"
principal = "*"
action = "command"
resource = "*.arm"
reason = "arming is off for now"
'''
BROKEN = '''[[rule]]
name = "r1"
effect = "allow"
principal = "caller:tester"
action = "fly"
'''


@pytest.fixture
async def rig(tmp_path: Path, nc: Client, nats_url: str) -> AsyncIterator[SettingsRig]:
    r = SettingsRig(tmp_path, nc, nats_url)
    r.policy("fleet", "1.0.0", ALLOW_ARM)
    r.policy("fleet", "2.0.0", DENY_ARM)
    r.policy("fleet", "3.0.0", BROKEN, checked=False)  # what the publisher would refuse
    await r.upload()
    try:
        yield r
    finally:
        await r.stop()


async def _arm(rig: SettingsRig) -> Any:
    rt = rig.rt
    assert rt is not None and rt.nc is not None
    return await CommandClient(rt.nc, "dev1").send("e1", "arm", {}, timeout=5, caller="tester")


async def test_policy_versions_swap_and_a_policy_that_does_not_compile_is_refused(rig: SettingsRig) -> None:
    rt = await rig.start()
    assert rt.commands is not None

    async def handler(req: CommandRequest) -> dict[str, Any]:
        return {"done": req.verb}

    rt.commands.register("e1", "arm", handler, owner="test")
    await rig.desire("r1", {"blink": "1.0.0", "policy:fleet": "1.0.0"})
    await rig.committed("r1")
    assert (await _arm(rig)).ok
    policy = rt.status()["policy"]
    assert policy["enforcing"] and policy["artifact"]["version"] == "1.0.0"
    sha1 = ota_status(rt)["policy"]["sha256"]
    assert rig.state()["active"]["policy:fleet"]["sha256"] == sha1
    assert f"policy fleet@1.0.0 (sha256 {sha1[:16]})" in render(rt.status())
    await rig.desire("r2", {"blink": "1.0.0", "policy:fleet": "2.0.0"})
    await rig.committed("r2")
    res = await _arm(rig)
    assert res.reason == "denied" and res.answer["rule"] == "nobody-arms"
    assert ota_status(rt)["policy"]["version"] == "2.0.0"
    # v3 does not compile: refused at staging, naming the rule and the key; v2 keeps deciding
    generation = rt.status()["policy"]["generation"]
    await rig.desire("r3", {"blink": "1.0.0", "policy:fleet": "3.0.0"})
    await wait_for(lambda: (ota_status(rt)["last_error"] or {}).get("artifact") == "fleet@3.0.0")
    err = ota_status(rt)["last_error"]
    assert err["reason"] == "invalid" and "unknown action 'fly'" in err["message"]
    assert "key 'rule[0].action' in policy fleet@3.0.0" in err["message"], err["message"]
    assert ota_status(rt)["policy"]["version"] == "2.0.0" and ota_status(rt)["revision"] == "r2"
    assert rt.status()["policy"]["generation"] == generation
    assert (await _arm(rig)).reason == "denied"
    await wait_for(lambda: any(e["kind"] == "refused" and e.get("artifact") == "fleet@3.0.0" for e in rig.events))


async def test_a_policy_on_a_failing_probation_is_rolled_back(rig: SettingsRig) -> None:
    rt = await rig.start()
    await rig.desire("r1", {"blink": "1.0.0", "policy:fleet": "1.0.0"})
    await rig.committed("r1")
    await rig.desire("r2", {"blink": "3.0.0", "policy:fleet": "2.0.0"})  # 3.0.0 traps on probation
    await wait_for(lambda: ota_status(rt)["rolled_back"] == 1)
    assert ota_status(rt)["policy"]["version"] == "1.0.0" and "policy:fleet@2.0.0" in ota_status(rt)["bad"]
    assert rt.status()["policy"]["artifact"]["version"] == "1.0.0"
    # the policy no longer desired: the configured one (none here) decides again
    await rig.desire("r3", {"blink": "1.0.0"})
    await rig.committed("r3")
    assert ota_status(rt)["policy"] is None and not rt.status()["policy"]["enforcing"]


async def test_the_devices_own_policy_decides_deploy_before_staging(tmp_path: Path, nc: Client,
                                                                   nats_url: str) -> None:
    local = '''[[rule]]
name = "no-blink-2"
effect = "deny"
principal = "device:ota"
action = "deploy"
resource = "component.blink.2.>"
reason = "blink 2 is not for this device"
'''
    rig = SettingsRig(tmp_path, nc, nats_url, policy=local)
    publish_component(rig.repo, tmp_path, component(tmp_path / "src", "blink", "2.0.0"))
    rig.policy("fleet", "1.0.0", ALLOW_ARM)
    await rig.upload()
    try:
        rt = await rig.start()
        await rig.desire("r1", {"blink": "1.0.0"})  # granted: the signed repository decided it
        await rig.committed("r1")
        await rig.desire("r2", {"blink": "2.0.0"})
        await wait_for(lambda: (ota_status(rt)["last_error"] or {}).get("reason") == "denied")
        err = ota_status(rt)["last_error"]
        assert "refused by the device's policy: blink 2 is not for this device (rule 'no-blink-2')" in err["message"]
        assert versions(rt) == {"blink": "1.0.0"}
        staged = list((tmp_path / "data" / "ota" / "objects").iterdir())
        assert len(staged) == 1  # nothing of 2.0.0 was fetched
        denials = rt.status()["policy"]["denied"]
        assert denials >= 1
        # a policy artifact takes the file's place: the file is neither reloaded nor watched
        local_file = str(tmp_path / "local-policy.toml")
        assert rt.status()["policy"]["file"] == local_file
        await rig.desire("r3", {"blink": "1.0.0", "policy:fleet": "1.0.0"})
        await rig.committed("r3")
        assert rt.status()["policy"]["file"] == "policy fleet@1.0.0"
        with pytest.raises(LifecycleError, match="OTA artifact fleet@1.0.0"):
            rig.layer("policy").reload()
        (tmp_path / "local-policy.toml").write_text(local.replace("no-blink-2", "no-blink-two") + "\n")
        generation = rt.status()["policy"]["generation"]
        await asyncio.sleep(0.6)  # three watch intervals
        assert rt.status()["policy"]["generation"] == generation
        # no policy desired any more: the configured file decides again (as it is now)
        await rig.desire("r4", {"blink": "1.0.0"})
        await rig.committed("r4")
        status = rt.status()["policy"]
        assert status["file"] == local_file and status["artifact"] is None and status["generation"] > generation
    finally:
        await rig.stop()
