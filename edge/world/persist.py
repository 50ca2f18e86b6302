"""Write-behind persistence of the world to a JetStream key-value bucket.

Bucket layout (default bucket ``edge-state``, history 1, on the device's own JetStream):

======================  =================================================
key                     value (JSON)
======================  =================================================
``<entity>._meta``      ``{"kind": "drone", "labels": {"fleet": "a"}}``
``<entity>.<component>``  the component's fields, e.g. ``{"x": 1.0, ...}``
======================  =================================================

Every ``interval`` seconds the persister takes the world's changes and writes them with pipelined
(asynchronous) JetStream publishes, then waits for every acknowledgement. A write that is not
acknowledged stays pending and is retried on the next flush, newer values replacing older ones, so
a NATS outage delays persistence but loses nothing. A ``kill -9`` of the runtime loses at most the
changes of one interval.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from edge.nats.subjects import STATE_BUCKET
from edge.nats.service import loads
from edge.tasks import cancel_and_wait
from edge.errors import EdgeError, SchemaError
from edge.world.store import World

log = logging.getLogger("edge.world.persist")

DEFAULT_BUCKET = STATE_BUCKET
DEFAULT_INTERVAL = 1.0  # seconds between flushes
ACK_TIMEOUT = 5.0  # seconds to wait for the acknowledgements of one flush
STOP_FLUSH_TRIES = 2  # final flushes at stop (each within ACK_TIMEOUT); the layer stop timeout is 10 s
META = "_meta"
DELETE = None  # marker in the pending table


class PersistError(EdgeError):
    """The state bucket could not be opened or read."""


class Persister:
    """Keeps a JetStream KV bucket in step with a :class:`World`."""

    def __init__(
        self,
        world: World,
        js: JetStreamContext,
        *,
        bucket: str = DEFAULT_BUCKET,
        interval: float = DEFAULT_INTERVAL,
        max_bytes: int | None = None,
    ) -> None:
        self.world = world
        self.js = js
        self.bucket = bucket
        self.interval = interval
        self.max_bytes = max_bytes
        self._kv: KeyValue | None = None
        self._pending: dict[str, bytes | None] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.flushes = 0
        self.writes = 0
        self.failures = 0
        self.last_flush: float | None = None
        self.last_error: str | None = None
        self.skipped_on_restore = 0

    async def open(self) -> KeyValue:
        try:
            self._kv = await self.js.key_value(self.bucket)
        except BucketNotFoundError:
            kwargs: dict[str, Any] = {"bucket": self.bucket, "history": 1}
            if self.max_bytes:
                kwargs["max_bytes"] = self.max_bytes
            self._kv = await self.js.create_key_value(**kwargs)
        return self._kv

    async def restore(self) -> int:
        """Load every entity from the bucket into the (empty) world. Returns the entity count."""
        kv = self._kv or await self.open()
        metas: dict[str, dict[str, Any]] = {}
        comps: dict[str, dict[str, dict[str, Any]]] = {}
        watcher = await kv.watchall(ignore_deletes=True)
        try:
            while True:
                entry = await watcher.updates(timeout=ACK_TIMEOUT)
                if entry is None:
                    break
                entity, _, comp = entry.key.partition(".")
                try:
                    value = loads(entry.value or b"null")
                except ValueError:
                    log.warning("state key %s holds invalid JSON; skipped", entry.key)
                    self.skipped_on_restore += 1
                    continue
                if comp == META:
                    metas[entity] = value if isinstance(value, dict) else {}
                else:
                    comps.setdefault(entity, {})[comp] = value
        finally:
            await watcher.stop()
        for entity in sorted(set(metas) | set(comps)):
            meta = metas.get(entity, {})
            kind, labels = meta.get("kind", ""), meta.get("labels") or {}
            if not isinstance(kind, str) or not isinstance(labels, dict):
                log.warning("state for entity %r skipped: its kind or labels are of the wrong type", entity)
                self.skipped_on_restore += 1
                continue
            try:
                self.world.spawn(entity, kind, labels, exist_ok=True)
            except EdgeError as err:
                log.warning("state for entity %r skipped: %s", entity, err)
                self.skipped_on_restore += 1
                continue
            for comp, values in comps.get(entity, {}).items():
                try:
                    self.world.set(entity, comp, values)
                except (SchemaError, EdgeError) as err:
                    log.warning("state %s.%s skipped: %s", entity, comp, err)
                    self.skipped_on_restore += 1
        self.world.clear_changes()
        return len(self.world)

    def _collect(self) -> None:
        writes, metas, unset, removed = self.world.take_changes()
        for entity, comp, values in writes:
            self._pending[f"{entity}.{comp}"] = json.dumps(values, separators=(",", ":")).encode()
        for meta in metas:
            body = {"kind": meta.kind, "labels": meta.labels}
            self._pending[f"{meta.id}.{META}"] = json.dumps(body, separators=(",", ":")).encode()
        for entity, comp in unset:
            self._pending[f"{entity}.{comp}"] = DELETE
        for entity, comps in removed:
            for key in list(self._pending):
                if key.startswith(entity + "."):
                    del self._pending[key]
            for comp in [META, *comps]:
                self._pending[f"{entity}.{comp}"] = DELETE

    async def flush(self) -> int:
        """Write every pending change and wait for the acknowledgements. Returns keys written."""
        async with self._lock:
            kv = self._kv or await self.open()
            self._collect()
            if not self._pending:
                return 0
            batch = self._pending
            self._pending = {}
            subject_prefix = f"$KV.{self.bucket}."
            futures: list[tuple[str, bytes | None, asyncio.Future[Any]]] = []
            deletes: list[str] = []
            acked: set[str] = set()
            try:
                for key, value in batch.items():
                    if value is DELETE:
                        deletes.append(key)
                        continue
                    fut = await self.js.publish_async(subject_prefix + key, value)
                    futures.append((key, value, fut))
                for key, _value, fut in futures:
                    await asyncio.wait_for(fut, ACK_TIMEOUT)
                    acked.add(key)
                for key in deletes:
                    await kv.delete(key)
                    acked.add(key)
            except BaseException as err:
                # NATS down or slow, or this flush cancelled (a stop): everything not acknowledged
                # goes back to pending, where a newer value taken meanwhile wins over it
                for key, value in batch.items():
                    if key not in acked:
                        self._pending.setdefault(key, value)
                if not isinstance(err, Exception):
                    raise
                self.failures += 1
                self.last_error = f"{type(err).__name__}: {err}"
                log.warning("state flush failed, %d keys kept for retry: %s", len(self._pending), self.last_error)
                return 0
            done = len(acked)
            self.flushes += 1
            self.writes += done
            self.last_flush = time.time()
            self.last_error = None
            return done

    name = "state"  # a layer: its status is the ``state`` section of ``edge status``

    async def start(self, ctx: object = None) -> None:
        """Start the write-behind flush loop (``ctx``, the device context, is not needed: the
        persister was built over the world and JetStream before the world was restored)."""
        await self.open()
        self._task = asyncio.create_task(self._run(), name="edge.world.persist")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def stop(self) -> None:
        """Stop the loop and flush what is left: a flush the stop cancelled keeps its keys pending,
        and a failed final flush is retried (``STOP_FLUSH_TRIES`` in all) before giving up."""
        await cancel_and_wait(self._task)
        self._task = None
        for _ in range(STOP_FLUSH_TRIES):
            await self.flush()
            if not self._pending:
                return
        log.error("state flush at stop failed; %d keys not persisted: %s", len(self._pending), self.last_error)

    def status(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "interval_s": self.interval,
            "flushes": self.flushes,
            "writes": self.writes,
            "failures": self.failures,
            "skipped_on_restore": self.skipped_on_restore,
            "pending": len(self._pending),
            "last_flush": self.last_flush,
            "last_error": self.last_error,
        }
