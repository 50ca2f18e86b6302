"""Bring your own hub: a complete nats-server config for a fleet, kept in one JSON file.

:class:`FleetConfig` holds the hub's nodes (one, or three for a JetStream cluster), the listen
addresses, TLS files, the ``cloud`` password and every device's login. :meth:`FleetConfig.write`
renders, for every node, ``<node>.conf``: server name, client and leaf-node listeners on the
addresses given, JetStream with domain ``hub``, the per-device accounts
(:mod:`edge.sync.hub.accounts`), TLS, and the ``cluster`` block with routes to every node. A
stock ``nats-server -c <node>.conf`` runs it. Adding a device (:meth:`FleetConfig.add_device`,
``edge cloud add-device``) rewrites the files; a running node applies them with a reload
(:func:`reload_node`: SIGHUP to the pid in its ``pid_file``, twice, see docs/sync.md), no
restart.

Example
    cfg = FleetConfig.create(Path("/etc/edge-hub"), nodes=[HubNode("hub-a", host="0.0.0.0")])
    cfg.add_device("drone7")
    cfg.write()                      # /etc/edge-hub/hub-a.conf, fleet.json (mode 0600)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ConfigError, EdgeError
from edge.nats import subjects as naming
from edge.nats.server import ClusterOptions, ServerOptions, TlsFiles, render_config
from edge.sync.hub.accounts import render_accounts
from edge.sync.hub.server import DeviceCredential, generate_nkey, write_seed

log = logging.getLogger("edge.sync.hub")

FLEET_FILE = "fleet.json"
SEED_DIR = "devices"
DEFAULT_CLUSTER_NAME = "edge-hub"
RELOADS = 2
RELOAD_GAP_S = 0.5


@dataclass
class HubNode:
    """One hub server: where it listens, what the others and the devices dial (``advertise``,
    default ``host``), and its JetStream store."""

    name: str
    host: str = "0.0.0.0"
    port: int = 4222
    leaf_port: int = 7422
    cluster_port: int = 6222
    advertise: str | None = None
    store_dir: str | None = None  # default <config dir>/store-<name>

    def __post_init__(self) -> None:
        naming.check_id(self.name, "hub node name", key="name")
        for what, port in (("port", self.port), ("leaf_port", self.leaf_port), ("cluster_port", self.cluster_port)):
            if not 0 < port < 65536:
                raise ConfigError(f"hub node {self.name}: {what} {port} is not a TCP port", key=what)

    @property
    def address(self) -> str:
        host = self.advertise or self.host
        return "127.0.0.1" if host in ("0.0.0.0", "::") else host


@dataclass
class FleetConfig:
    """A fleet's hub: nodes, TLS, logins. Persisted as ``fleet.json`` (mode 0600) in ``directory``."""

    directory: Path
    nodes: list[HubNode]
    cloud_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    devices: dict[str, dict[str, str]] = field(default_factory=dict)  # device -> {"password"|"nkey": ...}
    cluster_name: str = DEFAULT_CLUSTER_NAME
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None  # set: devices (leaf) and cluster routes must present certificates
    domain: str = naming.HUB_DOMAIN

    # -- persistence ------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: Path, nodes: list[HubNode], **kw: Any) -> FleetConfig:
        if not nodes:
            raise ConfigError("a hub needs at least one node", key="nodes")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ConfigError(f"hub node names must differ: {names}", key="nodes")
        if len(nodes) == 2:
            raise ConfigError("a JetStream cluster needs 1 or 3+ nodes (2 cannot keep a quorum)", key="nodes")
        if bool(kw.get("tls_cert")) != bool(kw.get("tls_key")):
            raise ConfigError("give both tls_cert and tls_key", key="tls_cert")
        return cls(Path(directory), nodes, **kw)

    @property
    def path(self) -> Path:
        return self.directory / FLEET_FILE

    @classmethod
    def load(cls, directory: Path) -> FleetConfig:
        path = Path(directory) / FLEET_FILE
        try:
            raw = json.loads(path.read_text())
            nodes = [HubNode(**n) for n in raw.pop("nodes")]
            return cls(Path(directory), nodes, **raw)
        except FileNotFoundError:
            raise ConfigError("no fleet config here; write one with `edge cloud config`", file=str(path)) from None
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"not a fleet config: {err}", file=str(path)) from None

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = dataclasses.asdict(self)
        data.pop("directory")
        _write_private(self.path, json.dumps(data, indent=2))

    # -- devices ----------------------------------------------------------------------------
    def credentials(self) -> list[DeviceCredential]:
        return [
            DeviceCredential(d, nkey=v["nkey"]) if "nkey" in v else DeviceCredential(d, v["password"])
            for d, v in sorted(self.devices.items())
        ]

    def seed_path(self, device: str) -> Path:
        return self.directory / SEED_DIR / f"{device}.nk"

    def add_device(self, device: str, *, nkey: bool = False, public_key: str | None = None) -> DeviceCredential:
        """Register ``device`` (idempotent for the same kind of login). With ``nkey`` a key pair
        is made and its seed written to ``devices/<device>.nk`` (0600); ``public_key`` registers a
        key made elsewhere."""
        d = naming.check_device_id(device)
        known = self.devices.get(d)
        if public_key is not None:
            cred = DeviceCredential(d, nkey=public_key)
        elif nkey:
            if known and "nkey" in known and self.seed_path(d).exists():
                return DeviceCredential(d, nkey=known["nkey"])
            seed, public = generate_nkey()
            write_seed(self.seed_path(d), seed)
            cred = DeviceCredential(d, nkey=public)
        elif known is not None:
            return DeviceCredential(d, nkey=known["nkey"]) if "nkey" in known else DeviceCredential(d, known["password"])
        else:
            cred = DeviceCredential(d)
        self.devices[d] = {"nkey": cred.nkey} if cred.nkey else {"password": cred.password}
        return cred

    def remove_device(self, device: str) -> bool:
        return self.devices.pop(device, None) is not None

    # -- rendering --------------------------------------------------------------------------
    def _tls(self, verify: bool) -> TlsFiles | None:
        if not self.tls_cert:
            return None
        return TlsFiles(cert=Path(self.tls_cert), key=Path(self.tls_key or ""),
                        ca=Path(self.tls_ca) if self.tls_ca else None, verify=verify and bool(self.tls_ca))

    def server_options(self, node: HubNode) -> ServerOptions:
        cluster = None
        if len(self.nodes) > 1:
            routes = [f"nats-route://{n.address}:{n.cluster_port}" for n in self.nodes if n.name != node.name]
            cluster = ClusterOptions(name=self.cluster_name, host=node.host, port=node.cluster_port, routes=routes,
                                     tls=self._tls(verify=True),
                                     advertise=f"{node.advertise}:{node.cluster_port}" if node.advertise else None)
        return ServerOptions(
            store_dir=Path(node.store_dir or self.directory / f"store-{node.name}"),
            host=node.host,
            port=node.port,
            server_name=node.name,
            jetstream_domain=self.domain,
            leaf_listen=(node.host, node.leaf_port),
            leaf_tls=self._tls(verify=True),
            leaf_advertise=False,
            tls=self._tls(verify=False),
            cluster=cluster,
            accounts=render_accounts(self.credentials(), self.cloud_password),
        )

    def render(self, node: HubNode) -> str:
        opts = self.server_options(node)
        return render_config(opts, port=node.port, leaf_port=node.leaf_port, monitor_port=None,
                             cluster_port=node.cluster_port if opts.cluster else None)

    def config_path(self, node: HubNode) -> Path:
        return self.directory / f"{node.name}.conf"

    def write(self) -> list[Path]:
        """``fleet.json`` and one ``<node>.conf`` per node (mode 0600: they hold logins)."""
        self.save()
        out = []
        for node in self.nodes:
            Path(self.server_options(node).store_dir).mkdir(parents=True, exist_ok=True)
            path = self.config_path(node)
            _write_private(path, self.render(node))
            out.append(path)
        return out

    # -- what clients and devices need ------------------------------------------------------
    def client_urls(self) -> list[str]:
        """One URL per node, with the ``cloud`` login (``nats.connect(servers=...)``)."""
        scheme = "tls" if self.tls_cert else "nats"
        from urllib.parse import quote

        login = f"cloud:{quote(self.cloud_password, safe='')}@"
        return [f"{scheme}://{login}{n.address}:{n.port}" for n in self.nodes]

    def leaf_urls(self) -> list[str]:
        scheme = "nats-leaf"
        return [f"{scheme}://{n.address}:{n.leaf_port}" for n in self.nodes]

    def device_table(self, device: str) -> str:
        """The ``[hub]`` table of a device's config (every node listed: the leaf fails over)."""
        v = self.devices.get(device)
        if v is None:
            raise EdgeError(f"device {device} is not in the fleet config", device=device)
        urls = self.leaf_urls()
        lines = [f"# device {device}: add to its config", "[hub]", f'url = "{urls[0]}"']
        if len(urls) > 1:
            lines.append("urls = [" + ", ".join(f'"{u}"' for u in urls[1:]) + "]")
        if "nkey" in v:
            lines.append(f'nkey_seed = "{self.seed_path(device)}"  # copy to the device, keep mode 0600')
        else:
            lines += [f'user = "{device}"', f'password = "{v["password"]}"']
        if self.tls_cert:
            lines.append('tls_ca = "hub-ca.pem"  # the CA that signed the hub certificate')
        return "\n".join(lines)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fd, 0o600)
        fh.write(text)
    tmp.replace(path)


async def reload_node(cfg: FleetConfig, node: HubNode) -> bool:
    """Reload a running node from its ``pid_file`` (SIGHUP, twice: a new account's imports are
    wired on the second reload). False if the node is not running here."""
    pid_file = Path(cfg.server_options(node).store_dir) / "nats.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    for i in range(RELOADS):
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return False
        if i + 1 < RELOADS:
            await asyncio.sleep(RELOAD_GAP_S)
    return True
