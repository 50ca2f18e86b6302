"""Cloud-side operations: provision devices on the hub, send commands, fleet status, run a hub.

Functions take a JetStream context bound to the hub's domain (a plain ``nc.jetstream()`` on a
client connected to the hub). The ``edge cloud ...`` / ``edge fleet status`` commands call them.

Per device ``d`` the hub holds:

* ``TELE_d`` and ``EVT_d``: each *sources* the device's stream across domains (``$JS.d.API``),
  filtered by a subject transform pinned to ``edge.d.…``, so whatever the device does locally,
  only its own subjects are attributed to it. ``TELE_d`` has no subjects of its own; ``EVT_d``
  only ``edge.d.repair.>`` (stored as ``edge.d.…``), where the hub's backfill of skipped events
  publishes (:mod:`edge.sync.hub.repair`; no device account shares that subject).
* ``CMD_d``: subjects ``edge.d.cmd.>``; the device's ``CMD`` stream sources it, so commands
  issued while the device is offline arrive when it reconnects, in order. ``max_age`` expires them.
* ``KV_edge-state-d``: a mirror of the device's ``edge-state`` bucket, readable on the hub as the
  KV bucket ``edge-state-d``.
* ``REC_d`` (only with ``ProvisionOptions.record``, for a device with ``[sync] record = true``):
  the device's replay records sourced through their durable sync consumer, with their own limits
  (:mod:`edge.replay.hub`; docs/replay.md, *On the hub*).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    ExternalStream,
    PubAck,
    StreamConfig,
    StreamConsumerSource,
    StreamInfo,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import NotFoundError

from edge.errors import NatsError
from edge.nats import subjects as naming
from edge.sync.durable import SyncConsumer, ensure_sync_consumer
from edge.sync.hub.audit import StreamAudit, audit_device, audit_stream
from edge.sync.hub.repair import repair_subject, repair_transform
from edge.sync.hub.server import DeviceCredential, HubServer
from edge.sync.device.streams import MIB, ensure_stream

log = logging.getLogger("edge.sync")

DEFAULT_HUB_TELE_MAX_BYTES = 256 * MIB
DEFAULT_HUB_TELE_MAX_AGE_S = 30 * 24 * 3600.0
DEFAULT_HUB_EVT_MAX_BYTES = 256 * MIB
DEFAULT_SEND_RETRY_S = 20.0  # seconds a command publish is retried while its stream has no leader
DEFAULT_CMD_TTL_S = 3600.0
DEFAULT_DUPLICATE_WINDOW_S = 600.0
DEFAULT_LINK_DOWN_AFTER_S = 10.0  # a source inactive this long counts as a link down
EXPIRES_HEADER = naming.EXPIRES_HEADER
STATE_HISTORY = 1


@dataclass
class ProvisionOptions:
    """Hub-side retention per device (bytes, seconds)."""

    tele_max_bytes: int = DEFAULT_HUB_TELE_MAX_BYTES
    tele_max_age_s: float = DEFAULT_HUB_TELE_MAX_AGE_S
    evt_max_bytes: int = DEFAULT_HUB_EVT_MAX_BYTES
    cmd_ttl_s: float = DEFAULT_CMD_TTL_S
    duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S
    state_mirror: bool = True
    replicas: int = 1  # 3 on a three-node hub cluster: every stream survives a node loss
    #: also ``REC_<dev>``, the copy of the device's replay records (a device that syncs them:
    #: ``[sync] record = true``; without it the source has no consumer to attach to)
    record: bool = False
    rec_max_bytes: int = 1024 * MIB
    rec_max_age_s: float = 24 * 3600.0


def _device_source(
    device: str, stream: str, kind: str, *transforms: tuple[str, str], durable: bool = True
) -> StreamSource:
    """A cross-domain source of the device's ``stream``; ``durable`` attaches to the device's
    own durable sourcing consumer (:mod:`edge.sync.durable`) instead of an ephemeral one."""
    consumer = None
    external = ExternalStream(api=naming.js_api(device))
    if durable:
        consumer = StreamConsumerSource(
            name=naming.sync_consumer_name(stream, device),
            deliver_subject=naming.sync_deliver_subject(device, kind),
        )
    else:
        external.deliver = naming.sync_deliver_subject(device, kind)
    return StreamSource(
        name=stream,
        external=external,
        consumer=consumer,
        subject_transforms=[SubjectTransform(src=s, dest=d) for s, d in transforms],
    )


def hub_stream_configs(device: str, opts: ProvisionOptions | None = None) -> list[StreamConfig]:
    """The hub-side stream configs for one device (see module docstring)."""
    o = opts or ProvisionOptions()
    d = naming.check_device_id(device)
    tele = naming.telemetry(d)
    evt, ack = naming.event(d), naming.ack(d)
    out = [
        StreamConfig(
            name=naming.hub_stream(naming.TELE_STREAM, d),
            subjects=[],
            max_bytes=o.tele_max_bytes,
            max_age=o.tele_max_age_s or None,
            discard=DiscardPolicy.OLD,
            duplicate_window=o.duplicate_window_s,
            sources=[_device_source(d, naming.TELE_STREAM, "tele", (tele, tele))],
            num_replicas=o.replicas,
            description=f"telemetry sourced from device {d}",
        ),
        StreamConfig(
            name=naming.hub_stream(naming.EVT_STREAM, d),
            # only the hub-side backfill (edge.sync.hub.repair) publishes here, stored as the original
            subjects=[repair_subject(d)],
            subject_transform=SubjectTransform(*repair_transform(d)),
            max_bytes=o.evt_max_bytes,
            discard=DiscardPolicy.OLD,
            duplicate_window=o.duplicate_window_s,
            sources=[_device_source(d, naming.EVT_STREAM, "evt", (evt, evt), (ack, ack))],
            num_replicas=o.replicas,
            description=f"events and command results sourced from device {d}",
        ),
        StreamConfig(
            name=naming.hub_stream(naming.CMD_STREAM, d),
            subjects=[naming.command(d)],
            max_age=o.cmd_ttl_s or None,
            discard=DiscardPolicy.OLD,
            duplicate_window=min(o.duplicate_window_s, o.cmd_ttl_s or o.duplicate_window_s),
            num_replicas=o.replicas,
            description=f"commands for device {d}; expire after {o.cmd_ttl_s:.0f} s",
        ),
    ]
    if o.state_mirror:
        bucket = naming.hub_state_bucket(d)
        out.append(
            StreamConfig(
                name=f"KV_{bucket}",
                subjects=[],
                mirror=_device_source(
                    d, f"KV_{naming.STATE_BUCKET}", "kv", (f"$KV.{naming.STATE_BUCKET}.>", f"$KV.{bucket}.>")
                ),
                max_msgs_per_subject=STATE_HISTORY,
                allow_rollup_hdrs=True,
                deny_delete=True,
                allow_direct=True,
                mirror_direct=True,
                discard=DiscardPolicy.NEW,
                num_replicas=o.replicas,
                description=f"mirror of device {d}'s entity state",
            )
        )
    if o.record:
        from edge.replay.hub import hub_rec_config  # the record format's side of the copy

        out.append(hub_rec_config(d, max_bytes=o.rec_max_bytes, max_age_s=o.rec_max_age_s,
                                  replicas=o.replicas))
    return out


async def provision_device(
    js: JetStreamContext, device: str, opts: ProvisionOptions | None = None, hub: HubServer | None = None
) -> dict[str, Any]:
    """Create (idempotently) the hub streams for ``device``; with an embedded ``hub`` also
    register its leaf login. Returns ``{"device", "streams", "user", "password"}``."""
    cred: DeviceCredential | None = await hub.add_device(device) if hub is not None else None
    infos = [await ensure_stream(js, cfg) for cfg in hub_stream_configs(device, opts)]
    # The durable consumer the device's CMD stream sources commands through.
    d = naming.check_device_id(device)
    cmd = naming.hub_stream(naming.CMD_STREAM, d)
    await ensure_sync_consumer(
        js._nc,
        SyncConsumer(
            cmd,
            naming.sync_consumer_name(naming.CMD_STREAM),
            naming.sync_deliver_subject(d, "cmd"),
            (naming.command(d),),
        ),
    )
    log.info("provisioned device %s on the hub", device)
    return {
        "device": device,
        "streams": [i.config.name for i in infos],
        "user": cred.device if cred else None,
        "auth": cred.auth if cred else None,
        "password": cred.password if cred and cred.auth == "password" else None,
    }


async def provision_fleet(
    js: JetStreamContext,
    devices: list[str],
    opts: ProvisionOptions | None = None,
    hub: HubServer | None = None,
) -> list[dict[str, Any]]:
    return [await provision_device(js, d, opts, hub) for d in devices]


async def deprovision_device(js: JetStreamContext, device: str) -> None:
    """Delete the device's hub streams, its ``REC_<dev>`` too (its data on the hub is gone)."""
    for cfg in hub_stream_configs(device, ProvisionOptions(record=True)):
        try:
            await js.delete_stream(str(cfg.name))
        except NotFoundError:
            pass


