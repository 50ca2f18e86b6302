"""Devices linking to the hub with per-device nkeys (real hub and leaf nats-server processes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from edge.errors import ConfigError, NatsError
from edge.nats.server import NatsServer
from edge.nats.server import pick_free_port
from edge.sync.hub.fleet import fleet_status, provision_device
from edge.sync.hub.server import HubServer, generate_nkey, write_seed
from edge.sync.device.leaf import HubLink, device_server_options, read_seed
from edge.nats.publisher import Publisher
from edge.sync.device.streams import DeviceStreamConfig, ensure_device_streams
from rigs.link import read_stream
from isolation_support import assert_confined

pytestmark = pytest.mark.timeout(60)

LINK_TIMEOUT_S = 10.0


class NkeyFleet:
    """A secure hub plus devices that log in with nkey seeds."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.hub = HubServer(base / "hub")
        self.devices: dict[str, NatsServer] = {}
        self.dev_nc: dict[str, NATS] = {}
        self.hub_nc: NATS | None = None

    async def start_device(self, device: str, seed_file: Path, *, provision: bool = True) -> NatsServer:
        assert self.hub.leaf_url is not None
        srv = NatsServer(
            device_server_options(
                device,
                self.base / device,
                HubLink(url=self.hub.leaf_url, nkey_seed=seed_file),
                monitor_port=0,
            )
        )
        await srv.start()
        self.devices[device] = srv
        nc = await nats.connect(srv.url, connect_timeout=2)
        self.dev_nc[device] = nc
        if provision:
            await wait_linked(srv)
            await ensure_device_streams(nc.jetstream(), DeviceStreamConfig(device))
            assert self.hub_nc is not None
            await provision_device(self.hub_nc.jetstream(), device, hub=self.hub)
        return srv

    async def close(self) -> None:
        for nc in [*self.dev_nc.values(), self.hub_nc]:
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
        for srv in [*self.devices.values(), self.hub]:
            with contextlib.suppress(Exception):
                await srv.stop()


@contextlib.asynccontextmanager
async def nkey_fleet(base: Path, devices: tuple[str, ...]) -> AsyncIterator[NkeyFleet]:
    fleet = NkeyFleet(base)
    try:
        seeds: dict[str, Path] = {}
        for d in devices:
            cred = await fleet.hub.add_device(d, auth="nkey")
            assert cred.seed is not None
            seeds[d] = write_seed(base / "keys" / f"{d}.nk", cred.seed)
        await fleet.hub.start()
        fleet.hub_nc = await nats.connect(fleet.hub.client_url, connect_timeout=2)
        for d in devices:
            await fleet.start_device(d, seeds[d])
        yield fleet
    finally:
        await fleet.close()


async def wait_linked(srv: NatsServer, timeout: float = LINK_TIMEOUT_S) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if (await srv.monitor("leafz")).get("leafnodes", 0) > 0:
            return
        await asyncio.sleep(0.05)
    raise NatsError(f"device did not link within {timeout} s", log=srv.log_tail(20))


async def test_nkey_device_links_and_telemetry_reaches_hub(tmp_path: Path) -> None:
    async with nkey_fleet(tmp_path, ("dev1",)) as fleet:
        hub_conf = fleet.hub.config_path.read_text()
        pub_key = fleet.hub.devices["dev1"].nkey
        assert pub_key is not None and pub_key in hub_conf
        assert read_seed(tmp_path / "keys" / "dev1.nk") not in hub_conf  # the hub never sees the seed
        assert '"user": "dev1"' not in hub_conf  # no password login for an nkey device
        async with Publisher(fleet.dev_nc["dev1"]) as pub:
            for i in range(50):
                await pub.publish("edge.dev1.tele.imu", str(i).encode())
            await pub.flush(10)
        assert fleet.hub_nc is not None
        js = fleet.hub_nc.jetstream()
        for _ in range(200):
            [st] = await fleet_status(js)
            if st.tele_messages == 50:
                break
            await asyncio.sleep(0.05)
        assert st.link == "up" and st.tele_messages == 50
        tele = await read_stream(js, "TELE_dev1")
        assert [d for _, d, _ in tele] == [str(i).encode() for i in range(50)]
        # provision_device(hub=...) on an nkey device must not turn it back into a password user.
        await provision_device(js, "dev1", hub=fleet.hub)
        assert fleet.hub.devices["dev1"].nkey == pub_key


