"""Device-side JetStream streams, created idempotently at start.

* ``TELE`` captures ``edge.<dev>.tele.>``: bounded by bytes and age, ``discard=old`` (the oldest
  telemetry is evicted first during a long outage); evictions are counted from stream state.
* ``EVT`` captures ``edge.<dev>.evt.>`` and ``edge.<dev>.ack.>``: a separate stream with its own
  reserved byte budget, so telemetry can never evict events. When even it is full it uses
  ``discard=new``: the publish is refused with an error the publisher surfaces, never silently.
* ``CMD`` (only with a hub) has no subjects of its own: it sources the hub's ``CMD_<dev>`` stream
  across domains, so commands issued while the device was offline arrive on reconnect, in order.
* ``REC`` (only with ``[sync] record = true``, off by default: the replay records are about
  22 KiB/s a device) is the replay recorder's stream (docs/replay.md), with its own limits (1 h,
  256 MiB, oldest first): created here if the recorder has not yet, and given a durable sync
  consumer like TELE and EVT, for a hub to source it into ``REC_<dev>``.

All streams keep a duplicate window so a publish retried with the same ``Nats-Msg-Id`` is stored
once. JetStream reserves each stream's ``max_bytes`` against the server's ``max_file_store``, so
creation fails loudly if the budgets do not fit: a :class:`~edge.nats.storage.StoreLimitError`
that names the stream, what the others reserve and ``[nats] max_store_bytes``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    ExternalStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamConsumerSource,
    StreamInfo,
    StreamSource,
)
from nats.js.errors import APIError, NotFoundError

from edge.errors import NatsError
from edge.nats import subjects as naming
from edge.nats.storage import ERR_INSUFFICIENT_RESOURCES, reservation_error
from edge.sync.durable import SyncConsumer, ensure_sync_consumer

log = logging.getLogger("edge.sync")

MIB = 1024 * 1024
DEFAULT_TELE_MAX_BYTES = 64 * MIB
DEFAULT_TELE_MAX_AGE_S = 7 * 24 * 3600.0
DEFAULT_EVT_MAX_BYTES = 16 * MIB
DEFAULT_EVT_MAX_AGE_S = 0.0  # 0 = events are kept until the budget is full (then refused)
DEFAULT_CMD_MAX_AGE_S = 3600.0
DEFAULT_DUPLICATE_WINDOW_S = 600.0
ERR_STREAM_NAME_IN_USE = 10058  # "stream name already in use with a different configuration"


@dataclass
class DeviceStreamConfig:
    """Limits for one device's streams. Sizes in bytes, ages in seconds (0 = unlimited)."""

    device: str
    tele_max_bytes: int = DEFAULT_TELE_MAX_BYTES
    tele_max_age_s: float = DEFAULT_TELE_MAX_AGE_S
    evt_max_bytes: int = DEFAULT_EVT_MAX_BYTES
    evt_max_age_s: float = DEFAULT_EVT_MAX_AGE_S
    cmd_max_age_s: float = DEFAULT_CMD_MAX_AGE_S
    duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S
    hub_domain: str | None = None  # set when the device is a leaf of a hub: enables CMD
    # where the device reaches the hub's API for its command stream; default edge.<dev>.hub.API
    # (what the hub's per-device account imports); "$JS.<hub domain>.API" for a single-account hub
    hub_api: str | None = None
    state_bucket: bool = True  # create the entity-state KV bucket if missing and sync it
    record: bool = False  # [sync] record: the replay records (REC) can sync to the hub too
    storage: StorageType = StorageType.FILE

    def stream_configs(self) -> list[StreamConfig]:
        d = naming.check_device_id(self.device)
        dup = self.duplicate_window_s
        tele = StreamConfig(
            name=naming.TELE_STREAM,
            subjects=[naming.telemetry(d)],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_bytes=self.tele_max_bytes,
            max_age=self.tele_max_age_s or None,
            duplicate_window=_dup_window(dup, self.tele_max_age_s),
            storage=self.storage,
            description=f"telemetry of {d}: oldest evicted first",
        )
        evt = StreamConfig(
            name=naming.EVT_STREAM,
            subjects=[naming.event(d), naming.ack(d)],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.NEW,
            max_bytes=self.evt_max_bytes,
            max_age=self.evt_max_age_s or None,
            duplicate_window=_dup_window(dup, self.evt_max_age_s),
            storage=self.storage,
            description=f"events and command results of {d}: never evicted, refused when full",
        )
        out = [tele, evt]
        if self.hub_domain:
            out.append(
                StreamConfig(
                    name=naming.CMD_STREAM,
                    subjects=[],
                    retention=RetentionPolicy.LIMITS,
                    discard=DiscardPolicy.OLD,
                    max_age=self.cmd_max_age_s or None,
                    storage=self.storage,
                    duplicate_window=_dup_window(dup, self.cmd_max_age_s),
                    sources=[
                        StreamSource(
                            name=naming.hub_stream(naming.CMD_STREAM, d),
                            external=ExternalStream(api=self.hub_api or naming.hub_api(d)),
                            consumer=StreamConsumerSource(
                                name=naming.sync_consumer_name(naming.CMD_STREAM),
                                deliver_subject=naming.sync_deliver_subject(d, "cmd"),
                            ),
                        )
                    ],
                    description=f"commands for {d}, sourced from the hub",
                )
            )
        return out