async def send_command(
    js: JetStreamContext,
    device: str,
    name: str,
    payload: bytes,
    *,
    ttl_s: float = DEFAULT_CMD_TTL_S,
    msg_id: str | None = None,
    retry_s: float = DEFAULT_SEND_RETRY_S,
) -> PubAck:
    """Queue a command for ``device``; it is void ``ttl_s`` seconds from now.

    While a cluster elects the command stream's leader (a node was just lost) the stream has no
    responders for a few seconds: the publish is retried for up to ``retry_s``, safely, since
    every attempt carries the same ``Nats-Msg-Id`` and the stream stores it once."""
    import nats.errors
    import nats.js.errors

    headers = {"Nats-Msg-Id": msg_id or secrets.token_hex(8), EXPIRES_HEADER: f"{time.time() + ttl_s:.3f}"}
    deadline = time.monotonic() + retry_s
    while True:
        try:
            return await js.publish(naming.command(device, name), payload, headers=headers)
        except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.5)


@dataclass
class DeviceStatus:
    """One device as the hub sees it. ``last_seen_s``: seconds since a sourcing consumer last
    heard from the device (None = never); ``lag``: messages the device has that the hub lacks,
    counted by sequence on both sides (:mod:`edge.sync.hub.audit`: the device streams' last
    sequence read live over the link against the hub's delivered position); when the device does
    not answer, the sourcing consumers' own last report (``lag_from = "source"``).
    ``evt_missing``: events inside the hub's range the hub never stored (a skipped block; any
    is an alarm); ``tele_gaps``: the same for telemetry (evicted on the device during an outage,
    or lost). ``alarms``: what needs attention, in words."""

    device: str
    link: str  # "up" | "down" | "never"
    last_seen_s: float | None
    lag: int
    tele_messages: int
    tele_bytes: int
    evt_messages: int
    evt_bytes: int
    cmd_pending: int
    errors: list[str]
    lag_from: str = "sequences"  # "sequences" (both sides) | "source" (device not reachable)
    device_seq: dict[str, int | None] = field(default_factory=dict)  # stream -> device last seq
    hub_seq: dict[str, int] = field(default_factory=dict)  # stream -> hub delivered position
    evt_missing: int = 0
    tele_gaps: int = 0
    alarms: list[str] = field(default_factory=list)
    #: the hub's ``REC_<dev>`` (None: not provisioned): records held, their bytes, and the lag
    #: by sequence (None: the device does not answer); also in ``lag``, device_seq and hub_seq
    rec_messages: int | None = None
    rec_bytes: int | None = None
    rec_lag: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _source_view(info: StreamInfo) -> tuple[float | None, int, list[str]]:
    last: float | None = None
    lag = 0
    errors: list[str] = []
    for s in info.sources or []:
        lag += s.lag or 0
        if s.active is not None and s.active >= 0:
            seen = s.active / 1e9  # the server reports nanoseconds since last activity
            last = seen if last is None else min(last, seen)
        if s.error:
            errors.append(str(s.error))
    return last, lag, errors