async def test_wrong_seed_never_links(tmp_path: Path) -> None:
    async with nkey_fleet(tmp_path, ("dev1",)) as fleet:
        await fleet.hub.add_device("intruder", auth="nkey")  # registered, but we hold another key
        wrong_seed, _ = generate_nkey()
        seed_file = write_seed(tmp_path / "keys" / "wrong.nk", wrong_seed)
        srv = await fleet.start_device("intruder", seed_file, provision=False)
        nc = fleet.dev_nc["intruder"]
        js = nc.jetstream()
        await ensure_device_streams(js, DeviceStreamConfig("intruder"))
        assert fleet.hub_nc is not None
        hub_js = fleet.hub_nc.jetstream()
        await provision_device(hub_js, "intruder")
        await js.publish("edge.intruder.evt.x", b"1")
        await asyncio.sleep(1.5)
        st = {s.device: s for s in await fleet_status(hub_js)}
        assert st["intruder"].link == "never" and st["intruder"].evt_messages == 0
        assert st["dev1"].link == "up"
        assert "authentication error - Nkey" in fleet.hub.log_tail(300)
        assert "Authorization Violation" in srv.log_tail(300)


async def test_nkey_device_refused_other_devices_subjects(tmp_path: Path) -> None:
    async with nkey_fleet(tmp_path, ("devA", "devB")) as fleet:
        assert fleet.hub_nc is not None
        await assert_confined(fleet.hub_nc, fleet.dev_nc["devA"], fleet.devices["devA"].url, "devA", "devB")


async def test_add_device_nkey_lifecycle(tmp_path: Path) -> None:
    hub = HubServer(tmp_path / "hub")
    cred = await hub.add_device("d1", auth="nkey")
    assert cred.seed is not None and cred.seed.startswith("SU") and cred.nkey is not None
    assert hub.devices["d1"].seed is None  # the hub keeps only the public key
    again = await hub.add_device("d1")  # same kind of login: unchanged, no new seed
    assert again.nkey == cred.nkey and again.seed is None
    assert (await hub.add_device("d1", auth="nkey")).nkey == cred.nkey
    _, other = generate_nkey()
    assert (await hub.add_device("d1", nkey=other)).nkey == other  # key rotation
    pw = await hub.add_device("d1", auth="password")  # switched back to a password login
    assert pw.nkey is None and pw.auth == "password"
    with pytest.raises(ConfigError):
        await hub.add_device("d2", nkey="Unot-a-key")


def test_seed_files(tmp_path: Path) -> None:
    seed, _ = generate_nkey()
    path = write_seed(tmp_path / "k" / "d.nk", seed)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_seed(path) == seed
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others"):
        read_seed(path)
    write_seed(path, seed)  # rewriting an existing file also tightens its mode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    bad = tmp_path / "bad.nk"
    bad.write_text("not a seed")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="user nkey seed"):
        read_seed(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_seed(tmp_path / "missing.nk")
    with pytest.raises(ConfigError):
        write_seed(tmp_path / "x.nk", "SXnot")
    with pytest.raises(ConfigError, match="only one"):
        HubLink(url="nats-leaf://h:7422", user="d", password="p", nkey_seed=path).remote()
    with pytest.raises(ConfigError, match="readable"):
        path.chmod(0o640)
        HubLink(url="nats-leaf://h:7422", nkey_seed=path).remote()


async def test_cloud_run_nkeys_writes_seed_and_hub_table(tmp_path: Path) -> None:
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "edge.cli.main", "cloud", "run", "--store", str(store), "--nkeys"]
    cmd += ["--device", "d1", "--port", str(pick_free_port("127.0.0.1"))]
    cmd += ["--leaf-port", str(pick_free_port("127.0.0.1"))]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ}
    )
    out = b""
    try:
        assert proc.stdout is not None
        while b"nkey_seed" not in out:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line, out.decode()
            out += line
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 15)
    seed_file = store / "devices" / "d1.nk"
    assert f'nkey_seed = "{seed_file}"' in out.decode()
    assert "password" not in out.decode()
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    saved = (store / "devices.json").read_text()
    assert '"nkey": "U' in saved and read_seed(seed_file) not in saved
