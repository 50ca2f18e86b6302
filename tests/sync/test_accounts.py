"""Per-device accounts on the hub, tried as an attacker would: a leaf node with device B's
credentials that claims device A's server name and JetStream domain neither displaces A's link,
nor sees any of A's traffic (flow control included), nor gets anything attributed to A."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from edge.nats.publisher import Publisher
from edge.nats.server import NatsServer
from edge.sync.device.leaf import HubLink, device_server_options
from edge.sync.hub.accounts import accounts_config, device_account, device_exports
from edge.sync.hub.server import DeviceCredential
from rigs.link import read_stream, sync_rig

pytestmark = pytest.mark.timeout(90)


def test_each_device_has_its_own_account_and_only_its_own_subjects() -> None:
    creds = [DeviceCredential("a", "pa"), DeviceCredential("b", nkey="U" + "A" * 55)]
    acc = accounts_config(creds, "pc")
    assert set(acc) == {"CLOUD", "DEV_a", "DEV_b"} and device_account("a") == "DEV_a"
    assert acc["DEV_a"]["users"] == [{"user": "a", "password": "pa"}]
    assert acc["DEV_b"]["users"] == [{"nkey": "U" + "A" * 55}]
    for d in ("a", "b"):
        exports = acc[f"DEV_{d}"]["exports"]
        assert all(e["accounts"] == ["CLOUD"] for e in exports)
        subjects = [e.get("stream") or e.get("service") for e in exports]
        assert all(f".{d}." in s or s.endswith(f"-{d}.>") for s in subjects), subjects
        # the flow-control subjects of its sourcing consumers carry the device
        assert f"$JS.FC.EVT.sync-EVT-{d}.>" in device_exports(d)[1]
        # nothing of the cmd subjects goes up; only command deliveries and the update
        # connection's object deliveries (its own inbox) come down
        assert not [s for s in subjects if ".cmd" in s]
        streams_down = [i["stream"]["subject"] for i in acc[f"DEV_{d}"]["imports"] if "stream" in i]
        assert streams_down == [f"edge.{d}.sync.cmd", f"edge.{d}.ota.inbox.>"]
    cloud_exports = acc["CLOUD"]["exports"]
    assert {tuple(e["accounts"]) for e in cloud_exports} == {("DEV_a",), ("DEV_b",)}


async def test_other_devices_login_claiming_my_server_name(tmp_path: Path) -> None:
    async with sync_rig(tmp_path, ("devA", "devB"), hub_monitor=True) as rig:
        assert rig.hub.leaf_port is not None and rig.hub_nc is not None
        a_before = (await rig.devices["devA"].monitor("leafz"))["leafs"][0]
        # The attacker: devB's password, devA's server name and domain, its own streams.
        evil = NatsServer(
            device_server_options(
                "devA",
                tmp_path / "evil",
                HubLink(url=f"nats-leaf://127.0.0.1:{rig.hub.leaf_port}", user="devB",
                        password=rig.hub.devices["devB"].password),
                monitor_port=0,
            )
        )
        await evil.start()
        try:
            enc = await nats.connect(evil.url)
            seen: list[str] = []

            async def spy(msg: Msg) -> None:
                seen.append(msg.subject)

            for pattern in (">", "$JS.FC.>", "$JSC.>", "_R_.>"):
                await enc.subscribe(pattern, cb=spy)
            await enc.flush()
            for _ in range(100):  # the attacker did link (as devB's account)
                if (await evil.monitor("leafz")).get("leafnodes", 0) > 0:
                    break
                await asyncio.sleep(0.05)
            assert (await evil.monitor("leafz"))["leafnodes"] == 1
            cloud_rx: list[str] = []

            async def on_cloud(msg: Msg) -> None:
                cloud_rx.append(msg.subject)

            await rig.hub_nc.subscribe("edge.devA.>", cb=on_cloud)
            await rig.hub_nc.flush()
            # devA keeps syncing (its link was not replaced) while the attacker listens ...
            async with Publisher(rig.dev_nc["devA"]) as pub:
                for i in range(300):
                    await pub.publish("edge.devA.evt.real", str(i).encode(), msg_id=f"r{i}")
                    await pub.publish("edge.devA.tele.real", str(i).encode())
                await pub.flush(10)
            await rig.wait_hub_count("EVT", 300, device="devA")
            await rig.wait_hub_count("TELE", 300, device="devA")
            # the hub's listener hears devA's link by now (the interest crossed the leaf link) ...
            assert [s for s in cloud_rx if s.startswith("edge.devA.")]
            # ... and the attacker publishes under devA's names
            for _ in range(20):
                await enc.publish("edge.devA.evt.fake", b"x")
                await enc.publish("edge.devA.sync.evt", b"x")
            await enc.flush()
            await asyncio.sleep(1.5)  # heartbeats and flow control of devA's consumers meanwhile
            a_after = (await rig.devices["devA"].monitor("leafz"))["leafs"][0]
            assert a_after.get("id", a_after.get("cid")) == a_before.get("id", a_before.get("cid"))
            assert "Replacing connection" not in rig.hub.log_tail(400)
            # (it sees devB's own traffic: they are devB's credentials; and its own publishes)
            own = {"edge.devA.evt.fake", "edge.devA.sync.evt"}
            assert [s for s in seen if "devA" in s and s not in own] == []
            assert [s for s in seen if "devB" in s]  # positive control: the spy does hear its link
            assert "edge.devA.evt.fake" not in cloud_rx
            hub_evt = await read_stream(rig.hub_js, "EVT_devA")
            assert [d for _, d, _ in hub_evt] == [str(i).encode() for i in range(300)]
            await enc.close()
        finally:
            await evil.stop()
