"""Updates through a real leaf link: a secured hub holds the fleet's store, the device's leaf
login reads it (and its own desired state) and writes its report, nothing more."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from edge.config import load_config
from edge.ota import hub as ota_hub, repo as fleet
from edge.runtime import Runtime
from edge.sync.hub.fleet import provision_device
from edge.sync.hub.server import HubServer

from support import component, ota_status, publish_component, versions, wait_for

pytestmark = pytest.mark.timeout(90)

DEVICE = """
[device]
id = "dev1"
[hub]
url = "{leaf}"
user = "dev1"
password = "{password}"
[[entities]]
id = "e1"
components = {{ position = {{ x = 0.0 }} }}
[ota]
root = "{root}"
poll_s = 0.2
probation_s = 0.5
"""


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    server = HubServer(tmp_path / "hub")
    await server.start(supervise=True)
    try:
        yield server
    finally:
        await server.stop()


async def test_update_over_the_leaf_link(tmp_path: Path, hub: HubServer) -> None:
    cred = await hub.add_device("dev1")
    cred2 = await hub.add_device("dev2")
    cloud = await nats.connect(hub.client_url)
    try:
        js = cloud.jetstream()
        await provision_device(js, "dev1")
        repo = tmp_path / "fleet"
        fleet.keygen(repo)
        publish_component(repo, tmp_path, component(tmp_path / "src", "blink", "1.0.0"))
        await fleet.upload(js, repo)
        await ota_hub.set_desired(js, "dev1", "r1", {"blink": "1.0.0"})
        await ota_hub.set_desired(js, "dev2", "secret", {"blink": "9.9.9"})
        path = tmp_path / "dev1.toml"
        path.write_text(DEVICE.format(leaf=hub.leaf_url, password=cred.password,
                                      root=repo / "metadata" / "1.root.json"))
        rt = Runtime(load_config(path, data_dir=tmp_path / "dev1"))
        await rt.start()
        try:
            try:
                await wait_for(lambda: ota_status(rt)["revision"] == "r1", timeout=30)
            except AssertionError:
                raise AssertionError(ota_status(rt)) from None
            assert versions(rt) == {"blink": "1.0.0"}
            assert ota_status(rt)["bytes_in"] > 0

            async def reported() -> bool:
                rep = await ota_hub.get_report(js, "dev1")
                return rep is not None and rep["revision"] == "r1"

            deadline = 40
            while not await reported():
                deadline -= 1
                assert deadline > 0, f"no report reached the hub: {ota_status(rt)['report_error']}"
                import asyncio

                await asyncio.sleep(0.5)
            # the device's login cannot read another device's desired state
            import asyncio

            nc = rt.layers.layers[-1]._nc  # type: ignore[union-attr]
            from edge.nats.subjects import hub_api

            djs = nc.jetstream(prefix=hub_api("dev1"))
            kv = await djs.key_value(ota_hub.DESIRED_BUCKET)
            assert (await kv.get("dev1")).value is not None  # its own key is readable
            with pytest.raises(Exception):  # noqa: B017  not exported: no responders or a timeout
                await asyncio.wait_for(kv.get("dev2"), 3)
            del cred2
        finally:
            await rt.stop()
    finally:
        await cloud.close()


def test_ota_exports_name_only_the_device_itself() -> None:
    streams, services = ota_hub.ota_exports("dev1")
    keyed = [s for s in services if "KV" in s and ("$KV." in s or "DIRECT" in s)]
    assert keyed and all(s.endswith(".dev1") for s in keyed)
    assert streams == ["edge.dev1.ota.inbox.>"]
    assert json.dumps([streams, services]).count("dev2") == 0


async def test_config_fragment_and_policy_over_the_leaf_link(tmp_path: Path, hub: HubServer) -> None:
    from edge.ota.fragments import load_device_config, pack_fragment
    from edge.ota.policies import pack_policy

    cred = await hub.add_device("dev1")
    cloud = await nats.connect(hub.client_url)
    try:
        js = cloud.jetstream()
        await provision_device(js, "dev1")
        repo = tmp_path / "fleet"
        fleet.keygen(repo)
        publish_component(repo, tmp_path, component(tmp_path / "src", "blink", "1.0.0"))
        frag = tmp_path / "limits.toml"
        frag.write_text("[safety]\nceiling = 42.0\n")
        fleet.publish(repo, pack_fragment(frag), kind="config", name="limits", version="1.0.0")
        pol = tmp_path / "fleet-policy.toml"
        pol.write_text('[[rule]]\nname = "arm-off"\neffect = "deny"\nprincipal = "*"\naction = "command"\n'
                       'resource = "*.arm"\n')
        fleet.publish(repo, pack_policy(pol), kind="policy", name="fleet", version="1.0.0")
        await fleet.upload(js, repo)
        await ota_hub.set_desired(js, "dev1", "r1", {"blink": "1.0.0", "config:limits": "1.0.0",
                                                      "policy:fleet": "1.0.0"})
        path = tmp_path / "dev1.toml"
        path.write_text(DEVICE.format(leaf=hub.leaf_url, password=cred.password,
                                      root=repo / "metadata" / "1.root.json") + "[safety]\nceiling = 100.0\n")
        rt = Runtime(load_device_config(path, data_dir=tmp_path / "dev1"))
        await rt.start()
        try:
            try:
                await wait_for(lambda: ota_status(rt)["revision"] == "r1" and ota_status(rt)["probation"] is None,
                               timeout=30)
            except AssertionError:
                raise AssertionError(ota_status(rt)) from None
            assert rt.layers is not None
            safety = next(layer for layer in rt.layers if layer.name == "safety")
            assert safety.config.defaults.ceiling == 42.0  # type: ignore[attr-defined]
            assert ota_status(rt)["config"]["fragments"] == ["limits@1.0.0"]
            assert rt.status()["policy"]["artifact"]["name"] == "fleet"
            assert rt.status()["policy"]["rules"] == 1
        finally:
            await rt.stop()
        # the next start loads the fragment before anything else runs
        cfg = load_device_config(path, data_dir=tmp_path / "dev1")
        assert cfg.fragments == ["limits@1.0.0"] and cfg.safety.defaults.ceiling == 42.0
    finally:
        await cloud.close()
