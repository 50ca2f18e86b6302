"""A development hub assembled in one place: what ``edge cloud run`` starts.

Key components
- :class:`DevHub`: an embedded :class:`~edge.sync.hub.server.HubServer` over a store directory
  that keeps the devices' leaf logins (``devices.json``, mode 0600: a password per device, or
  only the public nkey of devices on nkeys, their seeds in ``devices/<device>.nk``, mode 0600),
  provisions the hub streams of the devices it is given, and writes ``hub.json`` so that the
  other ``edge cloud``/``edge fleet`` commands find it.
- :meth:`DevHub.device_table`: the ``[hub]`` table a device needs to link to it.

Example
    hub = DevHub(store, devices=["drone7"])
    await hub.start()
    print(hub.device_table("drone7"))
    ...
    await hub.stop()
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.errors import ConfigError, EdgeError
from edge.nats.server import ClusterOptions, TlsFiles
from edge.sync.hub.fleet import ProvisionOptions, provision_device
from edge.sync.hub.reattach import SourceWatch
from edge.sync.hub.repair import DEFAULT_INTERVAL_S as DEFAULT_REPAIR_INTERVAL_S, Repairer
from edge.sync.hub.server import DeviceCredential, HubServer, generate_nkey, write_seed

log = logging.getLogger("edge.sync.hub")

HUB_FILE = "hub.json"
CREDS_FILE = "devices.json"
SEED_DIR = "devices"
SEED_SUFFIX = ".nk"
DEFAULT_CLIENT_PORT = 4222
DEFAULT_LEAF_PORT = 7422
DEFAULT_CLUSTER_PORT = 6222
DEFAULT_HOST = "127.0.0.1"
CLUSTER_NAME = "edge-hub"


def default_store() -> Path:
    """``$EDGE_HUB_DIR``, else ``$XDG_STATE_HOME/edge-hub`` (``~/.local/state/edge-hub``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(os.environ.get("EDGE_HUB_DIR") or Path(base) / "edge-hub")


def load_logins(path: Path) -> list[DeviceCredential]:
    """``devices.json``: ``{device: password}`` or ``{device: {"nkey": "U..."}}``."""
    if not path.exists():
        return []
    try:
        saved = json.loads(path.read_text())
        return [
            DeviceCredential(d, nkey=str(v["nkey"])) if isinstance(v, dict) else DeviceCredential(d, str(v))
            for d, v in saved.items()
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise EdgeError(f"{path} is not a device login file: {err}", file=str(path)) from None


def save_logins(path: Path, creds: Sequence[DeviceCredential]) -> None:
    data = {c.device: ({"nkey": c.nkey} if c.nkey is not None else c.password) for c in creds}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(json.dumps(data))


class DevHub:
    """A hub for development: one server (or a cluster of ``nodes``), logins kept in ``store``,
    devices provisioned (with three replicas on a cluster)."""

    def __init__(self, store: Path, *, devices: Sequence[str] = (), secure: bool = True, nkeys: bool = False,
                 port: int = DEFAULT_CLIENT_PORT, leaf_port: int = DEFAULT_LEAF_PORT, nodes: int = 1,
                 host: str = DEFAULT_HOST, cluster_port: int = DEFAULT_CLUSTER_PORT,
                 leaf_tls: TlsFiles | None = None, repair_interval_s: float | None = DEFAULT_REPAIR_INTERVAL_S) -> None:
        if nodes < 1 or nodes == 2:
            raise ConfigError(f"--nodes {nodes}: a hub is 1 server or a cluster of 3 or more", key="nodes")
        self.store = store
        self.devices = list(devices)
        self.secure = secure
        self.nkeys = nkeys
        self.port = port
        self.leaf_port = leaf_port
        self.nodes = nodes
        self.host = host
        self.cluster_port = cluster_port
        self.leaf_tls = leaf_tls
        self.seed_paths: dict[str, Path] = {}
        self.servers: list[HubServer] = []
        # backfills events the hub's sourcing skipped (edge.sync.hub.repair); None: off
        self.repair_interval_s = repair_interval_s
        self.repairer: Repairer | None = None
        self.watch: SourceWatch | None = None  # re-attaches stalled sources (edge.sync.hub.reattach)
        self._repair_nc: Any = None

    @property
    def server(self) -> HubServer | None:
        """The first node (the only one without a cluster)."""
        return self.servers[0] if self.servers else None

    @property
    def hub_file(self) -> Path:
        return self.store / HUB_FILE

    def _servers(self, logins: list[DeviceCredential]) -> list[HubServer]:
        if self.nodes == 1:
            return [HubServer(self.store / "nats", devices=logins, secure=self.secure, host=self.host,
                              port=self.port, leaf_host=self.host, leaf_port=self.leaf_port, leaf_tls=self.leaf_tls)]
        cloud_password = secrets.token_urlsafe(18)
        addr = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        routes = [f"nats-route://{addr}:{self.cluster_port + i}" for i in range(self.nodes)]
        return [
            HubServer(self.store / f"nats-hub-{i + 1}", devices=[dataclasses.replace(c) for c in logins],
                      secure=self.secure, cloud_password=cloud_password, host=self.host, port=self.port + i,
                      leaf_host=self.host, leaf_port=self.leaf_port + i, leaf_tls=self.leaf_tls,
                      server_name=f"hub-{i + 1}",
                      cluster=ClusterOptions(CLUSTER_NAME, host=self.host, port=self.cluster_port + i,
                                             routes=[r for j, r in enumerate(routes) if j != i]))
            for i in range(self.nodes)
        ]

    async def start(self) -> None:
        import nats

        self.store.mkdir(parents=True, exist_ok=True)
        creds_path = self.store / CREDS_FILE
        self.servers = self._servers(load_logins(creds_path))
        await asyncio.gather(*(s.start(supervise=True) for s in self.servers))
        first = self.servers[0]
        nc = await nats.connect(servers=[s.client_url for s in self.servers])
        opts = ProvisionOptions(replicas=3 if self.nodes >= 3 else 1)
        try:
            await _wait_jetstream(nc, replicas=opts.replicas)
            for device in self.devices:
                known = first.devices.get(device)
                seed_path = self.store / SEED_DIR / f"{device}{SEED_SUFFIX}"
                if self.nkeys or (known is not None and known.nkey is not None):
                    if known is None or known.nkey is None or not seed_path.exists():
                        seed, public = await asyncio.to_thread(generate_nkey)
                        await asyncio.to_thread(write_seed, seed_path, seed)
                        for srv in self.servers:
                            await srv.add_device(device, nkey=public)
                    self.seed_paths[device] = seed_path
                else:
                    cred = await first.add_device(device)
                    for srv in self.servers[1:]:  # the same login on every node
                        await srv.add_device(device, cred.password, auth="password")
                await provision_device(nc.jetstream(timeout=10), device, opts)
        finally:
            await nc.close()
        await asyncio.to_thread(save_logins, creds_path, list(first.devices.values()))
        self.hub_file.write_text(json.dumps({
            "client_url": first.client_url, "leaf_url": first.leaf_url,
            "client_urls": [s.client_url for s in self.servers], "leaf_urls": self.leaf_urls(),
        }))
        self.hub_file.chmod(0o600)
        if self.repair_interval_s:
            self._repair_nc = await nats.connect(servers=[s.client_url for s in self.servers],
                                                 max_reconnect_attempts=-1, reconnect_time_wait=0.5)
            self.repairer = Repairer(self._repair_nc.jetstream(timeout=10), interval_s=self.repair_interval_s)
            self.repairer.start()
            self.watch = SourceWatch(self._repair_nc.jetstream(timeout=10))
            self.watch.start()
        log.info("hub running: %d node(s), clients %s, leaf nodes %s, store %s", len(self.servers),
                 ", ".join(s.url for s in self.servers), ", ".join(self.leaf_urls()), self.store)

    def leaf_urls(self) -> list[str]:
        return [u for u in (s.leaf_url for s in self.servers) if u]

    async def stop(self) -> None:
        for keeper in (self.repairer, self.watch):
            if keeper is not None:
                await keeper.stop()
        self.repairer = self.watch = None
        if self._repair_nc is not None:
            await self._repair_nc.close()
            self._repair_nc = None
        for srv in reversed(self.servers):
            await srv.stop()
        self.servers = []
        self.hub_file.unlink(missing_ok=True)

    def device_table(self, device: str) -> str:
        """The ``[hub]`` table of a device's config: every node's leaf URL and its login."""
        if self.server is None:
            raise EdgeError("the hub is not running; start() it first")
        urls = self.leaf_urls()
        lines = [f"# device {device}: add to its config", "[hub]", f'url = "{urls[0]}"']
        if len(urls) > 1:
            lines.append("urls = [" + ", ".join(f'"{u}"' for u in urls[1:]) + "]  # the other nodes: failover")
        if device in self.seed_paths:
            lines.append(f'nkey_seed = "{self.seed_paths[device]}"  # copy to the device, keep mode 0600')
        else:
            lines += [f'user = "{device}"', f'password = "{self.server.devices[device].password}"']
        if self.leaf_tls is not None:
            lines.append('tls_ca = "hub-ca.pem"  # the CA that signed the hub certificate')
        return "\n".join(lines)


async def _wait_jetstream(nc: Any, timeout: float = 30.0, *, replicas: int = 1) -> None:
    """Until the hub's JetStream answers and, in a cluster, can place a stream of ``replicas``
    (the meta leader is elected first; the other peers join its group a moment later, and a stream
    created before they have is refused with "no suitable peers for placement")."""
    from nats.js.api import StorageType, StreamConfig

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    probe = StreamConfig(name="EDGE_PLACEMENT_PROBE", subjects=[], num_replicas=replicas,
                         storage=StorageType.MEMORY, max_msgs=1)
    while True:
        try:
            js = nc.jetstream()
            await js.account_info()
            if replicas > 1:
                await js.add_stream(probe)
                await js.delete_stream(probe.name)
            return
        except Exception as err:
            if loop.time() > deadline:
                raise EdgeError(f"the hub's JetStream did not become ready: {err!r}") from None
            await asyncio.sleep(0.2)
