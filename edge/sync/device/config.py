"""``[hub]`` and ``[sync]`` config tables -> :class:`~edge.sync.device.leaf.HubLink` and
:class:`SyncConfig`.

::

    [hub]                                  # the embedded nats-server becomes a leaf of the hub
    url = "nats-leaf://hub.example:7422"
    nkey_seed = "drone7.nk"                # paths are relative to the config file
    [sync]
    tele_max_bytes = 67108864              # device stream limits, bytes and seconds
    record = false                         # also sync the replay records (REC), ~22 KiB/s

Read with the config reader (:class:`edge.config.table.Table`) when the config loads; errors
name the key (``hub.<key>``, ``sync.<key>``) and the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edge.config.table import Table
from edge.nats import subjects as naming
from edge.sync.device.leaf import HubLink
from edge.sync.device.streams import (
    DEFAULT_CMD_MAX_AGE_S,
    DEFAULT_DUPLICATE_WINDOW_S,
    DEFAULT_EVT_MAX_AGE_S,
    DEFAULT_EVT_MAX_BYTES,
    DEFAULT_TELE_MAX_AGE_S,
    DEFAULT_TELE_MAX_BYTES,
    DeviceStreamConfig,
)

HUB_PATH_KEYS = ("credentials", "nkey_seed", "tls_ca", "tls_cert", "tls_key")  # relative to the file
DEFAULT_STATE_BUCKET = naming.STATE_BUCKET  # the only bucket the sync layer mirrors


@dataclass(frozen=True)
class SyncConfig:
    """The ``[sync]`` table: device stream limits. Sizes in bytes, ages in seconds (0 = unlimited)."""

    tele_max_bytes: int = DEFAULT_TELE_MAX_BYTES
    tele_max_age_s: float = DEFAULT_TELE_MAX_AGE_S
    evt_max_bytes: int = DEFAULT_EVT_MAX_BYTES
    evt_max_age_s: float = DEFAULT_EVT_MAX_AGE_S
    cmd_max_age_s: float = DEFAULT_CMD_MAX_AGE_S
    duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S
    record: bool = False  # the replay records (REC) sync to the hub too (opt-in: ~22 KiB/s)

    def streams(self, device: str, *, bucket: str, hub: bool) -> DeviceStreamConfig:
        """The device's stream config: these limits, CMD when the device has a hub, the state
        bucket mirrored only when it is the default one."""
        return DeviceStreamConfig(
            device=device, **dataclasses.asdict(self),
            hub_domain=naming.HUB_DOMAIN if hub else None,
            state_bucket=bucket == DEFAULT_STATE_BUCKET,
        )


def read_hub(t: Table) -> HubLink | None:
    """``[hub]`` -> HubLink (None when the table is absent or empty)."""
    if not t.data:
        return None
    url = t.text("url", None)
    if not url:
        raise t.error("url", "the hub needs a url (nats-leaf://host:7422)")
    d = HubLink(url)
    hub = HubLink(
        url=url,
        urls=t.strings("urls", []),
        user=t.text("user", None),
        password=t.text("password", None),
        credentials=t.path("credentials", None),
        nkey_seed=t.path("nkey_seed", None),
        tls_ca=t.path("tls_ca", None),
        tls_cert=t.path("tls_cert", None),
        tls_key=t.path("tls_key", None),
        hub_domain=t.text("hub_domain", d.hub_domain),
        compression=t.text("compression", d.compression),
    )
    t.finish()
    logins = [k for k in ("user", "credentials", "nkey_seed") if getattr(hub, k) is not None]
    if len(logins) > 1:
        raise t.error(logins[1], f"give only one of user/password, credentials, nkey_seed (got {', '.join(logins)})")
    return hub


def read_sync(t: Table) -> SyncConfig:
    """``[sync]`` -> SyncConfig (every limit >= 0)."""
    d = SyncConfig()
    cfg = SyncConfig(
        tele_max_bytes=int(t.number("tele_max_bytes", d.tele_max_bytes, lo=0, unit="bytes")),
        tele_max_age_s=t.number("tele_max_age_s", d.tele_max_age_s, lo=0, unit="s"),
        evt_max_bytes=int(t.number("evt_max_bytes", d.evt_max_bytes, lo=0, unit="bytes")),
        evt_max_age_s=t.number("evt_max_age_s", d.evt_max_age_s, lo=0, unit="s"),
        cmd_max_age_s=t.number("cmd_max_age_s", d.cmd_max_age_s, lo=0, unit="s"),
        duplicate_window_s=t.number("duplicate_window_s", d.duplicate_window_s, lo=0, unit="s"),
        record=t.flag("record", d.record),
    )
    t.finish()
    return cfg
