"""Device-side server options: a leaf node of the hub with its own JetStream domain.

The device's server name and JetStream domain are the device id, fixed across restarts (a
changing server name confuses the hub about which leaf it talks to). Without a hub the same
server runs standalone and everything still lands in the local streams.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edge.errors import ConfigError
from edge.nats.server import LeafRemote, ServerOptions, TlsFiles
from edge.nats import subjects as naming

SEED_FILE_MODE = 0o600  # an nkey seed file must be readable by its owner only
USER_SEED_RE = re.compile(r"SU[A-Z2-7]{56}")  # a user nkey seed: "SU" + 56 base32 characters


def read_seed(path: Path) -> str:
    """Read and check an nkey seed file: a user seed (``SU...``), not readable by group/others."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text().strip()
    except OSError as err:
        raise ConfigError(f"cannot read nkey seed: {err}", key="nkey_seed", file=str(path)) from None
    if mode & 0o077:
        raise ConfigError(
            f"nkey seed file is readable by group or others (mode {mode:o}); chmod 600 it",
            key="nkey_seed",
            file=str(path),
        )
    if not USER_SEED_RE.fullmatch(text):
        raise ConfigError("file does not hold a user nkey seed (SU...)", key="nkey_seed", file=str(path))
    return text


@dataclass
class HubLink:
    """How to reach the hub. Give ``user``/``password`` (per-device login), or a ``credentials``
    (.creds) file, or an ``nkey_seed`` file. ``tls_ca`` verifies the hub's certificate; use a
    ``nats-leaf+tls://`` or plain ``nats-leaf://`` URL with ``tls_ca`` set to require TLS.

    ``nkey_seed`` is a file (mode 0600) holding the device's user nkey seed; the hub knows only
    the public key. :meth:`remote` checks it (:func:`read_seed`) and raises ``ConfigError`` for a
    missing, malformed or group/world-readable file, or when more than one login is given."""

    url: str
    user: str | None = None
    password: str | None = None
    credentials: Path | None = None
    # the other nodes of a clustered hub: the leaf connects to one and fails over to the next
    urls: list[str] = field(default_factory=list)
    nkey_seed: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    hub_domain: str = naming.HUB_DOMAIN
    # S2 compression of the leaf link; "s2_auto" picks a level from the measured RTT
    # (off on fast links, stronger on slow ones). "s2_fast".."s2_best" force a level.
    compression: str | None = "s2_auto"

    def remote(self) -> LeafRemote:
        logins = [self.user is not None, self.credentials is not None, self.nkey_seed is not None]
        if sum(logins) > 1:
            raise ConfigError("give only one of user/password, credentials, nkey_seed", key="hub")
        if self.nkey_seed is not None:
            read_seed(self.nkey_seed)
        tls = None
        if self.tls_ca or self.tls_cert:
            tls = TlsFiles(ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key)
        return LeafRemote(
            url=self.url,
            urls=list(self.urls),
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
    max_mem_bytes: int | None = None,
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
        max_mem_bytes=max_mem_bytes,
        sync_interval=sync_interval,
        leaf=_device_remote(device, hub) if hub else None,
        monitor_port=monitor_port,
    )


def _device_remote(device: str, hub: HubLink) -> LeafRemote:
    """The leaf remote of a device. Commands travel only through the command streams: the hub's
    ``CMD_<dev>`` is sourced into the device's ``CMD`` and the uplink layer (edge.sync.device.layer)
    plays them onto the device's local command subjects. The device therefore neither exports
    them (the hub's command stream would store them again) nor imports them (a plain publish on
    the hub would reach the device's command router a second time, next to the stream's copy)."""
    remote = hub.remote()
    remote.deny_exports = [*(remote.deny_exports or []), naming.command(device)]
    remote.deny_imports = [*(remote.deny_imports or []), naming.command(device)]
    return remote
