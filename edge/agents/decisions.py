"""Decision records: a bounded in-memory ring plus the JetStream stream ``EDGE_DECISIONS``.

A record is ``{t, entity, agent, decision, reason, inputs, command?}`` (``t`` is wall-clock Unix
seconds; ``command`` is ``{entity, verb, subject, args, id, answer, rtt_ms?}`` where ``answer`` is
the command's answer, or the caller's own ``{"ok": false, "reason": "timeout" | "unanswered"}``). It is published on ``edge.<device>.evt.<entity>.decision`` and kept in a ring so
``edge.<device>.api.agent.decisions`` can answer "why did the drone turn?" without touching disk.

The stream is created idempotently with limits (messages, bytes, age; oldest evicted first). The
device's ``EVT`` stream (edge.sync) already captures ``edge.<device>.evt.>``; JetStream refuses two
streams with overlapping subjects, so when another stream owns the decision subjects
``EDGE_DECISIONS`` is created without subjects, *sourcing* the decision records from that stream
(filtered), and keeps its own limits. Start the sync streams before the agent host so this choice
is made against them.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamSource
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from edge.nats import subjects
from edge.errors import NatsError
from edge.layer import Events

log = logging.getLogger("edge.agents.decisions")

DECISION_STREAM = "EDGE_DECISIONS"
DEFAULT_RING_SIZE = 1000  # decisions kept in memory for the API
#: Largest decision record (bytes) of another publisher kept in the ring; a larger one is counted
#: (``too_large``) and dropped, so the ring holds at most DEFAULT_RING_SIZE small records.
MAX_INGESTED_BYTES = 16 * 1024
DEFAULT_STREAM_MAX_MSGS = 100_000
DEFAULT_STREAM_MAX_BYTES = 32 * 1024 * 1024  # bytes
DEFAULT_STREAM_MAX_AGE_S = 7 * 24 * 3600.0  # seconds
DEFAULT_QUERY_LIMIT = 50  # decisions returned when a query gives no limit
PUBLISH_TIMEOUT_S = 2.0  # seconds to wait for the stream's ack of one record
ERR_STREAM_NAME_IN_USE = 10058
ERR_SUBJECTS_OVERLAP = 10065


@dataclass(frozen=True)
class DecisionStreamLimits:
    max_msgs: int = DEFAULT_STREAM_MAX_MSGS
    max_bytes: int = DEFAULT_STREAM_MAX_BYTES
    max_age_s: float = DEFAULT_STREAM_MAX_AGE_S
    storage: StorageType = StorageType.FILE


def decision_subject(device: str, entity: str) -> str:
    return subjects.event(device, entity, "decision")


def decision_filter(device: str) -> str:
    return subjects.event(device, "*", "decision")


def _config(device: str, limits: DecisionStreamLimits, source: str | None) -> StreamConfig:
    common: dict[str, Any] = {
        "name": DECISION_STREAM,
        "retention": RetentionPolicy.LIMITS,
        "discard": DiscardPolicy.OLD,
        "max_msgs": limits.max_msgs,
        "max_bytes": limits.max_bytes,
        "max_age": limits.max_age_s or None,
        "storage": limits.storage,
        "description": f"agent decision records of {device}",
    }
    if source is None:
        return StreamConfig(subjects=[decision_filter(device)], **common)
    return StreamConfig(
        subjects=[], sources=[StreamSource(name=source, filter_subject=decision_filter(device))], **common
    )


async def _create_or_update(js: JetStreamContext, cfg: StreamConfig) -> None:
    try:
        await js.add_stream(cfg)
        return
    except APIError as err:
        if err.err_code != ERR_STREAM_NAME_IN_USE:
            raise
    await js.update_stream(cfg)


async def ensure_decision_stream(
    js: JetStreamContext, device: str, limits: DecisionStreamLimits = DecisionStreamLimits()
) -> str:
    """Create or update ``EDGE_DECISIONS``; returns ``"subjects"`` or ``"source:<stream>"``."""
    owner: str | None = None
    try:
        owner = await js.find_stream_name_by_subject(decision_subject(device, "x"))
    except NotFoundError:
        owner = None
    except APIError as err:
        raise NatsError(f"cannot look up streams: {err.description}", stream=DECISION_STREAM) from err
    source = owner if owner and owner != DECISION_STREAM else None
    try:
        await _create_or_update(js, _config(device, limits, source))
    except APIError as err:
        if source is None and err.err_code == ERR_SUBJECTS_OVERLAP:
            raise NatsError(
                f"stream {DECISION_STREAM}: decision subjects overlap another stream: {err.description}",
                stream=DECISION_STREAM,
            ) from err
        raise NatsError(
            f"could not create stream {DECISION_STREAM}: {err.description}", stream=DECISION_STREAM
        ) from err
    mode = "subjects" if source is None else f"source:{source}"
    log.info("decision stream %s ready (%s)", DECISION_STREAM, mode)
    return mode


class DecisionLog:
    """Keeps the last ``ring_size`` decisions and publishes each one to JetStream."""

    def __init__(
        self,
        device: str,
        *,
        ring_size: int = DEFAULT_RING_SIZE,
        limits: DecisionStreamLimits = DecisionStreamLimits(),
    ) -> None:
        self.device = device
        self.limits = limits
        self.ring: deque[dict[str, Any]] = deque(maxlen=ring_size)
        self.recorded = 0
        self.published = 0
        self.publish_errors = 0
        self.ingested = 0
        self.malformed = 0  # others' records that are not a JSON object
        self.too_large = 0  # others' records over MAX_INGESTED_BYTES
        self.last_error: str | None = None
        self.stream_mode: str | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._events: Events | None = None

    async def start(self, nc: Client, events: Events | None = None) -> None:
        """Ensure the decision stream; records then go through ``events`` (the device's
        acknowledged publisher) if given, else are published and awaited one by one."""
        self._nc = nc
        self._events = events
        self._js = nc.jetstream()
        try:
            self.stream_mode = await ensure_decision_stream(self._js, self.device, self.limits)
        except NatsError as err:  # records still go to the ring and to core NATS
            self.last_error = err.message
            log.error("%s; decisions are kept in memory only", err.message)

    async def record(self, record: dict[str, Any]) -> None:
        """Add ``record`` to the ring and publish it (publish failures are counted, not raised)."""
        self.ring.append(record)
        self.recorded += 1
        subject = decision_subject(self.device, str(record["entity"]))
        data = json.dumps(record, separators=(",", ":"), default=str).encode()
        if self._events is not None:  # acknowledged, retried across outages, drops counted there
            self._events.emit(subject, data)
            self.published += 1
            return
        if self._nc is None or not self._nc.is_connected:
            return
        try:
            if self.stream_mode is not None and self._js is not None:
                await self._js.publish(subject, data, timeout=PUBLISH_TIMEOUT_S)
            else:
                await self._nc.publish(subject, data)
            self.published += 1
        except Exception as err:  # noqa: BLE001  a full or missing stream must not stop agents
            self.publish_errors += 1
            self.last_error = f"{type(err).__name__}: {err}"
            log.warning("decision record not stored: %s", self.last_error)

    def ingest(self, record: dict[str, Any]) -> None:
        """Keep a record published by someone else (a wasm agent) in the ring, without publishing."""
        self.ring.append(record)
        self.recorded += 1
        self.ingested += 1

    def query(
        self, entity: str | None = None, agent: str | None = None, limit: int = DEFAULT_QUERY_LIMIT
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` decisions (oldest first), optionally for one entity / agent."""
        out: list[dict[str, Any]] = []
        for rec in reversed(self.ring):
            if entity is not None and rec.get("entity") != entity:
                continue
            if agent is not None and rec.get("agent") != agent:
                continue
            out.append(rec)
            if len(out) >= limit:
                break
        out.reverse()
        return out

    def status(self) -> dict[str, Any]:
        return {
            "stream": DECISION_STREAM,
            "stream_mode": self.stream_mode,
            "recorded": self.recorded,
            "published": self.published,
            "publish_errors": self.publish_errors,
            "ingested": self.ingested,
            "malformed": self.malformed,
            "too_large": self.too_large,
            "in_memory": len(self.ring),
            "last_error": self.last_error,
        }
