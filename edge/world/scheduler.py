"""Runs systems: at a tick rate over every entity matching their query, or on messages.

A *tick system* declares the numeric fields it reads and writes. Each tick the scheduler asks the
world for the matching entities and runs the system once for the whole batch, in one of two ways:

* **shared** (the world's columns are in shared memory and the runner has ``run_shared``): the
  runner gets where the columns live and the batch's slots, and the system reads and writes the
  world's columns in place. The batch holds a :class:`~edge.world.store.BatchLease` until the
  runner says the other side is done, so freed slots are not reused meanwhile. Fields the system
  writes are last-writer-wins against other writers (API, drivers) of the same fields.
* **copy**: gather the columns into the runner's batch buffers, run, scatter the written columns
  back; if the world's structure changed meanwhile, the result is discarded (``stale``).

A *message system* gets the messages of its subscriptions in batches, in order, through a
bounded inbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edge.tasks import cancel_and_wait
from edge.world.store import ColumnRef, F64Array, IndexArray, Query, World

log = logging.getLogger("edge.world.scheduler")

MAX_DT_FACTOR = 5.0  # a late tick advances time by at most this many periods
INBOX_LIMIT = 10_000  # messages waiting for one system; beyond this new ones are dropped
MAX_BATCH = 1_000  # messages handed to a system in one call


class TickRunner(Protocol):
    """What the scheduler needs from a system that runs on ticks."""

    name: str

    def buffers(self, n: int) -> Sequence[F64Array]:
        """Column buffers for a batch of ``n`` entities, in column order (reads, then writes)."""
        ...

    async def run(self, n: int, dt: float, ids: Sequence[str] | None) -> bool:
        """Run one tick over the filled buffers; False if the system could not run."""
        ...


@dataclass(frozen=True)
class SharedBatch:
    """A tick batch on the world's shared columns (no copy of the data on the runtime side).

    ``refs`` are the batch columns in column order (reads, then writes not read); row ``i`` of
    the batch is slot ``index[i]``, or slot ``i`` when ``index`` is None (contiguous).
    ``version`` changes whenever ``n``, ``index``, ``ids`` or ``refs`` may have changed.
    """

    n: int
    version: int
    refs: tuple[ColumnRef, ...]
    index: IndexArray | None
    ids: Sequence[str]


@runtime_checkable
class SharedTickRunner(TickRunner, Protocol):
    """A TickRunner that can also run directly on shared world columns."""

    async def run_shared(self, batch: SharedBatch, dt: float, on_done: Callable[[], None]) -> bool | None:
        """Run one tick reading and writing the world's columns in place.

        Must call ``on_done`` exactly once, when nothing can touch the batch any more (the
        other side answered or is dead), even if this coroutine is cancelled or raises.
        Returns True if the tick ran, False if the system could not run, None if shared
        batches are not supported (the loop then uses ``buffers``/``run`` from now on).
        """
        ...


@dataclass
class TickStats:
    ticks: int = 0
    skipped: int = 0  # the runner was not available (backoff, failed)
    stale: int = 0  # the world changed shape during the tick; results discarded
    overruns: int = 0  # a tick took longer than the period
    entities: int = 0  # batch size of the last tick
    last_ms: float = 0.0  # duration of the last tick
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=256))

    def to_dict(self) -> dict[str, Any]:
        d = sorted(self.durations)
        p50 = d[len(d) // 2] * 1000 if d else 0.0
        p99 = d[min(len(d) - 1, int(len(d) * 0.99))] * 1000 if d else 0.0
        return {
            "ticks": self.ticks,
            "skipped": self.skipped,
            "stale": self.stale,
            "overruns": self.overruns,
            "entities": self.entities,
            "last_ms": round(self.last_ms, 3),
            "p50_ms": round(p50, 3),
            "p99_ms": round(p99, 3),
        }


class TickLoop:
    """Ticks one system at ``hz`` over the entities that have every queried component."""

    def __init__(
        self,
        world: World,
        runner: TickRunner,
        *,
        read: Sequence[str],
        write: Sequence[str],
        hz: float,
    ) -> None:
        self.world = world
        self.runner = runner
        self.read = tuple(read)
        self.write = tuple(write)
        self.columns = self.read + tuple(f for f in self.write if f not in self.read)
        self._write_pos = [self.columns.index(f) for f in self.write]
        self.components = tuple(sorted({f.partition(".")[0] for f in self.columns}))
        self.period = 1.0 / hz
        self.stats = TickStats()
        self.last_at: float | None = None  # loop time of the last tick started
        self.first_at: float | None = None  # loop time of the first tick started
        self._task: asyncio.Task[None] | None = None
        self._in_tick = False  # the task is inside tick_once
        self._stop_after: asyncio.Future[None] | None = None  # stop_after_tick is waiting
        self._sent_version = -1
        self._shared: SharedTickRunner | None = runner if isinstance(runner, SharedTickRunner) else None
        for name in self.columns:
            world.column(name)  # fail early on an unknown or non-numeric field

    @property
    def mode(self) -> str:
        """``shared`` (in place on the world's columns) or ``copy`` (gather / scatter)."""
        return "shared" if self._shared is not None and self.world.shared else "copy"

    async def tick_once(self, dt: float) -> bool:
        world = self.world
        q: Query = world.query(self.components)
        n = len(q)
        self.stats.entities = n
        if self._shared is not None and world.shared:
            ok = await self._tick_shared(self._shared, q, dt)
            if ok is not None:
                return ok
            log.info("system %s cannot run on shared columns; using copies", self.runner.name)
            self._shared = None
        buffers = self.runner.buffers(n)
        world.gather(q, self.columns, buffers)
        ids = q.ids if q.version != self._sent_version else None
        started = time.perf_counter()
        ok = await self.runner.run(n, dt, ids)
        elapsed = time.perf_counter() - started
        self.stats.last_ms = elapsed * 1000
        self.stats.durations.append(elapsed)
        if not ok:
            self.stats.skipped += 1
            self._sent_version = -1
            return False
        self._sent_version = q.version
        if world.version != q.version:
            self.stats.stale += 1
            return False
        world.scatter(q, self.write, [buffers[i] for i in self._write_pos])
        self.stats.ticks += 1
        return True

    async def _tick_shared(self, runner: SharedTickRunner, q: Query, dt: float) -> bool | None:
        world = self.world
        refs = world.shared_refs(self.columns)
        assert refs is not None
        batch = SharedBatch(len(q), q.version, refs, None if q.contiguous else q.index, q.ids)
        lease = world.lease()
        started = time.perf_counter()
        ok = await runner.run_shared(batch, dt, lease.release)
        elapsed = time.perf_counter() - started
        if ok is None:
            return None
        self.stats.last_ms = elapsed * 1000
        self.stats.durations.append(elapsed)
        if not ok:
            self.stats.skipped += 1
            return False
        # The slots of the batch kept their entities (quarantine) and their place (growth is in
        # place), so the results are valid even if the world changed shape meanwhile.
        world.mark_written(q, self.write)
        self.stats.ticks += 1
        return True

    def start(self, *, since: float | None = None) -> None:
        """Start ticking. ``since`` (a loop time: the last tick of a version this one replaces,
        :attr:`last_at`) keeps that schedule: the first tick is due one period after it and its
        ``dt`` is measured from it, so a swap shorter than a period misses no tick."""
        self._task = asyncio.create_task(self._run(since), name=f"edge.tick.{self.runner.name}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def stop_after_tick(self) -> float | None:
        """Stop at a tick boundary: a tick under way finishes first (its results are kept),
        no tick starts after it. Returns :attr:`last_at` (the start of the last tick), for a
        successor's :meth:`start` (``since=``) to take the very next scheduled tick."""
        task = self._task
        if task is None or task.done():
            self._task = None
            return self.last_at
        if self._in_tick:
            self._stop_after = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._stop_after)
        await cancel_and_wait(task)
        self._task = None
        self._stop_after = None
        return self.last_at

    async def _run(self, since: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time() if since is None else min(since, loop.time())
        next_at = last + self.period
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            dt = min(now - last, self.period * MAX_DT_FACTOR)
            last = now
            self.last_at = now
            if self.first_at is None:
                self.first_at = now
            self._in_tick = True
            try:
                await self.tick_once(dt)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tick of %s failed", self.runner.name)
                self.stats.skipped += 1
            finally:
                self._in_tick = False
                if self._stop_after is not None and not self._stop_after.done():
                    self._stop_after.set_result(None)  # stop_after_tick: this was the last
            if self._stop_after is not None:
                await asyncio.Event().wait()  # cancelled by stop_after_tick
            next_at += self.period
            if loop.time() > next_at:
                self.stats.overruns += 1
                next_at = loop.time()


class NativeTickRunner:
    """A tick system written in Python: ``fn(columns, n, dt)`` updates the write columns in place."""

    def __init__(self, name: str, ncolumns: int, fn: Callable[[list[F64Array], int, float], None]) -> None:
        self.name = name
        self._fn = fn
        self._ncolumns = ncolumns
        self._buffers: list[F64Array] = []

    def buffers(self, n: int) -> Sequence[F64Array]:
        if not self._buffers or len(self._buffers[0]) < n:
            size = max(n, 16)
            self._buffers = [np.zeros(size, dtype=np.float64) for _ in range(self._ncolumns)]
        return [b[:n] for b in self._buffers]

    async def run(self, n: int, dt: float, ids: Sequence[str] | None) -> bool:
        self._fn([b[:n] for b in self._buffers], n, dt)
        return True