async def list_devices(js: JetStreamContext) -> list[str]:
    """The provisioned devices: the hub's ``TELE_<device>`` streams, by name.

    The names come from ``STREAM.NAMES`` (every page), which the cluster's meta layer answers from
    its stream assignments. Not from ``STREAM.LIST``: in a cluster that one asks each stream's
    leader for its info and, while a stream elects a leader (just after a node loss), leaves it out
    of the answer (only naming it under ``missing``): devices were then silently not listed, and
    ``fleet_status`` answered an empty fleet. It also returns only its first page (256 streams)."""
    prefix = naming.TELE_STREAM + "_"
    names = await stream_names(js)
    return sorted(n[len(prefix) :] for n in names if n.startswith(prefix))


async def stream_names(js: JetStreamContext) -> list[str]:
    """Every stream's name (``STREAM.NAMES``, all pages; nats-py has no call of its own for it,
    so this uses its JetStream API request, which applies the context's domain prefix)."""
    names: list[str] = []
    while True:
        resp = await js._api_request(f"{js._prefix}.STREAM.NAMES", json.dumps({"offset": len(names)}).encode(),
                                     timeout=js._timeout)
        page = [str(n) for n in resp.get("streams") or [] if n]
        names += page
        if not page or len(names) >= int(resp.get("total") or 0):
            return names


