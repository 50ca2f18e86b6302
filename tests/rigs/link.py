"""Test and benchmark rig: a hub, devices as leaf nodes, and a cuttable link between them.

:class:`LinkProxy` is a TCP relay between a device's leaf connection and the hub's leaf port: it
counts bytes each way (bytes on the wire) and can :meth:`~LinkProxy.cut` the link (drop every
connection, refuse new ones) and :meth:`~LinkProxy.restore` it, without touching either server.
:class:`SyncRig` wires hub, proxies and devices together with real nats-server processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from edge.errors import NatsError
from edge.nats.server import NatsServer, pick_free_port
from edge.nats import subjects as naming
from edge.sync.hub.fleet import ProvisionOptions, provision_device
from edge.sync.hub.server import HubServer
from edge.sync.device.leaf import HubLink, device_server_options
from edge.sync.device.streams import DeviceStreamConfig, ensure_device_streams

log = logging.getLogger("edge.sync")

RELAY_CHUNK = 65536


class LinkProxy:
    """A cuttable, byte-counting TCP relay on loopback."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = pick_free_port(host)
        self.up_bytes = 0  # device -> hub
        self.down_bytes = 0  # hub -> device
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"nats-leaf://{self.host}:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    async def restore(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)

    async def cut(self) -> None:
        srv, self._server = self._server, None
        if srv is not None:
            srv.close()
            await srv.wait_closed()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        for t in list(self._tasks):
            t.cancel()
        self._tasks.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ureader, uwriter = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, uwriter))
        for src, dst, up in ((reader, uwriter, True), (ureader, writer, False)):
            task = asyncio.create_task(self._pipe(src, dst, up))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
        try:
            while data := await src.read(RELAY_CHUNK):
                if up:
                    self.up_bytes += len(data)
                else:
                    self.down_bytes += len(data)
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.transport.abort()


