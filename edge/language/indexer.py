"""Incremental indexing of a device stream through a durable JetStream consumer.

``EVT`` holds what the device says (events, status texts, agent decisions, command results) and
``LANG`` (:mod:`edge.language.stream`) the warning log lines, tool calls and operator notes. A
:class:`StreamIndexer` per stream pulls it in batches, turns each message into an entry
(:mod:`edge.language.extract`), embeds the batch and commits it with the stream cursor in one
transaction, then acknowledges the messages.

Resume: the consumer is named after the index (``lang-<digest[:12]>``). The index's own cursor is
the truth: when the consumer's acknowledged floor is past it (the index file was removed) the
consumer is recreated from ``cursor + 1``; messages at or below the cursor (acknowledged late,
after a crash) are skipped. A malformed message is counted, logged and acknowledged, never fatal.

Novelty (only for the live index, not for a background re-index): a new line whose nearest
earlier line of the same entity has a cosine similarity below ``1 - threshold`` (or the first
line ever of that entity) is published as ``edge.<d>.lang.<entity>.novelty``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from edge.backoff import Backoff
from edge.language.extract import Malformed, extract
from edge.language.search import Index
from edge.language.store import Entry
from edge.language.stream import lang_subject
from edge.nats import subjects

log = logging.getLogger("edge.language.indexer")

BATCH = 64  # messages per fetch
FETCH_TIMEOUT_S = 1.0
ACK_WAIT_S = 60.0
NOVELTY_KIND = "novelty"
NO_NOVELTY_KINDS = frozenset({"command", "tool_call", "note", NOVELTY_KIND})
MALFORMED_LOG_INTERVAL_S = 30.0  # at most one warning about malformed messages this often (all are counted)

#: ``emit(subject, data, msg_id)``: the device's acknowledged publisher.
Emit = Callable[[str, bytes, str], None]


def consumer_name(digest: str) -> str:
    return f"lang-{digest[:12]}"


class StreamIndexer:
    """Follows one stream into one index (see the module docstring)."""

    def __init__(self, index: Index, js: JetStreamContext, device: str, *, stream: str = subjects.EVT_STREAM,
                 skip_kinds: tuple[str, ...] = (), novelty_threshold: float = 0.55,
                 emit: Emit | None = None, max_entries: int | None = None) -> None:
        self.index = index
        self.js = js
        self.device = device
        self.stream = stream
        self.skip_kinds = tuple(set(skip_kinds) | {NOVELTY_KIND})
        self.novelty_threshold = novelty_threshold
        self.emit = emit  # None: no novelty events (a background re-index)
        self.max_entries = max_entries
        self.durable = consumer_name(index.digest)
        self.indexed = 0
        self.skipped = 0
        self.malformed = 0
        self._warned_at = -MALFORMED_LOG_INTERVAL_S
        self.novel = 0
        self.pending: int | None = None
        self.caught_up = asyncio.Event()
        self.last_error: str | None = None
        self.last_malformed: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._psub: Any = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"language-indexer-{self.durable}")

    async def stop(self, *, delete_consumer: bool = False) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: BLE001  cancelled, or its last error (already logged)
                pass
            self._task = None
        if self._psub is not None:  # its pending pull request must not take new messages
            try:
                await self._psub.unsubscribe()
            except Exception:  # noqa: BLE001  the connection may be closed already
                pass
            self._psub = None
        if delete_consumer:
            try:
                await self.js.delete_consumer(self.stream, self.durable)
            except Exception:  # noqa: BLE001  already gone, or the connection is
                pass

    def status(self) -> dict[str, Any]:
        return {"consumer": self.durable, "stream": self.stream, "indexed": self.indexed,
                "skipped": self.skipped, "malformed": self.malformed, "novel": self.novel,
                "pending": self.pending, "caught_up": self.caught_up.is_set(),
                "last_error": self.last_error, "last_malformed": self.last_malformed}

    # -- the loop -----------------------------------------------------------------------------

    async def _ensure_consumer(self) -> Any:
        cursor = await asyncio.to_thread(self.index.store.cursor, self.stream)
        try:
            info = await self.js.consumer_info(self.stream, self.durable)
            if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) > cursor:
                log.info("consumer %s is past the index (%d > %d): restarting it from the index",
                         self.durable, info.ack_floor.stream_seq, cursor)
                await self.js.delete_consumer(self.stream, self.durable)
                raise NotFoundError
        except NotFoundError:
            cfg = ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
                                 deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=cursor + 1,
                                 ack_wait=ACK_WAIT_S, max_ack_pending=BATCH * 4,
                                 description=f"language index {self.index.digest[:12]}")
            await self.js.add_consumer(self.stream, cfg)
        return await self.js.pull_subscribe_bind(self.durable, stream=self.stream)

    async def _run(self) -> None:
        backoff = Backoff(0.5, 30.0, stable_after_s=30.0)
        while True:
            started = time.monotonic()
            try:
                psub = self._psub = await self._ensure_consumer()
                while True:
                    try:
                        msgs = await psub.fetch(BATCH, timeout=FETCH_TIMEOUT_S)
                    except (TimeoutError, NatsTimeout):
                        self.pending = 0
                        self.caught_up.set()
                        continue
                    await self._batch(msgs)
                    backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001  the server restarts, the stream is missing ...
                self.last_error = f"{type(err).__name__}: {err}"
                if self._psub is not None:
                    with contextlib.suppress(Exception):
                        await self._psub.unsubscribe()
                    self._psub = None
                delay = backoff.next(ran_s=time.monotonic() - started)
                log.warning("language indexer %s: %s; retrying in %.1f s", self.durable, self.last_error, delay)
                await asyncio.sleep(delay)

    async def _batch(self, msgs: list[Any]) -> None:
        entries: list[Entry] = []
        last = 0
        for msg in msgs:
            md = msg.metadata
            seq = int(md.sequence.stream)
            last = max(last, seq)
            self.pending = int(md.num_pending)
            t = md.timestamp.timestamp() if md.timestamp else time.time()
            try:
                entry = extract(msg.subject, msg.data, t=t, stream=self.stream, seq=seq,
                                skip_kinds=self.skip_kinds)
            except Malformed as err:
                self.malformed += 1
                self.last_malformed = err.message
                now = time.monotonic()
                if now - self._warned_at >= MALFORMED_LOG_INTERVAL_S:  # counted always, logged rarely
                    self._warned_at = now
                    log.warning("language indexer: dropped a malformed message (%s; %d so far)",
                                err.message, self.malformed)
                continue
            if entry is None:
                self.skipped += 1
            else:
                entries.append(entry)
        if entries:
            ids, vecs = await self.index.add(entries, (self.stream, last))
            self.indexed += sum(1 for i in ids if i is not None)
            if self.emit is not None:
                await self._novelty(entries, ids, vecs)
        else:
            await asyncio.to_thread(self.index.store.set_cursor, self.stream, last)
        for msg in msgs:
            await msg.ack()
        if self.max_entries is not None:
            await asyncio.to_thread(self.index.store.evict, self.max_entries)
        if self.pending == 0:
            self.caught_up.set()

    async def _novelty(self, entries: list[Entry], ids: list[int | None], vecs: Any) -> None:
        fresh = [(e, i, v) for e, i, v in zip(entries, ids, vecs)
                 if i is not None and e.entity and e.kind not in NO_NOVELTY_KINDS]
        if self.emit is None:
            return
        for entry, eid, vec in fresh:
            sim, nearest = await asyncio.to_thread(self.index.store.nearest_of_entity, entry.entity, vec, eid)
            novelty = 1.0 - sim if nearest is not None else 1.0
            if novelty < self.novelty_threshold:
                continue
            near = (await asyncio.to_thread(self.index.store.rows, [nearest])).get(nearest) if nearest else None
            body = {"entity": entry.entity, "text": entry.text, "kind": entry.kind, "source": entry.source,
                    "stream": entry.stream, "seq": entry.seq, "t": entry.t, "novelty": round(novelty, 4),
                    "first": nearest is None,
                    "nearest": {"text": near["text"], "similarity": round(sim, 4), "stream": near["stream"],
                                "seq": near["seq"]} if near else None}
            self.novel += 1
            self.emit(lang_subject(self.device, entry.entity, NOVELTY_KIND),
                      json.dumps(body, separators=(",", ":")).encode(),
                      f"novelty.{entry.stream}.{entry.seq}.{self.index.digest[:8]}")


class Followers:
    """One :class:`StreamIndexer` per stream, into one index: started, stopped and reported together."""

    def __init__(self, indexers: list[StreamIndexer]) -> None:
        self.indexers = indexers

    @property
    def durable(self) -> str:
        return self.indexers[0].durable

    def start(self) -> None:
        for ix in self.indexers:
            ix.start()

    async def stop(self, *, delete_consumer: bool = False) -> None:
        for ix in self.indexers:
            await ix.stop(delete_consumer=delete_consumer)

    async def caught_up(self) -> None:
        for ix in self.indexers:
            await ix.caught_up.wait()

    def is_caught_up(self) -> bool:
        return all(ix.caught_up.is_set() for ix in self.indexers)

    def status(self) -> dict[str, Any]:
        per = {ix.stream: ix.status() for ix in self.indexers}
        out: dict[str, Any] = {"consumer": self.durable}
        for key in ("indexed", "skipped", "malformed", "novel"):
            out[key] = sum(s[key] for s in per.values())
        pend = [s["pending"] for s in per.values()]
        out["pending"] = None if any(p is None for p in pend) else sum(pend)
        out["caught_up"] = self.is_caught_up()
        out["last_malformed"] = next((s["last_malformed"] for s in per.values() if s["last_malformed"]), None)
        out["last_error"] = next((s["last_error"] for s in per.values() if s["last_error"]), None)
        out["streams"] = per
        return out
