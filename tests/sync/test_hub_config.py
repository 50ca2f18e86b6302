"""Bring your own hub: `edge cloud config` writes a config a stock nats-server runs; devices link,
sync and get commands; adding a device is one command and a reload, not a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from edge.errors import ConfigError
from edge.nats.publisher import Publisher
from edge.nats.server import NatsServer, find_nats_server, pick_free_port
from edge.sync.device.commands import CommandReceiver
from edge.sync.device.leaf import HubLink, device_server_options
from edge.sync.device.streams import DeviceStreamConfig, ensure_device_streams
from edge.sync.hub.config import FleetConfig, HubNode, reload_node
from edge.sync.hub.fleet import fleet_status, provision_device, send_command

pytestmark = pytest.mark.timeout(120)

# what nats-py raises when a server that requires TLS is dialled without it
PLAIN_REFUSED = (nats.errors.NoServersError, nats.errors.Error, OSError, TimeoutError)


def free_node(name: str) -> HubNode:
    return HubNode(name, host="127.0.0.1", port=pick_free_port(), leaf_port=pick_free_port(),
                   cluster_port=pick_free_port())


@contextlib.asynccontextmanager
async def stock_server(conf: Path, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """``nats-server -c conf``, as a user would run it."""
    proc = await asyncio.create_subprocess_exec(find_nats_server(), "-c", str(conf),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            await asyncio.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        await proc.wait()


async def start_device(base: Path, cfg: FleetConfig, device: str) -> tuple[NatsServer, nats.aio.client.Client]:
    v = cfg.devices[device]
    urls = cfg.leaf_urls()
    link = (HubLink(url=urls[0], urls=urls[1:], nkey_seed=cfg.seed_path(device)) if "nkey" in v
            else HubLink(url=urls[0], urls=urls[1:], user=device, password=v["password"]))
    srv = NatsServer(device_server_options(device, base / device, link, monitor_port=0))
    await srv.start()
    for _ in range(200):
        if (await srv.monitor("leafz")).get("leafnodes", 0):
            break
        await asyncio.sleep(0.05)
    nc = await nats.connect(srv.url)
    await ensure_device_streams(nc.jetstream(), DeviceStreamConfig(device, hub_domain="hub"))
    return srv, nc


async def wait_evt(js: nats.js.JetStreamContext, device: str, n: int, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.05)):
        with contextlib.suppress(Exception):
            if (await js.stream_info(f"EVT_{device}")).state.messages >= n:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"EVT_{device} never reached {n}")


async def test_stock_server_runs_the_fleet_config_and_adds_a_device_with_a_reload(tmp_path: Path) -> None:
    node = free_node("hub-a")
    cfg = FleetConfig.create(tmp_path / "hub", [node])
    cfg.add_device("d1")
    cfg.add_device("d2", nkey=True)
    [conf] = cfg.write()
    assert oct(conf.stat().st_mode & 0o777) == "0o600" and (cfg.seed_path("d2").stat().st_mode & 0o077) == 0
    text = conf.read_text()
    assert '"DEV_d1"' in text and '"DEV_d2"' in text and 'domain: "hub"' in text and "leafnodes" in text
    devices: list[NatsServer] = []
    async with stock_server(conf, node.port) as proc:
        hc = await nats.connect(servers=cfg.client_urls())
        try:
            js = hc.jetstream()
            for d in ("d1", "d2"):
                await provision_device(js, d)
            for d in ("d1", "d2"):
                srv, nc = await start_device(tmp_path, cfg, d)
                devices.append(srv)
                async with Publisher(nc) as pub:
                    for i in range(50):
                        await pub.publish(f"edge.{d}.evt.x", str(i).encode(), msg_id=f"{d}-{i}")
                    await pub.flush(10)
                await wait_evt(js, d, 50)
                await send_command(js, d, "pod.arm", b"{}", msg_id=f"arm-{d}")
                cmd = await CommandReceiver(nc.jetstream(), d).next(timeout=10)
                assert cmd is not None and cmd.command_id == f"arm-{d}"
                await nc.close()
            # one more device: one command (here its function), a reload, no restart
            cfg2 = FleetConfig.load(tmp_path / "hub")
            cfg2.add_device("d3")
            cfg2.write()
            assert await reload_node(cfg2, node)
            await asyncio.sleep(1.0)
            await provision_device(js, "d3")
            srv, nc = await start_device(tmp_path, cfg2, "d3")
            devices.append(srv)
            async with Publisher(nc) as pub:
                await pub.publish("edge.d3.evt.hello", b"1", msg_id="h")
                await pub.flush(10)
            await wait_evt(js, "d3", 1)
            await send_command(js, "d3", "pod.arm", b"{}", msg_id="arm-d3")
            cmd = await CommandReceiver(nc.jetstream(), "d3").next(timeout=10)
            assert cmd is not None and cmd.command_id == "arm-d3"
            await nc.close()
            assert proc.returncode is None  # the same process all along
            st = {s.device: s for s in await fleet_status(js)}
            assert st["d1"].evt_messages == 50 and st["d3"].link == "up" and st["d3"].lag == 0
        finally:
            await hc.close()
            for srv in devices:
                await srv.stop()


def test_fleet_config_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="1 or 3"):
        FleetConfig.create(tmp_path, [HubNode("a"), HubNode("b")])
    with pytest.raises(ConfigError, match="differ"):
        FleetConfig.create(tmp_path, [HubNode("a"), HubNode("a"), HubNode("c")])
    with pytest.raises(ConfigError, match="not a TCP port"):
        HubNode("a", port=70000)
    with pytest.raises(ConfigError, match="(?i)device id"):
        FleetConfig.create(tmp_path, [HubNode("a")]).add_device("bad.id")
    with pytest.raises(ConfigError, match="both tls_cert and tls_key"):
        FleetConfig.create(tmp_path, [HubNode("a")], tls_cert="c.pem")
    with pytest.raises(ConfigError, match="no fleet config"):
        FleetConfig.load(tmp_path / "none")


def test_cli_writes_a_config_that_nats_server_accepts(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run([sys.executable, "-m", "edge.cli.main", "cloud", "config", str(tmp_path / "fleet"),
                          "--nodes", "3", "--host", "127.0.0.1", "--device", "drone7"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert 'url = "nats-leaf://127.0.0.1:7422"' in out.stdout and "nats-leaf://127.0.0.1:7424" in out.stdout
    for i in (1, 2, 3):
        conf = tmp_path / "fleet" / f"hub-{i}.conf"
        text = conf.read_text()
        assert "cluster {" in text and text.count("nats-route://") == 2
        check = subprocess.run([find_nats_server(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr


async def test_cli_add_device_is_one_command_with_a_reload(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    d = tmp_path / "fleet"
    port, leaf_port = pick_free_port(), pick_free_port()

    def edge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge.cli.main", "cloud", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    out = edge("config", str(d), "--host", "127.0.0.1", "--port", str(port), "--leaf-port", str(leaf_port),
               "--device", "d1")
    assert out.returncode == 0, out.stderr
    async with stock_server(d / "hub.conf", port) as proc:
        added = await asyncio.to_thread(edge, "add-device", str(d), "d2")
        assert added.returncode == 0, added.stderr
        assert "reloaded: hub" in added.stdout and "provisioned d2" in added.stdout
        assert 'user = "d2"' in added.stdout
        cfg = FleetConfig.load(d)
        srv, nc = await start_device(tmp_path, cfg, "d2")
        try:
            async with Publisher(nc) as pub:
                await pub.publish("edge.d2.evt.hello", b"1", msg_id="h")
                await pub.flush(10)
            hc = await nats.connect(servers=cfg.client_urls())
            try:
                await wait_evt(hc.jetstream(), "d2", 1)
            finally:
                await hc.close()
            assert proc.returncode is None
        finally:
            await nc.close()
            await srv.stop()


async def test_fleet_config_with_tls_on_client_and_leaf_ports(tmp_path: Path) -> None:
    import shutil
    import ssl

    from rigs.link import make_test_pki

    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed for the TLS test (apt-get install openssl)")
    pki = await make_test_pki(tmp_path / "pki")
    node = free_node("hub")
    cfg = FleetConfig.create(tmp_path / "hub", [node], tls_cert=str(pki["cert"]), tls_key=str(pki["key"]))
    cfg.add_device("t1")
    [conf] = cfg.write()
    assert conf.read_text().count("tls {") == 2  # client port and leaf port
    assert cfg.client_urls()[0].startswith("tls://")
    async with stock_server(conf, node.port):
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        with pytest.raises(PLAIN_REFUSED):  # plain TCP is refused
            await nats.connect(f"nats://cloud:{cfg.cloud_password}@127.0.0.1:{node.port}", connect_timeout=2,
                               allow_reconnect=False, max_reconnect_attempts=0)
        hc = await nats.connect(servers=cfg.client_urls(), tls=ctx)
        try:
            await provision_device(hc.jetstream(), "t1")
            link = HubLink(url=cfg.leaf_urls()[0], user="t1", password=cfg.devices["t1"]["password"], tls_ca=pki["ca"])
            srv = NatsServer(device_server_options("t1", tmp_path / "t1", link, monitor_port=0))
            await srv.start()
            try:
                nc = await nats.connect(srv.url)
                await ensure_device_streams(nc.jetstream(), DeviceStreamConfig("t1", hub_domain="hub"))
                async with Publisher(nc) as pub:
                    await pub.publish("edge.t1.evt.secure", b"1", msg_id="s1")
                    await pub.flush(10)
                await wait_evt(hc.jetstream(), "t1", 1)
                await nc.close()
            finally:
                await srv.stop()
        finally:
            await hc.close()
