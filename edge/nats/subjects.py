"""The NATS names of a device, in one place: the ID rule, subject builders, stream and domain names,
and the one wildcard matcher (documented in docs/subjects.md).

Device ``dev1`` (also its JetStream domain and leaf server name) uses::

    edge.dev1.tele.<entity>.<component>   telemetry (best effort)      -> device stream TELE
    edge.dev1.evt.<entity>.<kind>         events (acknowledged)        -> device stream EVT
    edge.dev1.ack.<entity>.<verb>         command results (record)     -> device stream EVT
    edge.dev1.cmd.<entity>.<verb>         commands (request/reply)     -> hub stream CMD_dev1, sourced into CMD
    edge.dev1.api.<group>.<verb>          the device API (micro service)
    edge.dev1.tools.<name>                the tools service for external agents
    edge.dev1.sync.>                      deliver subjects of the sourcing consumers on the link
    edge.dev1.hub.API.>                   the hub's JetStream API as the device reaches it

The hub (domain ``hub``) holds per device ``TELE_dev1``, ``EVT_dev1`` (sourced from the device),
``CMD_dev1`` (commands) and the KV mirror bucket ``edge-state-dev1``.

Every id that becomes a subject token (device, entity, command verb, tool caller) follows one
rule, :data:`ID_RE`: 1-64 characters of ``A-Z a-z 0-9 _ -``.
"""

from __future__ import annotations

import re

from edge.errors import ConfigError

PREFIX = "edge"
ROOT = PREFIX
HUB_DOMAIN = "hub"
STATE_BUCKET = "edge-state"  # device-local entity-state KV bucket

TELE_STREAM = "TELE"
EVT_STREAM = "EVT"
CMD_STREAM = "CMD"

#: Header naming who sends a command or a tool call (attribution; NATS permissions enforce).
CALLER_HEADER = "Edge-Caller"
#: Header correlating a command with its one answer.
COMMAND_ID_HEADER = "Edge-Command-Id"
#: Header of a queued cloud command: absolute unix time (s) after which the command is void.
EXPIRES_HEADER = "Edge-Expires"

#: The one ID rule: a subject token, a JetStream domain and a stream-name part.
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
ID_RULE = "1-64 characters of A-Z a-z 0-9 _ -"


def is_id(value: object) -> bool:
    """True if ``value`` is a valid id (device, entity, verb, caller)."""
    return isinstance(value, str) and ID_RE.match(value) is not None


def check_id(value: object, what: str = "id", *, key: str | None = None, file: str | None = None) -> str:
    """``value`` if it is a valid id, else a ConfigError naming ``what`` (and the key and file)."""
    if not is_id(value):
        raise ConfigError(f"{what[:1].upper()}{what[1:]} {value!r} is not valid: use {ID_RULE}", key=key, file=file)
    return str(value)


def check_device_id(device: str) -> str:
    """Device ids are subject tokens, JetStream domains and stream-name parts."""
    return check_id(device, "device id", key="device")


# -- subject builders (no parts = the wildcard of that kind) ---------------------------------


def _subject(device: str, kind: str, parts: tuple[str, ...]) -> str:
    return ".".join((PREFIX, device, kind, *(parts or (">",))))


def device_prefix(device: str) -> str:
    return f"{PREFIX}.{check_device_id(device)}"


def telemetry(device: str, *parts: str) -> str:
    """``edge.<device>.tele.<entity>.<component>``: JSON component values, best effort."""
    return _subject(device, "tele", parts)


def event(device: str, *parts: str) -> str:
    """``edge.<device>.evt.<entity>.<kind>``: JSON events, acknowledged by the EVT stream."""
    return _subject(device, "evt", parts)


def command(device: str, *parts: str) -> str:
    """``edge.<device>.cmd.<entity>.<verb>``: a JSON command; a request that gets one answer."""
    return _subject(device, "cmd", parts)


def ack(device: str, *parts: str) -> str:
    """``edge.<device>.ack.<entity>.<verb>``: the record of a command's answer."""
    return _subject(device, "ack", parts)


def api(device: str, *parts: str) -> str:
    """Request/reply API: ``edge.<device>.api.<group>.<verb>``."""
    return _subject(device, "api", parts)


def tools(device: str, *parts: str) -> str:
    """The tools service: ``edge.<device>.tools.<name>``."""
    return _subject(device, "tools", parts)


def ack_for(command_subject: str) -> str:
    """The ack subject recording the answer to ``command_subject``."""
    return command_subject.replace(".cmd.", ".ack.", 1)


def sync_deliver_subject(device: str, what: str) -> str:
    """Deliver subject of a durable sourcing consumer (inside the device's namespace so that
    per-device permissions can allow it)."""
    return f"{device_prefix(device)}.sync.{what}"


def sync_consumer_name(stream: str, device: str | None = None) -> str:
    """Name of the durable consumer the other side of the link sources ``stream`` through.

    On the device (``device`` given) the name carries the device, ``sync-TELE-<dev>``, so the
    consumer's flow-control subjects (``$JS.FC.<stream>.<consumer>.>``) are the device's own on
    the hub; the hub's ``CMD_<dev>`` stream name carries it already (``sync-CMD``)."""
    return f"sync-{stream}" if device is None else f"sync-{stream}-{check_device_id(device)}"


def js_api(domain: str) -> str:
    return f"$JS.{domain}.API"


def hub_api(device: str) -> str:
    """The prefix under which a device reaches the hub's JetStream API (only the calls its
    command stream needs): the hub's account of the device imports them from the cloud account
    under this name (edge.sync.hub.accounts)."""
    return f"{device_prefix(device)}.hub.API"


def hub_stream(kind: str, device: str) -> str:
    """Hub-side per-device stream name, e.g. ``TELE_dev1``."""
    return f"{kind}_{check_device_id(device)}"


def hub_state_bucket(device: str) -> str:
    return f"{STATE_BUCKET}-{check_device_id(device)}"


# -- the one wildcard matcher -------------------------------------------------------------------


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS matching: ``*`` matches one token, ``>`` (last) one or more remaining tokens."""
    return tokens_match(pattern.split("."), subject.split("."))


def tokens_match(p: list[str] | tuple[str, ...], s: list[str] | tuple[str, ...]) -> bool:
    """:func:`subject_matches` over already split tokens (a pattern matched against many subjects)."""
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)
