"""SandboxPool: runs wasm components in worker processes and supervises them.

The pool lives in the runtime process (asyncio). It checks, memory-pins and instruments each
module (:func:`edge.wasm.abi.prepare_module`), instantiates it in a worker process
(:mod:`edge.wasm.worker`), and exposes three hot-path calls:

* :meth:`SandboxPool.tick_shared` runs ``edge_tick`` directly on the world's shared column
  files (the worker maps them; only the slot index travels, and only when it changed).
* :meth:`SandboxPool.batch` returns float64 column views backed by shared memory; the caller
  fills them from the world, calls :meth:`SandboxPool.tick`, and copies the write columns back
  (the *copy* mode, for worlds without shared columns).
* :meth:`SandboxPool.tick` runs ``edge_tick`` on the batch (one pipe round trip).
* :meth:`SandboxPool.deliver` hands a batch of messages to ``edge_on_message``; several batches
  may be in flight (``max_in_flight`` per worker), and it returns once the batch is sent.

Effects come back with each reply: ``publish`` and ``kv_put`` calls go to the
:class:`HostCallbacks` in order, from one background task. Supervision: a fault (trap, out of
gas, wall-clock deadline, worker crash) is reported to ``on_fault`` and the component is
restarted with exponential backoff; after ``FAIL_LIMIT`` failures within ``FAIL_WINDOW_S`` it
stays ``failed`` (visible in :meth:`status`) until loaded again. A crashed worker is replaced and
every component it hosted is reloaded with its KV state; a worker is also replaced transparently
after ``recycle_after`` instantiations, because wasm3 never frees a runtime.

A component's linear memory does not survive a restart, crash or recycle: ``edge_init`` runs
again and durable state belongs in its KV.

Inference: workers hold no models. A component's ``infer`` import sends a nested request to the
pool during the call; the pool runs ``HostCallbacks.infer`` (bounded by ``infer_timeout_s``; the
call's deadline clock is paused meanwhile, and one call may wait at most ``infer_budget_s`` in
total) and answers the worker, which then returns to the component.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import mmap
import os
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np

from edge.errors import ComponentLoadError, EdgeError, SandboxError
from edge.wasm.abi import (
    INFER_BAD_INPUT,
    INFER_FAILED,
    INFER_SMALL_OUTPUT,
    INFER_UNKNOWN,
    ModuleInfo,
    prepare_module,
)
from edge.wasm.manifest import Manifest
from edge.wasm.procs import HostRequest, Pending, WorkerGone, WorkerProcess
from edge.wasm.protocol import FLAG_SHARED, BindSpec, CallResult, LoadSpec, encode_tick

log = logging.getLogger("edge.wasm.pool")
component_log = logging.getLogger("edge.wasm.component")

#: Instantiations a worker process serves before it is replaced (each leaks its wasm3 runtime).
DEFAULT_RECYCLE_AFTER = 200
#: Memory a worker may have leaked (instances it no longer runs) before it is replaced (bytes).
DEFAULT_RECYCLE_LEAK_BYTES = 64 * 2**20
#: Estimated memory wasm3 keeps per instantiation besides linear memory (bytes).
INSTANCE_OVERHEAD_BYTES = 256 * 1024
#: Wall-clock limit of one call into a worker before the worker is SIGKILLed (seconds).
DEFAULT_DEADLINE_S = 5.0
#: First restart delay after a fault (seconds); doubles per failure in the window.
DEFAULT_BACKOFF_BASE_S = 0.5
#: Longest restart delay (seconds).
DEFAULT_BACKOFF_MAX_S = 30.0
#: Failures within FAIL_WINDOW_S after which a component stays failed.
FAIL_LIMIT = 5
FAIL_WINDOW_S = 60.0
#: wasm3 stack per component (bytes).
DEFAULT_STACK_BYTES = 64 * 1024
#: Message batches in flight per worker before deliver() waits.
DEFAULT_MAX_IN_FLIGHT = 8
#: Worker processes in a pool.
DEFAULT_WORKERS = 2
#: Smallest batch capacity allocated (entities).
MIN_BATCH_CAPACITY = 64
#: Prepared modules kept (check + pin + instrument is pure Python: cache it).
PREPARED_CACHE_SIZE = 32
#: Seconds between two "publish denied" warnings of one component.
DENIED_LOG_INTERVAL_S = 5.0
#: Longest one ``infer`` import call may wait for the host's model (seconds); then it returns -5.
DEFAULT_INFER_TIMEOUT_S = 2.0
#: Total time one export call may spend waiting for ``infer`` (seconds): the deadline clock is
#: paused while an infer runs, so this bounds how long a call can hold its worker through it.
DEFAULT_INFER_BUDGET_S = 10.0
#: Reasons of an EdgeError raised by ``HostCallbacks.infer`` -> infer return code.
INFER_REASON_CODES = {"unknown-model": INFER_UNKNOWN, "input-size": INFER_BAD_INPUT}

COUNTERS = ("ticks", "messages", "published", "denied", "dropped", "errors", "logs_dropped",
            "traps", "out_of_gas", "deadlines", "crashes", "infers", "infer_errors",
            "denied_infer")
_FAULT_COUNTER = {"trap": "traps", "init_failed": "traps", "out_of_gas": "out_of_gas",
                  "deadline": "deadlines", "crashed": "crashes"}
_LOG_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}


class HostCallbacks(Protocol):
    """What the runtime provides to the pool.

    ``publish`` sends a message a component published (already checked against its grants);
    ``kv_put`` persists one key of the component's private KV; both are awaited in order from
    one task, so they should not block for long. ``on_fault`` is called (synchronously, in the
    event loop) for every fault; it must not raise.

    Optional: ``async def infer(self, component: str, model: str, data: bytes) -> bytes`` runs
    ``model`` (already checked against the component's ``run.models`` grant) on ``data``, the
    bytes of every input tensor in order, and returns the bytes of every output in order. It
    raises an :class:`~edge.errors.EdgeError` whose ``reason`` is ``unknown-model`` (-> -2),
    ``input-size`` (-> -3; ``expected`` = the input size in bytes), anything else -> -5. It runs
    while the component's worker waits, bounded by the pool's ``infer_timeout_s``. A host
    without it answers every infer with -2.
    """

    async def publish(self, component: str, subject: str, data: bytes) -> None: ...

    async def kv_put(self, component: str, key: str, value: bytes) -> None: ...

    def on_fault(self, component: str, fault: SandboxError) -> None: ...


class _Batch:
    """Column storage shared with the worker: a file in /dev/shm mapped by both processes."""

    def __init__(self, path: Path, ncols: int, capacity: int) -> None:
        self.path = path
        self.ncols = ncols
        self.capacity = capacity
        size = max(ncols * capacity * 8, 8)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.array = np.frombuffer(self.map, dtype=np.float64,
                                   count=ncols * capacity).reshape(ncols, capacity)
        self._views: tuple[int, list[np.ndarray]] = (-1, [])

    def views(self, n: int) -> list[np.ndarray]:
        if self._views[0] != n:
            self._views = (n, [self.array[c, :n] for c in range(self.ncols)])
        return self._views[1]

    def discard(self) -> None:
        # The mapping stays valid while views of it exist; only the name goes.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@dataclass
class _Component:
    manifest: Manifest
    wasm: bytes
    info: ModuleInfo
    kv: dict[str, bytes]
    state: str = "starting"
    worker: WorkerProcess | None = None
    generation: int = 0
    restarts: int = 0
    failures: deque[float] = field(default_factory=deque)
    last_fault: SandboxError | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    gas_last: int = 0
    batch: _Batch | None = None
    batch_gen: int = 0
    batch_sent: bool = False
    ids: list[str] | None = None
    ids_sent: bool = False
    handle: int = 0
    bound: tuple[object, ...] | None = None  # what the worker has bound (shared mode)
    shared_refused: bool = False
    timer: asyncio.TimerHandle | None = None
    denied_logged_at: float = 0.0

    @property
    def name(self) -> str:
        return self.manifest.name


class SandboxPool:
    """Hosts components in sandbox worker processes. See the module docstring."""

    def __init__(self, device: str, host: HostCallbacks, *,
                 recycle_after: int = DEFAULT_RECYCLE_AFTER,
                 recycle_leak_bytes: int = DEFAULT_RECYCLE_LEAK_BYTES,
                 deadline_s: float = DEFAULT_DEADLINE_S,
                 workers: int = DEFAULT_WORKERS,
                 backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
                 backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 stack_bytes: int = DEFAULT_STACK_BYTES,
                 infer_timeout_s: float = DEFAULT_INFER_TIMEOUT_S,
                 infer_budget_s: float = DEFAULT_INFER_BUDGET_S) -> None:
        if recycle_after < 1 or workers < 1 or deadline_s <= 0:
            raise ValueError("recycle_after and workers must be >= 1, deadline_s > 0")
        self.device = device
        self._host = host
        self.recycle_after = recycle_after
        self.recycle_leak_bytes = recycle_leak_bytes
        self.deadline_s = deadline_s
        self.n_workers = workers
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_in_flight = max_in_flight
        self.stack_bytes = stack_bytes
        self.infer_timeout_s = infer_timeout_s
        self.infer_budget_s = infer_budget_s
        self._workers: list[WorkerProcess] = []
        self._comps: dict[str, _Component] = {}
        self._lock = asyncio.Lock()
        self._effects: asyncio.Queue[tuple[str, CallResult]] = asyncio.Queue()
        self._effects_task: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._prepared: dict[tuple[bytes, Manifest], tuple[bytes, ModuleInfo]] = {}
        self._shm_dir: Path | None = None
        self._started = False
        self._handles = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker processes and the effects task."""
        if self._started:
            return
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._shm_dir = Path(tempfile.mkdtemp(prefix="edge-sandbox-", dir=base))
        self._effects_task = asyncio.create_task(self._run_effects(), name="sandbox-effects")
        for i in range(self.n_workers):
            self._workers.append(await self._new_worker(i))
        self._started = True

    async def stop(self) -> None:
        """Flush effects, stop every worker and remove the shared memory files."""
        if not self._started:
            return
        self._started = False
        for comp in self._comps.values():
            if comp.timer is not None:
                comp.timer.cancel()
        for task in list(self._bg):
            task.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._effects.join(), 2.0)
        for w in self._workers:
            await w.stop()
        self._workers.clear()
        if self._effects_task is not None:
            self._effects_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._effects_task
        for comp in self._comps.values():
            comp.state = "unloaded" if comp.state != "failed" else comp.state
            comp.worker = None
        if self._shm_dir is not None:
            shutil.rmtree(self._shm_dir, ignore_errors=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- loading -----------------------------------------------------------------------------

    async def load(self, manifest: Manifest, kv: Mapping[str, bytes] | None = None) -> None:
        """Check and instrument the module, start it in a worker and call ``edge_init``.

        Raises ComponentLoadError if the module is refused (contract, memory, wasm3 load error).
        A fault in ``edge_init`` does not raise: it is reported like any fault and the component
        restarts with backoff. Loading a name that is already loaded replaces it.
        """
        self._check_started()
        wasm_src = await asyncio.to_thread(_read_module, manifest)
        key = (hashlib.sha256(wasm_src).digest(), manifest)
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = await asyncio.to_thread(prepare_module, wasm_src, manifest)
            if len(self._prepared) >= PREPARED_CACHE_SIZE:
                self._prepared.pop(next(iter(self._prepared)))
            self._prepared[key] = prepared
        wasm, info = prepared
        async with self._lock:
            old = self._comps.get(manifest.name)
            if old is not None:
                await self._unload_locked(old)
            self._handles += 1
            comp = _Component(manifest=manifest, wasm=wasm, info=info, kv=dict(kv or {}),
                              handle=self._handles)
            self._comps[manifest.name] = comp
            try:
                await self._instantiate(comp, self._pick_worker())
            except ComponentLoadError:
                comp.state = "unloaded"
                del self._comps[manifest.name]
                raise

    async def unload(self, name: str) -> None:
        """Stop a component and forget its instance (its status stays, as ``unloaded``)."""
        comp = self._get(name)
        async with self._lock:
            await self._unload_locked(comp)

    async def _unload_locked(self, comp: _Component) -> None:
        if comp.timer is not None:
            comp.timer.cancel()
            comp.timer = None
        comp.generation += 1
        worker = comp.worker
        comp.worker = None
        comp.state = "unloaded"
        if worker is not None and worker.alive:
            worker.hosted.discard(comp.name)
            with contextlib.suppress(WorkerGone):
                await worker.send(("unload", comp.name), comp.name, "unload")
        if comp.batch is not None:
            comp.batch.discard()
            comp.batch = None

    def _pick_worker(self) -> WorkerProcess:
        return min(self._workers, key=lambda w: len(w.hosted))

    async def _instantiate(self, comp: _Component, worker: WorkerProcess, *,
                           allow_recycle: bool = True) -> None:
        """Load ``comp`` into ``worker`` (lock held). Recycles the worker first if it is due."""
        if allow_recycle and self._recycle_due(worker):
            worker = await self._replace_worker(worker, "recycle")
        m = comp.manifest
        spec = LoadSpec(
            name=m.name, wasm=comp.wasm, device=self.device, ncols=len(m.columns),
            writable=m.writable, publish=m.publish, gas=m.limits.gas,
            publish_per_call=m.limits.publish_per_call, kv=dict(comp.kv),
            stack_bytes=self.stack_bytes, handle=comp.handle, models=m.models,
        )
        comp.generation += 1
        comp.state = "starting"
        comp.worker = worker
        comp.batch_sent = False
        comp.ids_sent = False
        comp.bound = None
        worker.hosted.add(m.name)
        worker.instances += 1
        worker.reserved_bytes += _instance_bytes(m)
        try:
            status, payload = await worker.send(("load", spec), m.name, "edge_init")
        except WorkerGone:
            return  # the crash handler reports it and restarts it
        if status == "refused":
            worker.hosted.discard(m.name)
            comp.worker = None
            raise ComponentLoadError(f"wasm3 refused component '{m.name}': {payload}",
                                     component=m.name, path=str(m.module))
        if status == "error":
            self._fault(comp, ("trap", "edge_init", str(payload)))
            return
        assert isinstance(payload, CallResult)
        self._apply(comp, payload)
        if status == "fault":
            self._fault(comp, payload.fault or ("trap", "edge_init", "unknown"))
            return
        comp.state = "running"

    # -- hot path ----------------------------------------------------------------------------

    def batch(self, name: str, n: int) -> list[np.ndarray]:
        """Float64 column views of length ``n`` (shared memory), in manifest column order.

        Call it before each tick: growing the batch maps new storage, and views from earlier
        calls then no longer reach the worker.
        """
        comp = self._get(name)
        if n < 0:
            raise ValueError("batch size must be >= 0")
        b = comp.batch
        if b is None or n > b.capacity:
            assert self._shm_dir is not None, "pool not started"
            cap = max(n, MIN_BATCH_CAPACITY, 2 * b.capacity if b is not None else 0)
            comp.batch_gen += 1
            new = _Batch(self._shm_dir / f"{name}.{comp.batch_gen}.cols",
                         len(comp.manifest.columns), cap)
            if b is not None:
                b.discard()
            comp.batch = b = new
            comp.batch_sent = False
        return b.views(n)

    async def tick(self, name: str, n: int, dt: float,
                   ids: Sequence[str] | None = None) -> bool:
        """Run ``edge_tick`` over the first ``n`` rows of the batch; write columns are updated in
        place. ``ids`` are the entity IDs of the rows (None = unchanged since the last tick).
        Returns False if the component is not running (backoff, failed, restarting) or the call
        faulted (the fault is reported through ``on_fault``)."""
        comp = self._get(name)
        if ids is not None:
            comp.ids = list(ids)
            comp.ids_sent = False
        worker = comp.worker
        if comp.state != "running" or worker is None or not comp.info.ticks:
            return False
        b = comp.batch
        if comp.manifest.columns and (b is None or n > b.capacity):
            raise SandboxError(f"tick of component '{name}' with {n} entities: call batch() "
                               "first", component=name, export="edge_tick", reason="usage")
        shm = None
        if b is not None and not comp.batch_sent:
            shm = (str(b.path), b.capacity)
        send_ids = comp.ids if not comp.ids_sent else None
        gen = comp.generation
        if shm is not None or send_ids is not None:
            worker.send(("setup", name, send_ids, shm), name, "edge_tick")  # answered in order
        fut = worker.send(encode_tick(comp.handle, n, float(dt)), name, "edge_tick")
        comp.batch_sent = True
        comp.ids_sent = True
        comp.bound = None
        try:
            status, payload = await fut
        except WorkerGone:
            return False
        return self._finish_call(comp, status, payload, "edge_tick", 0,
                                 current=comp.generation == gen)

    async def tick_shared(self, name: str, n: int, dt: float, *, version: object,
                          columns: Sequence[tuple[str, int, int]],
                          index: np.ndarray | None, ids: Sequence[str],
                          on_done: Callable[[], None]) -> bool | None:
        """Run ``edge_tick`` directly on the world's shared column files (shared mode).

        ``columns`` are ``(path, inode, nbytes)`` per manifest column; row ``i`` is slot
        ``index[i]`` (or ``i`` when ``index`` is None). The binding is sent to the worker only
        when ``version`` differs from the last one it got. ``on_done`` is called exactly once,
        when the worker can no longer touch the columns for this tick (it answered or died),
        also if this coroutine is cancelled. Returns like :meth:`tick`, or None if the worker
        cannot map the columns (use the copy mode instead).
        """
        fut: asyncio.Future[tuple[str, Any]] | None = None
        called = False

        def finish(_f: object = None) -> None:
            nonlocal called
            if not called:
                called = True
                on_done()

        try:
            comp = self._get(name)
            worker = comp.worker
            if comp.shared_refused:
                return None
            if comp.state != "running" or worker is None or not comp.info.ticks:
                return False
            gen = comp.generation
            bind: asyncio.Future[tuple[str, Any]] | None = None
            key = (version, worker.pid)
            if comp.bound != key:
                spec = BindSpec(n, tuple(columns),
                                None if index is None else np.ascontiguousarray(index, np.intp).tobytes(),
                                tuple(ids))
                bind = worker.send(("bind", name, spec), name, "edge_tick")
                comp.bound = key
            fut = worker.send(encode_tick(comp.handle, n, float(dt), FLAG_SHARED), name, "edge_tick")
            fut.add_done_callback(finish)
            try:
                if bind is not None:
                    bstatus, bpayload = await asyncio.shield(bind)
                    if bstatus == "error":
                        comp.bound = None
                        comp.shared_refused = True
                        log.warning("component '%s': the worker cannot map the world's columns "
                                    "(%s); ticks use copies", name, bpayload)
                        with contextlib.suppress(WorkerGone):
                            await asyncio.shield(fut)  # its tick fails: nothing was bound
                        return None
                status, payload = await asyncio.shield(fut)
            except WorkerGone:
                comp.bound = None
                return False
            if status != "ok":
                comp.bound = None
            return self._finish_call(comp, status, payload, "edge_tick", 0,
                                     current=comp.generation == gen)
        finally:
            if fut is None or fut.done():  # (its callback may not have run yet)
                finish()

    async def deliver(self, name: str, messages: Sequence[tuple[str, bytes]]) -> None:
        """Hand ``messages`` (subject, payload) to ``edge_on_message``, one round trip for all.

        Returns once the batch is sent; at most ``max_in_flight`` batches per worker are
        outstanding (this call waits for room). Messages for a component that is not running
        are dropped and counted. Use :meth:`flush` to wait for the results.
        """
        comp = self._get(name)
        if not messages:
            return
        worker = comp.worker
        if comp.state != "running" or worker is None or not comp.info.handles_messages:
            comp.counters["dropped"] += len(messages)
            return
        assert worker.window is not None
        await worker.window.acquire()
        if comp.worker is not worker or comp.state != "running":
            worker.window.release()
            comp.counters["dropped"] += len(messages)
            return
        gen = comp.generation
        count = len(messages)
        fut = worker.send(("deliver", name, list(messages)), name, "edge_on_message")
        window = worker.window

        def done(f: asyncio.Future[tuple[str, Any]]) -> None:
            window.release()
            if f.cancelled() or f.exception() is not None:
                comp.counters["dropped"] += count
                return
            status, payload = f.result()
            self._finish_call(comp, status, payload, "edge_on_message", count,
                              current=comp.generation == gen)

        fut.add_done_callback(done)

    async def flush(self) -> None:
        """Wait until every sent request is answered and every effect is handed to the host."""
        for w in list(self._workers):
            futs = [p.future for p in list(w.pending)]
            if futs:
                await asyncio.gather(*futs, return_exceptions=True)
        await asyncio.sleep(0)  # let done-callbacks run
        await self._effects.join()

    def _finish_call(self, comp: _Component, status: str, payload: Any, export: str,
                     count: int, *, current: bool) -> bool:
        """Account for a reply. Effects always count (the call did run); a fault only acts on
        the supervision state if the reply is from the component's ``current`` instance."""
        if status == "gone":
            comp.counters["dropped"] += count
            return False
        if status == "error":
            if current:
                self._fault(comp, ("trap", export, str(payload)))
            return False
        assert isinstance(payload, CallResult)
        if export == "edge_tick":
            comp.counters["ticks"] += 1
        self._apply(comp, payload)
        if status == "fault":
            if current:
                self._fault(comp, payload.fault or ("trap", export, "unknown"))
            return False
        return current

    # -- effects and faults ------------------------------------------------------------------

    def _apply(self, comp: _Component, res: CallResult) -> None:
        c = comp.counters
        comp.gas_last = res.gas_used
        c["messages"] += res.messages
        c["dropped"] += res.dropped
        c["errors"] += res.errors
        c["logs_dropped"] += res.logs_dropped
        c["published"] += len(res.publishes)
        if res.denied:
            c["denied"] += len(res.denied)
            now = time.monotonic()
            if now - comp.denied_logged_at >= DENIED_LOG_INTERVAL_S:
                comp.denied_logged_at = now
                named = sorted({s for s in res.denied if s})
                log.warning("component '%s' was denied publishing to %s (not granted by its "
                            "manifest; %d denied so far)", comp.name, ", ".join(named),
                            c["denied"])
        if res.denied_models:
            c["denied_infer"] += len(res.denied_models)
            now = time.monotonic()
            if now - comp.denied_logged_at >= DENIED_LOG_INTERVAL_S:
                comp.denied_logged_at = now
                named = sorted({repr(s) for s in res.denied_models if s})
                log.warning("component '%s' was denied running model %s (not granted by its "
                            "manifest's run.models; %d denied so far)", comp.name,
                            ", ".join(named), c["denied_infer"])
        for level, text in res.logs:
            component_log.log(_LOG_LEVELS.get(level, logging.INFO), "[%s] %s", comp.name, text)
        if res.kv_puts:
            for key, value in res.kv_puts:
                comp.kv[key] = value
        if res.publishes or res.kv_puts:
            self._effects.put_nowait((comp.name, res))

    async def _run_effects(self) -> None:
        while True:
            name, res = await self._effects.get()
            try:
                for key, value in res.kv_puts:
                    await self._host.kv_put(name, key, value)
                for subject, data in res.publishes:
                    await self._host.publish(name, subject, data)
            except Exception:
                log.exception("host callback failed for component '%s'", name)
            finally:
                self._effects.task_done()

    def _fault(self, comp: _Component, fault: tuple[str, str, str], *,
               backoff: bool = True) -> None:
        reason, export, text = fault
        name = comp.name
        if reason == "out_of_gas":
            msg = (f"component '{name}' ran out of gas in {export} "
                   f"(limit {comp.manifest.limits.gas})")
        elif reason == "deadline":
            msg = (f"component '{name}' ran past the {self.deadline_s:g} s deadline in {export}; "
                   "its worker was killed")
        elif reason == "crashed":
            msg = f"component '{name}': its worker process died ({text})"
        elif reason == "init_failed":
            msg = f"component '{name}' failed to start: {text}"
        else:
            msg = f"component '{name}' trapped in {export}: {text}"
        err = SandboxError(msg, component=name, export=export, reason=reason)
        comp.counters[_FAULT_COUNTER.get(reason, "traps")] += 1
        if comp.worker is not None:
            comp.worker.hosted.discard(name)
            comp.worker = None
        if backoff:
            comp.last_fault = err
            now = time.monotonic()
            comp.failures.append(now)
            while comp.failures and now - comp.failures[0] > FAIL_WINDOW_S:
                comp.failures.popleft()
            if len(comp.failures) >= FAIL_LIMIT:
                comp.state = "failed"
                log.error("%s; %d failures within %g s: component stays failed", msg,
                          len(comp.failures), FAIL_WINDOW_S)
            else:
                delay = min(self.backoff_base_s * 2 ** (len(comp.failures) - 1),
                            self.backoff_max_s)
                comp.state = "backoff"
                log.warning("%s; restarting in %.2f s", msg, delay)
                self._schedule_restart(comp, delay)
        else:
            log.warning("%s", msg)
        try:
            self._host.on_fault(name, err)
        except Exception:
            log.exception("on_fault callback failed for component '%s'", name)

    def _schedule_restart(self, comp: _Component, delay: float) -> None:
        if comp.timer is not None:
            comp.timer.cancel()
        gen = comp.generation

        def fire() -> None:
            comp.timer = None
            self._spawn(self._restart(comp, gen))

        comp.timer = asyncio.get_running_loop().call_later(delay, fire)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _restart(self, comp: _Component, gen: int) -> None:
        async with self._lock:
            if (not self._started or self._comps.get(comp.name) is not comp
                    or comp.generation != gen or comp.state != "backoff"):
                return
            comp.restarts += 1
            try:
                await self._instantiate(comp, self._pick_worker())
            except ComponentLoadError as err:  # cannot happen for a module that loaded once
                comp.state = "failed"
                log.error("%s", err)

    # -- nested host requests (infer) -------------------------------------------------------

    def _on_host_request(self, req: HostRequest) -> None:
        self._spawn(self._serve_infer(req))

    async def _serve_infer(self, req: HostRequest) -> None:
        """Run one ``infer`` for the component whose call is waiting, and answer its worker."""
        code, hint, out = INFER_UNKNOWN, 0, b""
        call = req.call
        name = call.component if call is not None else None
        comp = self._comps.get(name) if name is not None else None
        infer = getattr(self._host, "infer", None)
        try:
            if comp is None or comp.worker is not req.worker or not callable(infer):
                return
            if call is not None and call.host_s >= self.infer_budget_s:
                code = INFER_FAILED
                log.warning("component '%s': infer refused, the call already waited %.1f s for "
                            "models (infer_budget_s)", comp.name, call.host_s)
                return
            try:
                async with asyncio.timeout(self.infer_timeout_s):  # no extra task, unlike wait_for
                    out = bytes(await infer(comp.name, req.model, req.data))
            except TimeoutError:
                code = INFER_FAILED
                log.warning("component '%s': model '%s' took longer than %.1f s", comp.name,
                            req.model, self.infer_timeout_s)
                return
            except EdgeError as err:
                reason = err.fields.get("reason")
                code = INFER_REASON_CODES.get(str(reason), INFER_FAILED)
                if code == INFER_BAD_INPUT:
                    with contextlib.suppress(TypeError, ValueError):
                        hint = int(err.fields.get("expected", 0))
                elif code == INFER_FAILED:
                    log.warning("component '%s': model '%s' failed: %s", comp.name, req.model,
                                err.message)
                return
            except Exception:
                code = INFER_FAILED
                log.exception("component '%s': infer of model '%s' failed", comp.name, req.model)
                return
            if len(out) > req.out_cap:
                code, hint, out = INFER_SMALL_OUTPUT, len(out), b""
            else:
                code = len(out)
        finally:
            if comp is not None:
                comp.counters["infers" if code >= 0 else "infer_errors"] += 1
            req.worker.reply_host(code, hint, out if code >= 0 else b"")

    # -- workers -----------------------------------------------------------------------------

    def _recycle_due(self, worker: WorkerProcess) -> bool:
        """True when the worker has served ``recycle_after`` instantiations or has leaked more
        than ``recycle_leak_bytes`` (wasm3 frees neither runtimes nor their linear memory)."""
        if worker.instances >= self.recycle_after:
            return True
        live = sum(_instance_bytes(self._comps[n].manifest) for n in worker.hosted
                   if n in self._comps)
        return worker.reserved_bytes - live >= self.recycle_leak_bytes

    async def _new_worker(self, index: int) -> WorkerProcess:
        w = WorkerProcess(self.deadline_s, self._on_worker_exit, index, self._on_host_request)
        await w.start(self.max_in_flight)
        return w

    async def _replace_worker(self, old: WorkerProcess, why: str) -> WorkerProcess:
        """Start a new process in ``old``'s slot and move its running components (lock held)."""
        new = await self._new_worker(old.index)
        self._workers[self._workers.index(old)] = new
        log.info("sandbox worker %s replaced by %s (%s, %d instances)", old.pid, new.pid, why,
                 old.instances)
        for name in sorted(old.hosted):
            comp = self._comps.get(name)
            if comp is None or comp.worker is not old:
                continue
            if comp.state == "running":
                await self._instantiate(comp, new, allow_recycle=False)
        old.hosted.clear()
        if why == "recycle":
            self._spawn(old.stop())
        return new

    def _on_worker_exit(self, worker: WorkerProcess, culprit: Pending | None, reason: str,
                        code: int | None) -> None:
        """Report the death of ``worker`` (synchronously) and schedule its replacement."""
        if not self._started or worker not in self._workers:
            return
        how = f"exit status {code}"
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                how = f"killed by {signal.Signals(-code).name}"
        log.error("sandbox worker %s died (%s) hosting %s", worker.pid, how,
                  ", ".join(sorted(worker.hosted)) or "nothing")
        hosted = [self._comps[n] for n in sorted(worker.hosted) if n in self._comps]
        worker.hosted.clear()
        for comp in hosted:
            comp.worker = None
            blamed = culprit is not None and culprit.component == comp.name
            export = culprit.export if blamed and culprit is not None else "-"
            self._fault(comp, (reason if blamed else "crashed", export, how), backoff=blamed)
            if not blamed:
                comp.state = "starting"
        self._spawn(self._respawn(worker, hosted))

    async def _respawn(self, worker: WorkerProcess, hosted: list[_Component]) -> None:
        async with self._lock:
            if not self._started or worker not in self._workers:
                return
            try:
                new = await self._new_worker(worker.index)
            except SandboxError as err:
                log.error("cannot restart the sandbox worker: %s", err)
                for comp in hosted:
                    if comp.state == "starting":
                        comp.state = "failed"
                return
            self._workers[self._workers.index(worker)] = new
            for comp in hosted:
                if comp.state == "starting" and self._comps.get(comp.name) is comp:
                    await self._instantiate(comp, new, allow_recycle=False)

    # -- introspection -----------------------------------------------------------------------

    def _get(self, name: str) -> _Component:
        comp = self._comps.get(name)
        if comp is None:
            raise SandboxError(f"no component named '{name}' is loaded", component=name,
                               reason="unknown")
        return comp

    def _check_started(self) -> None:
        if not self._started:
            raise SandboxError("the sandbox pool is not started", reason="stopped")

    def state(self, name: str) -> str:
        """State of one component: starting, running, backoff, failed or unloaded."""
        return self._get(name).state

    def status(self) -> list[dict[str, Any]]:
        """One dict per known component (see docs/sandbox.md for the fields)."""
        out = []
        for comp in self._comps.values():
            fault = comp.last_fault
            out.append({
                "name": comp.name,
                "version": comp.manifest.version,
                "state": comp.state,
                "restarts": comp.restarts,
                "last_fault": fault.to_dict() if fault is not None else None,
                "counters": dict(comp.counters),
                "gas_last": comp.gas_last,
                "worker_pid": comp.worker.pid if comp.worker is not None else None,
            })
        return out

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes."""
        return [w.pid for w in self._workers if w.pid is not None and w.alive]

    async def worker_info(self) -> list[dict[str, Any]]:
        """Ask each worker for its pid, instance count and RSS (KiB)."""
        return [await w.ping() for w in list(self._workers) if w.alive]


def _instance_bytes(manifest: Manifest) -> int:
    """Memory one instance keeps: its pinned linear memory plus wasm3's own structures."""
    return manifest.limits.memory_pages * 65_536 + INSTANCE_OVERHEAD_BYTES


def _read_module(manifest: Manifest) -> bytes:
    try:
        return manifest.module.read_bytes()
    except OSError as exc:
        raise ComponentLoadError(
            f"cannot read module of component '{manifest.name}': {exc.strerror}",
            component=manifest.name, path=str(manifest.module)) from exc
