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
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from edge.errors import EdgeError
from edge.sync.hub.fleet import provision_device
from edge.sync.hub.server import DeviceCredential, HubServer, generate_nkey, write_seed

log = logging.getLogger("edge.sync.hub")

HUB_FILE = "hub.json"
CREDS_FILE = "devices.json"
SEED_DIR = "devices"
SEED_SUFFIX = ".nk"
DEFAULT_CLIENT_PORT = 4222
DEFAULT_LEAF_PORT = 7422


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
    """A hub for development: one server, logins kept in ``store``, devices provisioned."""

    def __init__(self, store: Path, *, devices: Sequence[str] = (), secure: bool = True, nkeys: bool = False,
                 port: int = DEFAULT_CLIENT_PORT, leaf_port: int = DEFAULT_LEAF_PORT) -> None:
        self.store = store
        self.devices = list(devices)
        self.secure = secure
        self.nkeys = nkeys
        self.port = port
        self.leaf_port = leaf_port
        self.seed_paths: dict[str, Path] = {}
        self.server: HubServer | None = None

    @property
    def hub_file(self) -> Path:
        return self.store / HUB_FILE

    async def start(self) -> None:
        import nats

        self.store.mkdir(parents=True, exist_ok=True)
        creds_path = self.store / CREDS_FILE
        hub = HubServer(self.store / "nats", devices=load_logins(creds_path), secure=self.secure,
                        port=self.port, leaf_port=self.leaf_port)
        await hub.start(supervise=True)
        self.server = hub
        nc = await nats.connect(hub.client_url)
        try:
            for device in self.devices:
                known = hub.devices.get(device)
                seed_path = self.store / SEED_DIR / f"{device}{SEED_SUFFIX}"
                if self.nkeys or (known is not None and known.nkey is not None):
                    if known is None or known.nkey is None or not seed_path.exists():
                        seed, public = await asyncio.to_thread(generate_nkey)
                        await asyncio.to_thread(write_seed, seed_path, seed)
                        await hub.add_device(device, nkey=public)
                    self.seed_paths[device] = seed_path
                else:
                    await hub.add_device(device)
                await provision_device(nc.jetstream(), device)
        finally:
            await nc.close()
        await asyncio.to_thread(save_logins, creds_path, list(hub.devices.values()))
        self.hub_file.write_text(json.dumps({"client_url": hub.client_url, "leaf_url": hub.leaf_url}))
        self.hub_file.chmod(0o600)
        log.info("hub running: clients %s, leaf nodes %s, store %s", hub.url, hub.leaf_url, self.store)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
        self.hub_file.unlink(missing_ok=True)

    def device_table(self, device: str) -> str:
        """The ``[hub]`` table of a device's config (with its login unless the hub is insecure)."""
        if self.server is None:
            raise EdgeError("the hub is not running; start() it first")
        lines = [f"# device {device}: add to its config", "[hub]", f'url = "{self.server.leaf_url}"']
        if not self.secure:
            pass
        elif device in self.seed_paths:
            lines.append(f'nkey_seed = "{self.seed_paths[device]}"  # copy to the device, keep mode 0600')
        else:
            lines += [f'user = "{device}"', f'password = "{self.server.devices[device].password}"']
        return "\n".join(lines)
