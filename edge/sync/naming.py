"""Subject, stream and domain names shared by the device and the hub.

Device ``dev1`` (also its JetStream domain and leaf server name) uses::

    edge.dev1.tele.<name...>   telemetry            -> device stream TELE
    edge.dev1.evt.<name...>    events (critical)    -> device stream EVT
    edge.dev1.ack.<id>         command results      -> device stream EVT
    edge.dev1.cmd.<name...>    cloud commands       -> hub stream CMD_dev1, sourced into device CMD
    edge.dev1.sync.>           deliver subjects of the sourcing consumers on this link

The hub (domain ``hub``) holds per device ``TELE_dev1``, ``EVT_dev1`` (sourced from the device),
``CMD_dev1`` (commands) and the KV mirror bucket ``edge-state-dev1``.
"""

from __future__ import annotations

import re

from edge.errors import ConfigError

ROOT = "edge"
HUB_DOMAIN = "hub"
STATE_BUCKET = "edge-state"  # device-local entity-state KV bucket

TELE_STREAM = "TELE"
EVT_STREAM = "EVT"
CMD_STREAM = "CMD"

_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_device_id(device: str) -> str:
    """Device ids are subject tokens, JetStream domains and stream-name parts: [A-Za-z0-9_-]."""
    if not _ID_RE.match(device):
        raise ConfigError(
            f"Device id {device!r} is not valid: use 1-64 letters, digits, '_' or '-'.",
            key="device",
        )
    return device


def device_prefix(device: str) -> str:
    return f"{ROOT}.{check_device_id(device)}"


def tele_subject(device: str, name: str = ">") -> str:
    return f"{device_prefix(device)}.tele.{name}"


def evt_subject(device: str, name: str = ">") -> str:
    return f"{device_prefix(device)}.evt.{name}"


def ack_subject(device: str, name: str = ">") -> str:
    return f"{device_prefix(device)}.ack.{name}"


def cmd_subject(device: str, name: str = ">") -> str:
    return f"{device_prefix(device)}.cmd.{name}"


def sync_deliver_prefix(device: str, what: str) -> str:
    """Deliver-subject prefix for a sourcing consumer on the link (kept inside the device's
    namespace so per-device permissions can allow it)."""
    return f"{device_prefix(device)}.sync.{what}"


def sync_consumer_name(stream: str) -> str:
    """Name of the durable consumer the other side of the link sources ``stream`` through."""
    return f"sync-{stream}"


def sync_deliver_subject(device: str, what: str) -> str:
    """Deliver subject of a durable sourcing consumer (inside the device's namespace)."""
    return f"{device_prefix(device)}.sync.{what}"


def js_api(domain: str) -> str:
    return f"$JS.{domain}.API"


def hub_stream(kind: str, device: str) -> str:
    """Hub-side per-device stream name, e.g. ``TELE_dev1``."""
    return f"{kind}_{check_device_id(device)}"


def hub_state_bucket(device: str) -> str:
    return f"{STATE_BUCKET}-{check_device_id(device)}"