def _dup_window(window_s: float, max_age_s: float) -> float:
    # The server refuses a duplicate window longer than max_age.
    return min(window_s, max_age_s) if max_age_s else window_s


async def ensure_stream(js: JetStreamContext, cfg: StreamConfig) -> StreamInfo:
    """Create ``cfg`` or update the existing stream to it (idempotent)."""
    try:
        return await js.add_stream(cfg)
    except APIError as exc:
        if exc.err_code in ERR_INSUFFICIENT_RESOURCES:
            raise await _refused(js, cfg, exc) from exc
        if exc.err_code != ERR_STREAM_NAME_IN_USE:
            raise NatsError(
                f"Could not create stream {cfg.name}: {exc.description}.", stream=cfg.name, code=exc.err_code
            ) from exc
    try:
        info = await js.update_stream(cfg)
    except APIError as exc:
        if exc.err_code in ERR_INSUFFICIENT_RESOURCES:
            raise await _refused(js, cfg, exc) from exc
        raise NatsError(
            f"Could not update stream {cfg.name}: {exc.description}.", stream=cfg.name, code=exc.err_code
        ) from exc
    log.info("stream %s updated to the configured limits", cfg.name)
    return info


async def _refused(js: JetStreamContext, cfg: StreamConfig, exc: APIError) -> NatsError:
    return await reservation_error(js, cfg.name or "?", cfg.storage, cfg.max_bytes,
                                   exc.description or "insufficient storage resources")


def rec_sync_consumer(device: str) -> SyncConsumer:
    """The durable consumer a hub sources the device's replay records (``REC``) through."""
    from edge.replay.records import REC_STREAM, rec_filter  # the recorder's stream (docs/replay.md)

    d = naming.check_device_id(device)
    return SyncConsumer(REC_STREAM, naming.sync_consumer_name(REC_STREAM, d),
                        naming.sync_deliver_subject(d, "rec"), (rec_filter(d),))


def device_sync_consumers(device: str, state: bool = True,
                          record: bool = False) -> list[SyncConsumer]:
    """The durable consumers the hub sources the device's TELE and EVT streams (and mirrors its
    entity-state bucket; with ``record``, sources its REC stream) through."""
    d = naming.check_device_id(device)
    kv = f"KV_{naming.STATE_BUCKET}"
    state_consumer = (
        [
            SyncConsumer(
                kv,
                naming.sync_consumer_name(kv, d),
                naming.sync_deliver_subject(d, "kv"),
                (f"$KV.{naming.STATE_BUCKET}.>",),
            )
        ]
        if state
        else []
    )
    return state_consumer + [
        SyncConsumer(
            naming.TELE_STREAM,
            naming.sync_consumer_name(naming.TELE_STREAM, d),
            naming.sync_deliver_subject(d, "tele"),
            (naming.telemetry(d),),
        ),
        SyncConsumer(
            naming.EVT_STREAM,
            naming.sync_consumer_name(naming.EVT_STREAM, d),
            naming.sync_deliver_subject(d, "evt"),
            (naming.event(d), naming.ack(d)),
        ),
    ] + ([rec_sync_consumer(d)] if record else [])


