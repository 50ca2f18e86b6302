"""Device-side server options: a leaf node of the hub with its own JetStream domain.

The device's server name and JetStream domain are the device id, fixed across restarts (a
changing server name confuses the hub about which leaf it talks to). Without a hub the same
server runs standalone and everything still lands in the local streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.natsd.server import LeafRemote, ServerOptions, TlsFiles
from edge.sync import naming


@dataclass
class HubLink:
    """How to reach the hub. Give ``user``/``password`` (per-device login), or a ``credentials``
    (.creds) file, or an ``nkey_seed`` file. ``tls_ca`` verifies the hub's certificate; use a
    ``nats-leaf+tls://`` or plain ``nats-leaf://`` URL with ``tls_ca`` set to require TLS."""

    url: str
    user: str | None = None
    password: str | None = None
    credentials: Path | None = None
    nkey_seed: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    hub_domain: str = naming.HUB_DOMAIN
    # S2 compression of the leaf link; "s2_auto" picks a level from the measured RTT
    # (off on fast links, stronger on slow ones). "s2_fast".."s2_best" force a level.
    compression: str | None = "s2_auto"

    def remote(self) -> LeafRemote:
        tls = None
        if self.tls_ca or self.tls_cert:
            tls = TlsFiles(ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key)
        return LeafRemote(
            url=self.url,
            user=self.user,
            password=self.password,
            credentials=self.credentials,
            nkey_seed=self.nkey_seed,
            tls=tls,
            compression=self.compression,
        )


def device_server_options(
    device: str,
    store_dir: Path,
    hub: HubLink | None = None,
    *,
    port: int = 0,
    max_store_bytes: int | None = None,
    sync_interval: str | None = None,
    monitor_port: int | None = None,
) -> ServerOptions:
    """ServerOptions for a device: server name and domain = device id; leaf of ``hub`` if given.

    nats-server writes every message to the OS before acking it, so a crash or kill -9 of the
    server loses nothing acknowledged (tested). ``sync_interval`` controls fsync to the medium:
    the server default (``None``, every 2 minutes) can lose acknowledged messages on *power loss*;
    ``"always"`` fsyncs before each ack (power-safe, but ~10x fewer msg/s; on SD cards far fewer).
    """
    naming.check_device_id(device)
    return ServerOptions(
        store_dir=Path(store_dir),
        port=port,
        server_name=device,
        jetstream_domain=device,
        max_store_bytes=max_store_bytes,
        sync_interval=sync_interval,
        leaf=_device_remote(device, hub) if hub else None,
        monitor_port=monitor_port,
    )


def _device_remote(device: str, hub: HubLink) -> LeafRemote:
    """The leaf remote of a device. Commands are played onto the device's local command subjects
    (edge.uplink); they must never travel back up the link, where the hub's command stream would
    store them again, so the device does not export them."""
    remote = hub.remote()
    remote.deny_exports = [*(remote.deny_exports or []), naming.cmd_subject(device)]
    return remote