class SyncRig:
    """Hub + devices (leaf nodes through :class:`LinkProxy` links) with connected clients."""

    def __init__(
        self,
        base: Path,
        devices: tuple[str, ...] = ("dev1",),
        *,
        stream_cfg: dict[str, Any] | None = None,
        provision: ProvisionOptions | None = None,
        device_store_bytes: int | None = None,
        hub_monitor: bool = False,
        compression: str | None = "s2_auto",
    ) -> None:
        self.base = Path(base)
        self.device_ids = devices
        self.stream_cfg = stream_cfg or {}
        self.provision = provision
        self.device_store_bytes = device_store_bytes
        self.compression = compression
        self.hub = HubServer(self.base / "hub", monitor_port=0 if hub_monitor else None)
        self.links: dict[str, LinkProxy] = {}
        self.devices: dict[str, NatsServer] = {}
        self.dev_nc: dict[str, NATS] = {}
        self.hub_nc: NATS | None = None

    @property
    def hub_js(self) -> JetStreamContext:
        if self.hub_nc is None:
            raise NatsError("The rig's hub connection is not open.")
        return self.hub_nc.jetstream()

    def dev_js(self, device: str = "dev1") -> JetStreamContext:
        return self.dev_nc[device].jetstream()

    async def start(self) -> None:
        await self.hub.start()
        self.hub_nc = await _connect(self.hub.client_url)
        for d in self.device_ids:
            await self.add_device(d)

    async def add_device(self, device: str, *, link_up: bool = True) -> NatsServer:
        """Register the device's login, start its server and streams, then provision the hub.

        Provisioning after the device is reachable lets the hub's first attach succeed at once
        (a request sent while the device is unreachable costs a 5 s wait)."""
        cred = await self.hub.add_device(device)
        assert self.hub.leaf_port is not None
        link = LinkProxy("127.0.0.1", self.hub.leaf_port)
        self.links[device] = link
        if link_up:
            await link.restore()
        srv = NatsServer(
            device_server_options(
                device,
                self.base / device,
                HubLink(url=link.url, user=device, password=cred.password, compression=self.compression),
                max_store_bytes=self.device_store_bytes,
                monitor_port=0,
            )
        )
        await srv.start()
        self.devices[device] = srv
        self.dev_nc[device] = await _connect(srv.url)
        if link_up:
            await self.wait_linked(device)
        await ensure_device_streams(
            self.dev_js(device), DeviceStreamConfig(device, hub_domain=self.hub.domain, **self.stream_cfg)
        )
        await provision_device(self.hub_js, device, self.provision)
        return srv

    async def wait_linked(self, device: str, timeout: float = 10.0) -> None:
        """Wait until the device's server reports its leaf connection to the hub."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if (await self.devices[device].monitor("leafz")).get("leafnodes", 0) > 0:
                return
            await asyncio.sleep(0.05)
        raise NatsError(f"Device {device} did not link to the hub within {timeout} s.", device=device)

    async def restart_device_server(self, device: str = "dev1", *, kill: bool = True) -> None:
        srv = self.devices[device]
        if kill:
            await srv.kill()
        else:
            await srv.stop()
        await srv.start()

    async def hub_count(self, kind: str, device: str = "dev1") -> int:
        info = await self.hub_js.stream_info(naming.hub_stream(kind, device))
        return int(info.state.messages)

    async def wait_hub_count(self, kind: str, n: int, device: str = "dev1", timeout: float = 20.0) -> float:
        """Wait until the hub's ``kind`` stream for ``device`` holds ``n`` messages; return the
        seconds it took. Raises NatsError with the count reached on timeout."""
        t0 = time.monotonic()
        got = -1
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(Exception):
                got = await self.hub_count(kind, device)
                if got >= n:
                    return time.monotonic() - t0
            await asyncio.sleep(0.05)
        raise NatsError(
            f"Hub {kind}_{device} holds {got} messages, expected {n}, after {timeout} s.",
            device=device,
            got=got,
            expected=n,
        )

    async def close(self) -> None:
        for nc in [*self.dev_nc.values(), self.hub_nc]:
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
        for link in self.links.values():
            await link.cut()
        for srv in [*self.devices.values(), self.hub]:
            with contextlib.suppress(Exception):
                await srv.stop()


async def _connect(url: str) -> NATS:
    return await nats.connect(url, reconnect_time_wait=0.1, max_reconnect_attempts=-1, connect_timeout=2)


async def read_stream(
    js: JetStreamContext, stream: str, subject: str = ">", batch: int = 1000
) -> list[tuple[str, bytes, dict[str, str]]]:
    """Every message of ``stream`` (subject, data, headers) in stream order."""
    sub = await js.pull_subscribe(subject, stream=stream)
    out: list[tuple[str, bytes, dict[str, str]]] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            for m in msgs:
                out.append((m.subject, m.data, dict(m.headers or {})))
                await m.ack()
    finally:
        await sub.unsubscribe()
    return out


@contextlib.asynccontextmanager
async def sync_rig(base: Path, devices: tuple[str, ...] = ("dev1",), **kw: Any) -> AsyncIterator[SyncRig]:
    rig = SyncRig(base, devices, **kw)
    try:
        await rig.start()
        yield rig
    finally:
        await rig.close()


async def make_test_pki(directory: Path, host_ip: str = "127.0.0.1") -> dict[str, Path]:
    """A throwaway CA and a server certificate for ``host_ip`` (openssl CLI), for TLS tests.
    Returns paths ``ca``, ``cert``, ``key``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        d / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ext = d / "san.cnf"
    ext.write_text(f"subjectAltName=IP:{host_ip},DNS:localhost\n")
    steps = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(ca_key),
            "-out",
            str(ca),
            "-days",
            "1",
            "-subj",
            "/CN=edge test CA",
        ],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=hub"],
        [
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-out",
            str(cert),
            "-days",
            "1",
            "-extfile",
            str(ext),
        ],
    ]
    for args in steps:
        proc = await asyncio.create_subprocess_exec(
            "openssl", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise NatsError(f"openssl {args[0]} failed: {err.decode(errors='replace')[-300:]}")
    return {"ca": ca, "cert": cert, "key": key}