async def ensure_rec_stream(js: JetStreamContext, device: str) -> None:
    """Create the replay recorder's ``REC`` stream with its default limits unless it exists
    (the recorder owns its limits: an existing stream is left as it is)."""
    from edge.replay.recorder import RecordSettings

    cfg = RecordSettings().stream_config(device)
    try:
        await js.add_stream(cfg)
    except APIError as exc:
        if exc.err_code in ERR_INSUFFICIENT_RESOURCES:
            raise await _refused(js, cfg, exc) from exc
        if exc.err_code != ERR_STREAM_NAME_IN_USE:
            raise NatsError(f"Could not create stream {cfg.name}: {exc.description}.",
                            stream=cfg.name, code=exc.err_code) from exc


async def ensure_device_streams(js: JetStreamContext, cfg: DeviceStreamConfig) -> list[StreamInfo]:
    """Create or update the device's TELE, EVT (and CMD with a hub) streams, and the durable
    consumers the hub sources TELE and EVT (and REC with ``record``) through (see
    :mod:`edge.sync.durable`)."""
    infos = [await ensure_stream(js, sc) for sc in cfg.stream_configs()]
    if cfg.state_bucket:
        try:
            await js.key_value(naming.STATE_BUCKET)
        except NotFoundError:
            await js.create_key_value(bucket=naming.STATE_BUCKET, history=1)
    if cfg.record:
        await ensure_rec_stream(js, cfg.device)
    nc: NATS = js._nc  # the context's connection (nats-py keeps it there)
    for consumer in device_sync_consumers(cfg.device, cfg.state_bucket, cfg.record):
        await ensure_sync_consumer(nc, consumer)
        # before the consumer names carried the device they were sync-<stream>: retire those
        legacy = naming.sync_consumer_name(consumer.stream)
        try:
            await js.delete_consumer(consumer.stream, legacy)
            log.info("retired the old sourcing consumer %s on %s", legacy, consumer.stream)
        except NotFoundError:
            pass
    return infos


@dataclass
class StreamUsage:
    """One stream's size and its evictions: ``removed`` counts messages the limits took away
    (``first_seq - 1`` plus interior deletes) since the stream was created."""

    name: str
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    removed: int
    max_bytes: int | None

    @property
    def fill(self) -> float:
        return self.bytes / self.max_bytes if self.max_bytes and self.max_bytes > 0 else 0.0


async def stream_usage(js: JetStreamContext, name: str) -> StreamUsage:
    try:
        info = await js.stream_info(name)
    except NotFoundError as exc:
        raise NatsError(f"Stream {name} does not exist.", stream=name) from exc
    st = info.state
    first = st.first_seq or 0
    removed = max(first - 1, 0) + (st.num_deleted or 0)
    return StreamUsage(
        name=name,
        messages=st.messages,
        bytes=st.bytes,
        first_seq=first,
        last_seq=st.last_seq,
        removed=removed,
        max_bytes=info.config.max_bytes,
    )


class DropMonitor:
    """Counts evictions between polls (``poll()`` returns the new ones per stream).

    A backend must call :meth:`poll` periodically (e.g. every telemetry period) and report or log
    what it returns; the counts survive server restarts because they derive from stream state.
    """

    def __init__(
        self, js: JetStreamContext, streams: tuple[str, ...] = (naming.TELE_STREAM, naming.EVT_STREAM)
    ) -> None:
        self.js = js
        self.streams = streams
        self._last: dict[str, int] = {}
        self.total: dict[str, int] = {s: 0 for s in streams}

    async def poll(self) -> dict[str, int]:
        new: dict[str, int] = {}
        for name in self.streams:
            usage = await stream_usage(self.js, name)
            prev = self._last.get(name)
            delta = usage.removed - prev if prev is not None else usage.removed
            self._last[name] = usage.removed
            if delta > 0:
                new[name] = delta
                self.total[name] += delta
                log.warning("stream %s evicted %d messages (limits)", name, delta)
        return new
