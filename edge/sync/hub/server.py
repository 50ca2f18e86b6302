"""The hub side of the link: per-device leaf logins in per-device accounts, and an embedded hub.

Every device's leaf connection authenticates as its own user in its own account ``DEV_<dev>``;
the hub's streams live in the ``CLOUD`` account, and the two share exactly what the link needs
(:mod:`edge.sync.hub.accounts`). Device A therefore cannot publish into B's subjects, receive B's
commands or flow control, read B's streams on the hub, or displace B's leaf connection.

:class:`HubServer` is a :class:`~edge.nats.server.NatsServer` configured as a hub: JetStream domain
``hub``, a leaf-node listener, the ``cloud`` user for back-end services and tools, and the
per-device accounts.

Devices log in with a password (default) or an **nkey**: an Ed25519 key pair whose public key
(``U...``) the hub keeps in its config and whose seed (``SU...``) only the device holds, in a file
of mode 0600 (:func:`generate_nkey`, :func:`write_seed`, ``HubServer.add_device(dev,
auth="nkey")``). The server challenges the device to sign a nonce, so nothing secret is stored on
the hub or crosses the link. Key generation needs the ``nkeys`` package (imported only when a
key is generated).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from edge.errors import ConfigError
from edge.nats.server import ClusterOptions, NatsServer, ServerOptions, TlsFiles
from edge.nats import subjects as naming
from edge.sync.device.leaf import SEED_FILE_MODE, USER_SEED_RE
from edge.sync.hub.accounts import render_accounts

CLOUD_USER = "cloud"
RELOADED_LINE = b"Reloaded server configuration"
RELOADS = 2
RELOAD_TIMEOUT_S = 5.0
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


class HubServer(NatsServer):
    """An embedded hub for development and tests (and small single-server deployments).

    Back-end code uses :attr:`client_url` (the ``cloud`` user); devices use their
    :class:`DeviceCredential` on the leaf port, each in its own account. ``secure=False`` lets
    clients without a login in as ``cloud`` too (``no_auth_user``; loopback experiments only).
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
        cluster: ClusterOptions | None = None,
        tls: TlsFiles | None = None,
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
            cluster=cluster,
            tls=tls,
        )
        super().__init__(opts, binary=binary)
        self._render_auth()

    def _render_auth(self) -> None:
        # one account per device (edge.sync.hub.accounts), also without ``secure``
        self.options.accounts = render_accounts(list(self.devices.values()), self.cloud_password)
        if not self.secure:
            self.options.accounts += f"\nno_auth_user: {CLOUD_USER}"

    async def reload(self) -> None:
        """Re-render the config and reload it, twice: nats-server 2.15 wires a new device
        account's imports of the cloud account's JetStream API only on the reload after the one
        that created the account (the first one leaves them without responders)."""
        for _ in range(RELOADS):
            before = await asyncio.to_thread(self._log_count, RELOADED_LINE)
            await super().reload()
            deadline = time.monotonic() + RELOAD_TIMEOUT_S
            while self.running and time.monotonic() < deadline:
                if await asyncio.to_thread(self._log_count, RELOADED_LINE) > before:
                    break
                await asyncio.sleep(0.02)

    def _log_count(self, needle: bytes) -> int:
        try:
            return self.log_path.read_bytes().count(needle)
        except OSError:
            return 0

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
