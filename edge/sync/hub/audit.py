"""Counting sync by sequence on both sides of the link, independent of the sourcing bookkeeping.

The hub's sourced streams store every message with a ``Nats-Stream-Source`` header that names the
device stream's own sequence number. :func:`audit_stream` compares:

* the device's stream state (``last_seq``), read live through the device's JetStream domain
  (``$JS.<dev>.API.STREAM.INFO.<stream>`` over the leaf link), and
* the hub's *delivered position*: the source sequence of the newest message the hub stored,
  and the range of source sequences it holds (oldest and newest message, and how many).

``lag = device last sequence - hub delivered position`` (what the device holds that the hub does
not), and ``holes = (newest - oldest + 1) - messages``: source sequences inside the hub's range
that the hub never stored. In ``EVT`` (never evicted on the device) a hole is a lost event and
raises an alarm in :func:`edge.sync.hub.fleet.fleet_status`; in ``TELE`` a hole can also be
telemetry the device evicted (``discard=old``) before the link returned. A hub that skipped a
block shows it as lag until newer messages arrive and as holes afterwards, never as "lag 0".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from dataclasses import asdict, dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from edge.nats import subjects as naming

log = logging.getLogger("edge.sync.hub")

SOURCE_HEADER = "Nats-Stream-Source"
#: A message backfilled by :mod:`edge.sync.hub.repair` carries ``<stream identity> <device seq>``
#: here instead (the server reserves ``Nats-Stream-Source`` for what it sourced itself).
REPAIRED_SOURCE_HEADER = "Edge-Repaired-Source"
DEVICE_API_TIMEOUT_S = 1.0
#: Replies of the hub's requests to a device's JetStream API use this prefix (the one nats-server
#: uses for its own); the per-device account's service export maps the answer back either way.
REPLY_PREFIX = "$JSC.R.edge-audit"


@dataclass
class StreamAudit:
    """One device stream against its hub copy. ``None`` = unknown (device unreachable, or the
    hub holds nothing yet)."""

    stream: str
    hub_stream: str
    device_first_seq: int | None
    device_last_seq: int | None
    hub_oldest: int | None  # source sequence of the hub's oldest message of this stream
    hub_position: int  # source sequence of its newest message: the delivered position (0 = none)
    hub_messages: int
    holes: int
    lag: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_sequence(headers: dict[str, str] | None) -> tuple[int, str] | None:
    """``(sequence, stream identity)`` from a sourced message's ``Nats-Stream-Source`` header
    (``<stream>[:<ident>] <seq> <filter> <transform> <subject> [<ident>]``) or a backfilled one's
    ``Edge-Repaired-Source`` (``<stream>[:<ident>] <seq>``)."""
    raw = (headers or {}).get(SOURCE_HEADER) or (headers or {}).get(REPAIRED_SOURCE_HEADER)
    if not raw:
        return None
    parts = raw.split(" ")
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[0]


async def device_js_request(nc: NATS, device: str, api: str, payload: dict[str, Any] | None = None,
                            timeout: float = DEVICE_API_TIMEOUT_S) -> dict[str, Any] | None:
    """A request to the device's JetStream API (``$JS.<dev>.API.<api>``) over the leaf link; the
    decoded answer, or ``None`` when the device does not answer in time."""
    subject = f"{naming.js_api(naming.check_device_id(device))}.{api}"
    inbox = f"{REPLY_PREFIX}.{secrets.token_hex(8)}"
    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        await nc.publish(subject, json.dumps(payload).encode() if payload else b"", reply=inbox)
        msg = await sub.next_msg(timeout=timeout)
    except Exception as err:  # timeout: the device is not reachable now
        log.debug("device %s: no answer to %s (%r)", device, api, err)
        return None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    if not msg.data:  # a status reply (503: no responders while the leaf is away)
        return None
    try:
        resp = json.loads(msg.data)
    except ValueError:
        log.warning("device %s answered %s with something that is not JSON", device, api)
        return None
    return resp if isinstance(resp, dict) else None


async def device_stream_state(nc: NATS, device: str, stream: str,
                              timeout: float = DEVICE_API_TIMEOUT_S) -> dict[str, Any] | None:
    """The device's live stream state through its JetStream domain, or ``None`` if it does not
    answer (link down) or has no such stream."""
    resp = await device_js_request(nc, device, f"STREAM.INFO.{stream}", timeout=timeout)
    state = resp.get("state") if resp is not None and not resp.get("error") else None
    return state if isinstance(state, dict) else None


async def _edge_source_seq(js: JetStreamContext, hub_stream: str, seq: int) -> tuple[int, str, bool] | None:
    """(device sequence, identity, backfilled?) of the hub stream's message ``seq``."""
    try:
        msg = await js.get_msg(hub_stream, seq)
    except NotFoundError:
        return None
    src = source_sequence(msg.headers)
    return None if src is None else (*src, REPAIRED_SOURCE_HEADER in (msg.headers or {}))


async def audit_stream(js: JetStreamContext, device: str, stream: str) -> StreamAudit:
    """Compare the device's ``stream`` with the hub's ``<stream>_<device>`` by sequence."""
    hub_stream = naming.hub_stream(stream, device)
    info = await js.stream_info(hub_stream)
    st = info.state
    oldest = newest = None
    if st.messages:
        oldest = await _edge_source_seq(js, hub_stream, st.first_seq)
        newest = await _edge_source_seq(js, hub_stream, st.last_seq)
    if newest and newest[2]:
        # backfilled messages are stored after newer ones: the newest stored is not the position
        from edge.sync.hub.repair import hub_source_sequences

        seqs, ident = await hub_source_sequences(js, hub_stream)
        if seqs and ident:
            newest = (max(seqs), ident, False)
    position = newest[0] if newest else 0
    holes = 0
    if oldest and newest and oldest[1] == newest[1]:  # one incarnation of the device stream
        # the hub stream has no subjects of its own: every message is from this one source
        holes = max(0, (newest[0] - oldest[0] + 1) - int(st.messages))
    dev = await device_stream_state(js._nc, device, stream)
    dev_first = int(dev.get("first_seq") or 0) if dev else None
    dev_last = int(dev.get("last_seq") or 0) if dev else None
    lag = None
    if dev_last is not None:
        # a re-created device stream (new incarnation, numbered from 1 again) can be below
        lag = max(0, dev_last - position)
    return StreamAudit(
        stream=stream,
        hub_stream=hub_stream,
        device_first_seq=dev_first,
        device_last_seq=dev_last,
        hub_oldest=oldest[0] if oldest else None,
        hub_position=position,
        hub_messages=int(st.messages),
        holes=holes,
        lag=lag,
    )


async def audit_device(js: JetStreamContext, device: str) -> dict[str, StreamAudit]:
    """:func:`audit_stream` of the device's ``TELE`` and ``EVT``, concurrently."""
    names = (naming.TELE_STREAM, naming.EVT_STREAM)
    audits = await asyncio.gather(*(audit_stream(js, device, s) for s in names))
    return dict(zip(names, audits, strict=True))
