"""Backfill of events the hub's sourcing skipped, read back from the device's own stream.

A hub source that (re)attaches to a device's durable sourcing consumer sends
``CONSUMER.RESET`` without a sequence (nats-server ``trySetupSourceConsumer``; the sequence it
would resume at is ignored for durable consumers): the consumer resumes at its *ack floor* and the
hub adopts the consumer's delivered position when that is past its own. Whatever lies between the
hub's stored position and that ack floor is skipped without an error (docs/sync.md, "How a hub can
skip a block"). The device still holds those events (``EVT`` never evicts), so the hub can make its
copy complete with NATS's own means:

1. **Find** what is missing, by sequence on both sides: the source sequences of the hub's
   ``EVT_<dev>`` (``Nats-Stream-Source`` headers, read headers-only) against the device's ``EVT``
   range (``STREAM.INFO``) and the device-side consumer's ack floor (``CONSUMER.INFO``; anything
   at or below it that the hub lacks was acknowledged by a flow-control reply and will never be
   delivered again).
2. **Read** each missing message from the device's stream (``$JS.<dev>.API.STREAM.MSG.GET.EVT``
   over the leaf link).
3. **Store** it in ``EVT_<dev>`` on the hub: published to ``edge.<dev>.repair.<rest>``, which the
   hub stream captures and its subject transform stores as the original ``edge.<dev>.<rest>``,
   with the original headers, the original ``Nats-Msg-Id`` (so a repaired and a sourced copy
   deduplicate inside the stream's duplicate window; ``edge-repair-<stream>-<seq>`` when it had
   none) and ``Edge-Repaired-Source: <stream identity> <device seq>`` (the server reserves
   ``Nats-Stream-Source``; the audit reads either). The repair subject is in the hub's cloud account only: no
   device account exports or imports it, so a device cannot inject messages through it.

Repaired events are stored after the events the hub received meanwhile: the hub's copy is
complete, per source sequence; its stream order differs from the device's for a repaired block.

:func:`repair_device` is one pass (``edge cloud repair``); :class:`Repairer` runs passes
periodically for every provisioned device (``edge cloud run`` starts one).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from edge.errors import NatsError
from edge.nats import subjects as naming
from edge.sync.hub.periodic import Periodic
from edge.sync.hub.audit import (
    REPAIRED_SOURCE_HEADER,
    SOURCE_HEADER,
    audit_stream,
    device_js_request,
    source_sequence,
)

log = logging.getLogger("edge.sync.hub.repair")

REPAIRED_HEADER = REPAIRED_SOURCE_HEADER
MSG_ID_HEADER = "Nats-Msg-Id"
REPAIR_TOKEN = "repair"
SCAN_BATCH = 1000
DEFAULT_MAX_PER_PASS = 10_000  # messages backfilled per device and pass (the rest next pass)
DEFAULT_INTERVAL_S = 5.0
DEFAULT_STALL_S = 10.0  # the hub's position standing this long while the device has more: read it back
# Headers the server sets itself or that must not be validated again on the hub.
_DROP_HEADERS = (SOURCE_HEADER, REPAIRED_SOURCE_HEADER, "Nats-Expected-", "Nats-Batch-")


@dataclass
class RepairReport:
    """One pass over one device stream. ``missing``: device sequences the hub lacks (holes in its
    range plus acknowledged ones past its position); ``repaired``: stored now; ``duplicates``:
    already there (deduplicated); ``unavailable``: no longer on the device; ``error``: why the
    pass stopped early (device unreachable, ...)."""

    device: str
    stream: str
    hub_position: int = 0
    ack_floor: int | None = None
    missing: int = 0
    repaired: int = 0
    duplicates: int = 0
    unavailable: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def repair_subject(device: str, stream: str = naming.EVT_STREAM) -> str:
    """The hub-only subject ``<stream>_<device>`` captures repaired messages under (wildcard)."""
    if stream != naming.EVT_STREAM:
        raise NatsError(f"Only {naming.EVT_STREAM} is repaired, not {stream}.", stream=stream)
    return f"{naming.device_prefix(device)}.{REPAIR_TOKEN}.>"


def repair_transform(device: str) -> tuple[str, str]:
    """(source, destination) of the hub stream's subject transform back to the original subject."""
    prefix = naming.device_prefix(device)
    return f"{prefix}.{REPAIR_TOKEN}.>", f"{prefix}.>"


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


