"""The leaf link over TLS: the device verifies the hub with a CA; plain TCP is refused."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from edge.nats.server import NatsServer, TlsFiles
from edge.sync.hub.fleet import fleet_status, provision_device
from edge.sync.hub.server import HubServer
from edge.sync.device.leaf import HubLink, device_server_options
from edge.nats.publisher import Publisher
from edge.sync.device.streams import DeviceStreamConfig, ensure_device_streams
from rigs.link import make_test_pki

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl"),
]


async def _device(tmp: Path, name: str, link: HubLink) -> tuple[NatsServer, NATS]:
    srv = NatsServer(device_server_options(name, tmp / name, link, monitor_port=0))
    await srv.start()
    nc = await nats.connect(srv.url)
    await ensure_device_streams(nc.jetstream(), DeviceStreamConfig(name, hub_domain="hub"))
    return srv, nc


async def test_leaf_link_over_tls(tmp_path: Path) -> None:
    pki = await make_test_pki(tmp_path / "pki")
    hub = HubServer(tmp_path / "hub", leaf_tls=TlsFiles(cert=pki["cert"], key=pki["key"]))
    await hub.start()
    devices: list[NatsServer] = []
    try:
        assert "tls" in hub.config_path.read_text()
        good = await hub.add_device("good")
        plain = await hub.add_device("plain")
        assert hub.leaf_url is not None
        srv, nc = await _device(
            tmp_path, "good", HubLink(url=hub.leaf_url, user="good", password=good.password, tls_ca=pki["ca"])
        )
        devices.append(srv)
        srv2, nc2 = await _device(
            tmp_path, "plain", HubLink(url=hub.leaf_url, user="plain", password=plain.password)
        )
        devices.append(srv2)
        hc = await nats.connect(hub.client_url)
        js = hc.jetstream()
        await provision_device(js, "good")
        await provision_device(js, "plain")
        for dev_nc, dev in ((nc, "good"), (nc2, "plain")):
            async with Publisher(dev_nc) as pub:
                await pub.publish(f"edge.{dev}.evt.hello", b"1")
                await pub.flush(5)
        for _ in range(200):
            if (await js.stream_info("EVT_good")).state.messages == 1:
                break
            await asyncio.sleep(0.05)
        st = {s.device: s for s in await fleet_status(js)}
        assert st["good"].evt_messages == 1 and st["good"].link == "up"
        assert (await srv.monitor("leafz"))["leafnodes"] == 1
        # Without the CA (plain TCP to a TLS listener) the device never links.
        assert (await srv2.monitor("leafz"))["leafnodes"] == 0
        assert st["plain"].evt_messages == 0 and st["plain"].link == "never"
        await hc.close()
        await nc.close()
        await nc2.close()
    finally:
        for s in devices:
            await s.stop()
        await hub.stop()
