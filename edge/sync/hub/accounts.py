"""Per-device accounts on the hub: each device's leaf connection lives in an account of its own.

The hub's JetStream streams (``TELE_<dev>``, ``EVT_<dev>``, ``CMD_<dev>``, the state mirror) are
in the ``CLOUD`` account, where back-end clients log in (user ``cloud``). Each device ``d`` has the
account ``DEV_<d>`` with one user, its leaf login (password or nkey); nothing else can log in
there and the device cannot log in anywhere else. The two accounts share exactly what the link
needs, as NATS exports and imports (each export is granted to that one account only):

``DEV_<d>`` exports to ``CLOUD``
    the stream ``edge.<d>.{evt,tele,ack}.>`` and the sourcing deliveries ``edge.<d>.sync.{tele,evt,kv}``;
    the service ``$JS.<d>.API.>`` (the hub's sources attach to the device's consumers) and the
    device API ``edge.<d>.api.>`` (request/reply from back-end clients);
    the services ``$JS.FC.<stream>.sync-<stream>-<d>.>`` (flow-control replies of those consumers:
    the consumer names carry the device, so every device's flow control is its own subject).
``CLOUD`` exports to ``DEV_<d>``
    the services ``$JS.API.CONSUMER.{CREATE,RESET,INFO,DELETE}.CMD_<d>.>`` and
    ``$JS.API.STREAM.INFO.CMD_<d>`` (imported by the device's account as ``edge.<d>.hub.API...``,
    where the device's ``CMD`` stream asks: the server answers ``$JS.hub.API`` itself in every
    account), the stream ``edge.<d>.sync.cmd`` (command
    deliveries) and the service ``$JS.FC.CMD_<d>.>`` (their flow-control replies); for updates,
    the reads of the fleet's signed store and of the device's own desired-state key, and the
    stream ``edge.<d>.ota.inbox.>`` (:func:`edge.ota.hub.ota_exports`, docs/ota.md).

So a device's credentials reach only its own account: another device's login claiming the same
server name lands in a different account and cannot replace the connection (nats-server replaces
a leaf only for the same server name *and* account), it sees none of the other's traffic
(flow control included), and whatever it publishes under someone else's subjects goes nowhere.
Commands never travel as plain publishes (only ``edge.<d>.sync.cmd`` is exported downward).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from edge.nats import subjects as naming

CLOUD_ACCOUNT = "CLOUD"
CLOUD_USER = "cloud"
DEVICE_ACCOUNT_PREFIX = "DEV_"
SYNC_KINDS = ("tele", "evt", "kv")
CMD_API_VERBS = ("CONSUMER.CREATE", "CONSUMER.RESET", "CONSUMER.INFO", "CONSUMER.DELETE")


class Login(Protocol):
    """What the renderer needs of a device's leaf login."""

    device: str
    password: str
    nkey: str | None


def device_account(device: str) -> str:
    return DEVICE_ACCOUNT_PREFIX + naming.check_device_id(device)


def source_streams(state: bool = True) -> list[str]:
    """The device streams the hub sources (their sync consumers carry the device's name)."""
    return [naming.TELE_STREAM, naming.EVT_STREAM] + ([f"KV_{naming.STATE_BUCKET}"] if state else [])


def _cmd_api(device: str) -> list[str]:
    cmd = naming.hub_stream(naming.CMD_STREAM, device)
    out = [f"$JS.API.{verb}.{cmd}.>" for verb in CMD_API_VERBS]
    return out + [f"$JS.API.CONSUMER.CREATE.{cmd}", f"$JS.API.STREAM.INFO.{cmd}"]


def device_exports(device: str) -> tuple[list[str], list[str]]:
    """(stream subjects, service subjects) the device's account shares with ``CLOUD``."""
    d = naming.check_device_id(device)
    streams = [naming.event(d), naming.telemetry(d), naming.ack(d)]
    streams += [naming.sync_deliver_subject(d, k) for k in SYNC_KINDS]
    services = [f"{naming.js_api(d)}.>", naming.api(d)]  # the hub's sources; the device API
    services += [f"$JS.FC.{s}.{naming.sync_consumer_name(s, d)}.>" for s in source_streams()]
    # [sync] record (edge.replay.hub, docs/replay.md): the REC stream's sourcing consumer
    streams.append(naming.sync_deliver_subject(d, "rec"))
    services.append(f"$JS.FC.REC.{naming.sync_consumer_name('REC', d)}.>")
    return streams, services


def cloud_exports(device: str) -> tuple[list[str], list[str]]:
    """(stream subjects, service subjects) ``CLOUD`` shares with the device's account."""
    from edge.ota.hub import ota_exports  # [ota] the fleet's signed store and its desired state

    d = naming.check_device_id(device)
    cmd = naming.hub_stream(naming.CMD_STREAM, d)
    ota_streams, ota_services = ota_exports(d)
    return ([naming.sync_deliver_subject(d, "cmd"), *ota_streams],
            [*_cmd_api(d), f"$JS.FC.{cmd}.>", *ota_services])


def _login(cred: Login) -> dict[str, Any]:
    if cred.nkey is not None:
        return {"nkey": cred.nkey}
    return {"user": cred.device, "password": cred.password}


def accounts_config(devices: Sequence[Login], cloud_password: str,
                    *, cloud_users: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The hub's ``accounts`` block as data (JSON is valid nats-server config syntax)."""
    cloud: dict[str, Any] = {
        "jetstream": "enabled",
        "users": [{"user": CLOUD_USER, "password": cloud_password}, *cloud_users],
        "exports": [],
        "imports": [],
    }
    accounts: dict[str, Any] = {CLOUD_ACCOUNT: cloud}
    for cred in devices:
        d = naming.check_device_id(cred.device)
        acc = device_account(d)
        d_streams, d_services = device_exports(d)
        c_streams, c_services = cloud_exports(d)
        cloud["exports"] += [{"stream": s, "accounts": [acc]} for s in c_streams]
        cloud["exports"] += [{"service": s, "accounts": [acc]} for s in c_services]
        cloud["imports"] += [{"stream": {"account": acc, "subject": s}} for s in d_streams]
        cloud["imports"] += [{"service": {"account": acc, "subject": s}} for s in d_services]
        imports: list[dict[str, Any]] = [{"stream": {"account": CLOUD_ACCOUNT, "subject": s}} for s in c_streams]
        for s in c_services:
            # the device asks the hub's API under its own prefix (edge.<d>.hub.API...: the
            # server itself answers $JS.<its domain>.API in every account); CLOUD answers $JS.API
            to = s.replace("$JS.API.", f"{naming.hub_api(d)}.", 1) if s.startswith("$JS.API.") else s
            imports.append({"service": {"account": CLOUD_ACCOUNT, "subject": s}, "to": to})
        accounts[acc] = {
            "users": [_login(cred)],
            "exports": [{"stream": s, "accounts": [CLOUD_ACCOUNT]} for s in d_streams]
            + [{"service": s, "accounts": [CLOUD_ACCOUNT]} for s in d_services],
            "imports": imports,
        }
    return accounts


def render_accounts(devices: Sequence[Login], cloud_password: str) -> str:
    """``accounts { ... }`` as nats-server config text."""
    body = accounts_config(devices, cloud_password)
    return "accounts: " + json.dumps(body, indent=2)
