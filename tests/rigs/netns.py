"""A device in its own network namespace, linked to the hub over a veth pair that can be cut
without either side noticing (no FIN, no RST): the dangling link of a radio that drops out.

:class:`NetnsLink` makes a namespace ``edge-<hex>`` with two veth pairs: the *uplink* (the
device's leaf connection to the hub's leaf port in the root namespace) and a *local* pair (the
test's own clients to the device's client and monitor ports, never cut). :meth:`NetnsLink.cut`
sets the uplink's root-side end down: packets from either side vanish, both TCP ends stay open
and keep writing into a dead connection until a ping or write deadline notices.
:meth:`~NetnsLink.restore` brings it up again (the old TCP connection may even resume).

Needs root and iproute2 (``ip netns``, ``ip link``); :func:`netns_available` says why not when
not root.
:class:`NetnsSyncRig` is :class:`rigs.link.SyncRig` with its devices behind such links.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import shutil
import stat
from pathlib import Path

from edge.errors import NatsError
from edge.nats.server import NatsServer, find_nats_server, pick_free_port
from edge.sync.device.leaf import HubLink, device_server_options
from edge.sync.device.streams import DeviceStreamConfig, ensure_device_streams
from edge.sync.hub.fleet import provision_device
from edge.sync.hub.server import HubServer
from rigs.link import SyncRig, _connect


def netns_available() -> str | None:
    """``None`` when namespaces can be made here, else the reason."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    return None  # as root a missing `ip` is a failure (make test-deps installs iproute2), not a skip


async def _ip(*args: str) -> None:
    if shutil.which("ip") is None:
        raise NatsError("the 'ip' command (iproute2) is missing: run `make test-deps`")
    proc = await asyncio.create_subprocess_exec("ip", *args, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise NatsError(f"ip {' '.join(args)} failed: {err.decode(errors='replace').strip()}")


class NetnsLink:
    """A namespace for one device and its cuttable uplink (see the module doc)."""

    def __init__(self, hub_leaf_port: int) -> None:
        tag = secrets.token_hex(3)
        self.ns = f"edge-{tag}"
        self.up_root, self.up_dev = f"eu{tag}", f"eU{tag}"
        self.lo_root, self.lo_dev = f"el{tag}", f"eL{tag}"
        a, b = 16 + secrets.randbelow(16), secrets.randbelow(256)  # 172.16-31.b.0/24, both /30s
        self.hub_ip, self.dev_up_ip = f"172.{a}.{b}.1", f"172.{a}.{b}.2"
        self.local_root_ip, self.device_ip = f"172.{a}.{b}.5", f"172.{a}.{b}.6"
        self.hub_leaf_port = hub_leaf_port
        self._up = False
        self._made = False

    @property
    def url(self) -> str:
        return f"nats-leaf://{self.hub_ip}:{self.hub_leaf_port}"

    @property
    def is_up(self) -> bool:
        return self._up

    async def create(self) -> None:
        await _ip("netns", "add", self.ns)
        self._made = True
        for root, dev, rip, dip in ((self.up_root, self.up_dev, self.hub_ip, self.dev_up_ip),
                                    (self.lo_root, self.lo_dev, self.local_root_ip, self.device_ip)):
            await _ip("link", "add", root, "type", "veth", "peer", "name", dev)
            await _ip("link", "set", dev, "netns", self.ns)
            await _ip("addr", "add", f"{rip}/30", "dev", root)
            await _ip("link", "set", root, "up")
            await _ip("netns", "exec", self.ns, "ip", "addr", "add", f"{dip}/30", "dev", dev)
            await _ip("netns", "exec", self.ns, "ip", "link", "set", dev, "up")
        await _ip("netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
        self._up = True

    def wrapper(self, directory: Path) -> str:
        """A nats-server 'binary' that runs the real one inside the namespace (same pid)."""
        path = Path(directory) / "nats-server-in-netns"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.ns} {find_nats_server()} "$@"\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)

    async def cut(self) -> None:
        """Dangle the uplink: nothing crosses, nobody is told."""
        if self._up:
            await _ip("link", "set", self.up_root, "down")
            self._up = False

    async def restore(self) -> None:
        if not self._up:
            await _ip("link", "set", self.up_root, "up")
            self._up = True

    async def close(self) -> None:
        if self._made:
            for link in (self.up_root, self.lo_root):
                try:
                    await _ip("link", "del", link)
                except NatsError:
                    pass
            await _ip("netns", "del", self.ns)
            self._made = False


class NetnsSyncRig(SyncRig):
    """:class:`SyncRig` whose devices run in namespaces behind :class:`NetnsLink` uplinks."""

    def __init__(self, base: Path, devices: tuple[str, ...] = ("dev1",), **kw: object) -> None:
        super().__init__(base, devices, **kw)  # type: ignore[arg-type]
        self.hub = HubServer(self.base / "hub", leaf_host="0.0.0.0")
        self.netns: dict[str, NetnsLink] = {}

    async def add_device(self, device: str, *, link_up: bool = True) -> NatsServer:
        cred = await self.hub.add_device(device)
        assert self.hub.leaf_port is not None
        link = NetnsLink(self.hub.leaf_port)
        self.netns[device] = link
        self.links[device] = link  # type: ignore[assignment]
        await link.create()
        if not link_up:
            await link.cut()
        opts = device_server_options(
            device, self.base / device,
            HubLink(url=link.url, user=device, password=cred.password, compression=self.compression),
            max_store_bytes=self.device_store_bytes, monitor_port=0,
        )
        # ports picked on loopback here: the namespace is fresh, nothing else listens there
        opts = dataclasses.replace(opts, host=link.device_ip, port=pick_free_port(), monitor_port=pick_free_port())
        srv = NatsServer(opts, binary=link.wrapper(self.base / device))
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

    async def close(self) -> None:
        await super().close()
        for link in self.netns.values():
            await link.close()