async def hub_source_sequences(js: JetStreamContext, hub_stream: str) -> tuple[set[int], str | None]:
    """The device sequences a hub stream holds (of the newest incarnation: its source identity),
    read headers-only, and that identity."""
    info = await js.stream_info(hub_stream)
    if not info.state.messages:
        return set(), None
    by_ident: dict[str, set[int]] = {}
    newest: str | None = None
    sub = await js.pull_subscribe(
        ">", stream=hub_stream,
        config=ConsumerConfig(headers_only=True, ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                              inactive_threshold=30.0),
    )
    try:
        seen = 0
        while seen < info.state.messages:
            try:
                msgs = await sub.fetch(SCAN_BATCH, timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            for m in msgs:
                seen += 1
                src = source_sequence(dict(m.headers or {}))
                if src is None:
                    continue
                by_ident.setdefault(src[1], set()).add(src[0])
                newest = src[1]
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return (by_ident.get(newest, set()) if newest else set()), newest


def _decode_headers(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    lines = base64.b64decode(raw).decode(errors="replace").split("\r\n")[1:]
    out: dict[str, str] = {}
    for line in lines:
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


async def _device_msg(nc: NATS, device: str, stream: str, seq: int) -> dict[str, Any] | None:
    resp = await device_js_request(nc, device, f"STREAM.MSG.GET.{stream}", {"seq": seq})
    if resp is None:
        raise TimeoutError(f"device {device} did not answer STREAM.MSG.GET.{stream} {seq}")
    msg = resp.get("message")
    return msg if isinstance(msg, dict) else None  # error 10037: no message (deleted/evicted)


async def repair_device(js: JetStreamContext, device: str, *, stream: str = naming.EVT_STREAM,
                        max_messages: int = DEFAULT_MAX_PER_PASS, stalled: bool = False) -> RepairReport:
    """One backfill pass for ``device``'s ``stream`` (see the module doc). Never raises for an
    unreachable device (``report.error``); at most ``max_messages`` are read per pass."""
    d = naming.check_device_id(device)
    repair_subject(d, stream)  # only EVT
    report = RepairReport(d, stream)
    nc: NATS = js._nc
    hub_stream = naming.hub_stream(stream, d)
    # the cheap check first (a few requests): a full scan only when something is missing
    audit = await audit_stream(js, d, stream)
    if audit.device_last_seq is None:
        report.error = "device not reachable"
        return report
    first, last = audit.device_first_seq or 0, audit.device_last_seq
    report.hub_position = audit.hub_position
    cons = await device_js_request(nc, d, f"CONSUMER.INFO.{stream}.{naming.sync_consumer_name(stream, d)}")
    floor = None
    if cons and isinstance(cons.get("ack_floor"), dict):
        floor = int(cons["ack_floor"].get("stream_seq") or 0)
    report.ack_floor = floor
    # ``stalled``: the caller saw the hub's position stand still while the device had more; then
    # everything up to the device's last sequence is read back (the source deduplicates by id)
    if audit.holes == 0 and (floor or 0) <= audit.hub_position and not (stalled and last > audit.hub_position):
        return report
    have, ident = await hub_source_sequences(js, hub_stream)
    position = max(have) if have else 0
    report.hub_position = position
    if ident is None:
        return report  # nothing sourced yet: the source delivers from the beginning
    # Holes in the hub's range, and what the device acknowledged past the hub's position.
    upto = last if stalled else max(position, min(floor or 0, last))
    lo = max(first, min(have) if have else 1)
    missing = [s for s in range(lo, upto + 1) if s not in have]
    report.missing = len(missing)
    report.ranges = _ranges(missing)
    if not missing:
        return report
    log.warning("device %s: %d %s messages missing on the hub (%s), backfilling", d, len(missing), stream,
                ", ".join(f"{a}..{b}" for a, b in report.ranges[:5]))
    for seq in missing[:max_messages]:
        try:
            msg = await _device_msg(nc, d, stream, seq)
        except TimeoutError as err:
            report.error = str(err)
            break
        if msg is None:
            report.unavailable += 1
            continue
        subject = str(msg.get("subject", ""))
        prefix = naming.device_prefix(d) + "."
        if not subject.startswith(prefix):
            report.unavailable += 1  # not one of the device's own subjects: the source would not take it
            continue
        hdrs = {k: v for k, v in _decode_headers(msg.get("hdrs")).items()
                if not any(k.startswith(p) for p in _DROP_HEADERS)}
        hdrs.setdefault(MSG_ID_HEADER, f"edge-repair-{stream}-{seq}")
        hdrs[REPAIRED_HEADER] = f"{ident} {seq}"
        data = base64.b64decode(msg.get("data") or "")
        ack = await js.publish(f"{prefix}{REPAIR_TOKEN}.{subject[len(prefix):]}", data, stream=hub_stream,
                               headers=hdrs)
        if ack.duplicate:
            report.duplicates += 1
        else:
            report.repaired += 1
    if report.repaired:
        log.warning("device %s: %d %s messages backfilled on the hub", d, report.repaired, stream)
    return report


class Repairer(Periodic):
    """Runs :func:`repair_device` for every provisioned device every ``interval_s`` seconds."""

    name = "edge-hub-repair"

    def __init__(self, js: JetStreamContext, *, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        super().__init__(interval_s)
        self.js = js
        self.repaired = 0
        self.last: dict[str, RepairReport] = {}
        self.stall_s = DEFAULT_STALL_S
        self._since: dict[str, tuple[int, float]] = {}  # device -> (hub position, since when)

    async def run_once(self) -> list[RepairReport]:
        from edge.sync.hub.fleet import list_devices

        out = []
        for d in await list_devices(self.js):
            seen = self.last.get(d)
            pos, since = self._since.get(d, (-1, time.monotonic()))
            stalled = (seen is not None and seen.error is None and seen.hub_position == pos
                       and time.monotonic() - since >= self.stall_s)
            try:
                rep = await repair_device(self.js, d, stalled=stalled)
            except Exception as err:  # one device's trouble never stops the others
                self.errors += 1
                log.warning("repair of device %s failed: %r", d, err)
                continue
            self.last[d] = rep
            if rep.hub_position != pos or rep.error is not None:
                self._since[d] = (rep.hub_position, time.monotonic())
            self.repaired += rep.repaired
            out.append(rep)
        return out
