"""The hub side of the link: per-device leaf credentials and permissions, and an embedded hub.

Every device's leaf connection authenticates as its own user. Its permissions are written from
the leaf's point of view (``publish`` = what the device may send into the hub, ``subscribe`` =
what the hub may send down to it) and allow only the device's own subjects, the JetStream API of
its own domain (for the hub's sourcing consumers), and the hub API calls needed to source its own
command stream. Device A therefore cannot publish ``edge.B.*``, receive B's commands, or read B's
streams on the hub.

:class:`HubServer` is a :class:`~edge.nats.server.NatsServer` configured as a hub: JetStream domain
``hub``, a leaf-node listener, client users (``cloud`` for back-end services and tools) and the
per-device leaf users.

Devices log in with a password (default) or an **nkey**: an Ed25519 key pair whose public key
(``U...``) the hub keeps in its config and whose seed (``SU...``) only the device holds, in a file
of mode 0600 (:func:`generate_nkey`, :func:`write_seed`, ``HubServer.add_device(dev,
auth="nkey")``). The server challenges the device to sign a nonce, so nothing secret is stored on
the hub or crosses the link. Both kinds of users get the same :func:`device_permissions`. Key
generation needs the ``nkeys`` package (imported only when a key is generated).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from edge.errors import ConfigError
from edge.nats.server import NatsServer, ServerOptions, TlsFiles
from edge.nats import subjects as naming
from edge.sync.device.leaf import SEED_FILE_MODE, USER_SEED_RE

CLOUD_USER = "cloud"
NKEY_SEED_BYTES = 32  # Ed25519 seed length

AuthKind = Literal["password", "nkey"]

# Public user nkey: "U" + 55 base32 characters.
_USER_PUBLIC_RE = re.compile(r"U[A-Z2-7]{55}")


@dataclass
class DeviceCredential:
    """A device's leaf login on the hub.

    With ``nkey`` (the device's public user nkey, ``U...``) the device authenticates by signing
    the server's nonce with its seed and ``password`` is not used; otherwise it logs in as user
    ``device`` with ``password``. ``seed`` is set only on the credential :meth:`HubServer.add_device`
    returns right after generating a key pair (hand it to the device); the hub never keeps it.
    """

    device: str
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    nkey: str | None = None
    seed: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        naming.check_device_id(self.device)
        if self.nkey is not None and not _USER_PUBLIC_RE.fullmatch(self.nkey):
            raise ConfigError(f"device {self.device}: not a public user nkey: {self.nkey!r}", key="nkey")

    @property
    def auth(self) -> AuthKind:
        return "nkey" if self.nkey is not None else "password"


def generate_nkey() -> tuple[str, str]:
    """A new user nkey pair as ``(seed, public_key)`` (``SU...``, ``U...``). Needs ``nkeys``."""
    try:
        import nkeys  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError(
            "nkey authentication needs the 'nkeys' package (pip install nkeys)", key="auth"
        ) from None
    seed: bytes = nkeys.encode_seed(os.urandom(NKEY_SEED_BYTES), nkeys.PREFIX_BYTE_USER)
    public: bytes = nkeys.from_seed(bytearray(seed)).public_key
    return seed.decode(), public.decode()


def write_seed(path: Path, seed: str) -> Path:
    """Write an nkey seed file readable by its owner only (mode 0600, also when it existed)."""
    if not USER_SEED_RE.fullmatch(seed):
        raise ConfigError("not a user nkey seed", key="nkey_seed", file=str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SEED_FILE_MODE)
    try:
        os.fchmod(fd, SEED_FILE_MODE)
        os.write(fd, (seed + "\n").encode())
    finally:
        os.close(fd)
    return path


def device_permissions(device: str, hub_domain: str = naming.HUB_DOMAIN) -> dict[str, object]:
    """Leaf-perspective permissions that confine ``device`` to its own subjects and streams."""
    d = naming.check_device_id(device)
    hub_api = naming.js_api(hub_domain)
    cmd = naming.hub_stream(naming.CMD_STREAM, d)
    return _with_ota({
        "publish": {
            "allow": [
                f"{naming.ROOT}.{d}.>",  # its own subjects and its sourcing deliveries
                "$JSC.R.>",  # answers to the hub's consumer requests
                f"{hub_api}.CONSUMER.CREATE.{cmd}",  # sourcing its command stream from the hub
                f"{hub_api}.CONSUMER.CREATE.{cmd}.>",
                f"{hub_api}.CONSUMER.DELETE.{cmd}.>",
                f"{hub_api}.CONSUMER.RESET.{cmd}.>",  # attach to its durable sourcing consumer
                f"{hub_api}.CONSUMER.INFO.{cmd}.>",
                f"{hub_api}.STREAM.INFO.{cmd}",
                f"$JS.FC.{cmd}.>",  # flow-control replies for that consumer
            ]
        },
        "subscribe": {
            "allow": [
                f"{naming.ROOT}.{d}.>",
                f"{naming.js_api(d)}.>",  # the hub calls the device's JetStream API
                "$JSC.R.>",  # answers to its own requests to the hub API
                f"$JS.FC.{naming.TELE_STREAM}.>",  # flow control of the hub's sourcing consumers
                f"$JS.FC.{naming.EVT_STREAM}.>",
                f"$JS.FC.KV_{naming.STATE_BUCKET}.>",
            ]
        },
    }, d, hub_domain)


def _with_ota(perms: dict[str, Any], device: str, hub_domain: str) -> dict[str, Any]:
    # [ota] a device reads the fleet's signed updates and its desired state, writes its report
    # (edge.ota.hub.ota_permissions, docs/ota.md)
    from edge.ota.hub import ota_permissions

    extra = ota_permissions(device, hub_domain)
    perms["publish"]["allow"] += extra["publish"]
    perms["subscribe"]["allow"] += extra["subscribe"]
    return perms


def render_users(
    devices: list[DeviceCredential], cloud_password: str, hub_domain: str = naming.HUB_DOMAIN
) -> str:
    """The body of the hub's ``authorization { }`` block: one cloud user + one user a device."""
    users: list[dict[str, object]] = [{"user": CLOUD_USER, "password": cloud_password}]
    for cred in devices:
        login: dict[str, object] = (
            {"nkey": cred.nkey} if cred.nkey is not None else {"user": cred.device, "password": cred.password}
        )
        users.append({**login, "permissions": device_permissions(cred.device, hub_domain)})
    return "users: " + json.dumps(users)


class HubServer(NatsServer):
    """An embedded hub for development and tests (and small single-server deployments).

    With ``secure=True`` (default) clients must log in: back-end code uses :attr:`client_url`
    (the ``cloud`` user); devices use their :class:`DeviceCredential` on the leaf port.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        devices: list[DeviceCredential] | None = None,
        secure: bool = True,
        cloud_password: str | None = None,
        domain: str = naming.HUB_DOMAIN,
        host: str = "127.0.0.1",
        port: int = 0,
        leaf_host: str = "127.0.0.1",
        leaf_port: int = 0,
        leaf_tls: TlsFiles | None = None,
        monitor_port: int | None = None,
        max_store_bytes: int | None = None,
        server_name: str = "hub",
        leaf_advertise: bool = False,
        binary: str | None = None,
    ) -> None:
        self.devices: dict[str, DeviceCredential] = {c.device: c for c in devices or []}
        self.secure = secure
        self.cloud_password = cloud_password or secrets.token_urlsafe(18)
        self.domain = domain
        opts = ServerOptions(
            store_dir=Path(store_dir),
            host=host,
            port=port,
            server_name=server_name,
            jetstream_domain=domain,
            leaf_listen=(leaf_host, leaf_port),
            leaf_tls=leaf_tls,
            monitor_port=monitor_port,
            max_store_bytes=max_store_bytes,
            leaf_advertise=leaf_advertise,
        )
        super().__init__(opts, binary=binary)
        self._render_auth()

    def _render_auth(self) -> None:
        if self.secure:
            self.options.authorization = render_users(
                list(self.devices.values()), self.cloud_password, self.domain
            )

    @property
    def client_url(self) -> str:
        """Client URL for back-end services, with the cloud user's login when secure."""
        if not self.secure:
            return self.url
        return f"nats://{CLOUD_USER}:{quote(self.cloud_password, safe='')}@{self.options.host}:{self.port}"

    async def add_device(
        self,
        device: str,
        password: str | None = None,
        *,
        auth: AuthKind | None = None,
        nkey: str | None = None,
    ) -> DeviceCredential:
        """Register (or return) a device's leaf login; reloads a running server's config.

        ``auth="password"``: a generated (or the given) password. ``auth="nkey"``: the given
        public ``nkey``, or a new key pair whose seed is returned in ``.seed`` (only this once:
        the hub keeps the public key only). ``auth=None`` keeps a registered device's kind of
        login (password for a new one). A device already registered with that kind of login
        (and no new password/key given) is returned unchanged, without a seed.
        """
        cred = self.devices.get(device)
        if nkey is not None:
            auth = "nkey"
        elif auth is None:
            auth = "password" if password is not None or cred is None else cred.auth
        changed = (
            cred is None
            or cred.auth != auth
            or (password is not None and cred.password != password)
            or (nkey is not None and cred.nkey != nkey)
        )
        if not changed:
            assert cred is not None
            return cred
        seed = None
        if auth == "nkey":
            if nkey is None:
                seed, nkey = generate_nkey()
            cred = DeviceCredential(device, nkey=nkey)
        else:
            cred = DeviceCredential(device, password) if password else DeviceCredential(device)
        self.devices[device] = cred
        self._render_auth()
        if self.running:
            await self.reload()
        return dataclasses.replace(cred, seed=seed) if seed else cred