async def fleet_status(
    js: JetStreamContext, devices: list[str] | None = None, *, down_after_s: float = DEFAULT_LINK_DOWN_AFTER_S
) -> list[DeviceStatus]:
    """Per device: link state, last seen, lag and gaps by sequence, stream sizes, alarms."""
    names = devices if devices is not None else await list_devices(js)
    return list(await asyncio.gather(*(_device_status(js, d, down_after_s) for d in names)))


async def _device_status(js: JetStreamContext, d: str, down_after_s: float) -> DeviceStatus:
    try:
        tele = await js.stream_info(naming.hub_stream(naming.TELE_STREAM, d))
        evt = await js.stream_info(naming.hub_stream(naming.EVT_STREAM, d))
        cmd = await js.stream_info(naming.hub_stream(naming.CMD_STREAM, d))
    except NotFoundError as exc:
        raise NatsError(f"Device {d} is not provisioned on the hub.", device=d) from exc
    t_seen, t_lag, t_err = _source_view(tele)
    e_seen, e_lag, e_err = _source_view(evt)
    seen = [s for s in (t_seen, e_seen) if s is not None]
    last = min(seen) if seen else None
    link = "never" if last is None else ("up" if last <= down_after_s else "down")
    audits = await audit_device(js, d)
    rec, rec_bytes = await _rec_audit(js, d)
    if rec is not None:
        audits[rec.stream] = rec
    lags = [a.lag for a in audits.values()]
    by_seq = all(lag is not None for lag in lags)
    evt_audit, tele_audit = audits[naming.EVT_STREAM], audits[naming.TELE_STREAM]
    alarms: list[str] = []
    if evt_audit.holes:
        alarms.append(
            f"{evt_audit.holes} events inside the hub's range were never stored on the hub "
            f"(EVT source sequences {evt_audit.hub_oldest}..{evt_audit.hub_position})"
        )
    if by_seq and evt_audit.lag and link == "down":
        alarms.append(f"device answers but its sourcing is silent: {evt_audit.lag} events not on the hub")
    alarms += [f"source error: {e}" for e in t_err + e_err]
    return DeviceStatus(
        device=d,
        link=link,
        last_seen_s=last,
        lag=sum(lag or 0 for lag in lags) if by_seq else t_lag + e_lag,
        tele_messages=tele.state.messages,
        tele_bytes=tele.state.bytes,
        evt_messages=evt.state.messages,
        evt_bytes=evt.state.bytes,
        cmd_pending=cmd.state.messages,
        errors=t_err + e_err,
        lag_from="sequences" if by_seq else "source",
        device_seq={k: a.device_last_seq for k, a in audits.items()},
        hub_seq={k: a.hub_position for k, a in audits.items()},
        evt_missing=evt_audit.holes,
        tele_gaps=tele_audit.holes,
        alarms=alarms,
        rec_messages=rec.hub_messages if rec is not None else None,
        rec_bytes=rec_bytes,
        rec_lag=rec.lag if rec is not None else None,
    )


async def _rec_audit(js: JetStreamContext, d: str) -> tuple[StreamAudit | None, int | None]:
    """The audit of ``REC_<d>`` against the device's ``REC`` and the copy's bytes; (None,
    None) when the hub has no copy."""
    from edge.replay.records import REC_STREAM  # the recorder's stream (docs/replay.md)

    try:
        info = await js.stream_info(naming.hub_stream(REC_STREAM, d))
    except NotFoundError:
        return None, None
    return await audit_stream(js, d, REC_STREAM), int(info.state.bytes)


async def run_hub(
    store_dir: Path,
    devices: list[str] | None = None,
    *,
    opts: ProvisionOptions | None = None,
    secure: bool = True,
    port: int = 0,
    leaf_port: int = 0,
    stop: asyncio.Event | None = None,
) -> HubServer:
    """Start a supervised embedded hub and provision ``devices``.

    Without ``stop`` it returns the running hub (the caller stops it); with ``stop`` it serves
    until the event is set, then stops the hub and returns it.
    """
    import nats

    hub = HubServer(Path(store_dir), secure=secure, port=port, leaf_port=leaf_port)
    await hub.start(supervise=True)
    nc = await nats.connect(hub.client_url)
    try:
        await provision_fleet(nc.jetstream(), devices or [], opts, hub)
    finally:
        await nc.close()
    log.info("hub ready: clients %s, leaf nodes %s", hub.url, hub.leaf_url)
    if stop is not None:
        try:
            await stop.wait()
        finally:
            await hub.stop()
    return hub
