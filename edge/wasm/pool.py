"""SandboxPool: runs wasm components in worker processes (the public face of edge.wasm).

Key components:

* :class:`SandboxPool` (here): load / unload, the hot-path calls, status;
* :mod:`edge.wasm.calls`: the hot-path requests (ticks in both modes, message batches);
* :mod:`edge.wasm.supervision`: workers, faults, backoff, restarts, recycling;
* :mod:`edge.wasm.effects`: effects re-checked against the grants, handed to the host in order;
* :mod:`edge.wasm.columns`: batch storage and the checked copy-back of shared ticks;
* :mod:`edge.wasm.host`: the :class:`HostCallbacks` and :class:`InferBridge` seams;
* :mod:`edge.wasm.procs` + :mod:`edge.wasm.wire`: one worker process and the frames it writes.

The pool lives in the runtime process (asyncio). It checks, memory-pins and instruments each
module (:func:`edge.wasm.abi.prepare_module`), instantiates it in a worker process
(:mod:`edge.wasm.worker`), and exposes the hot-path calls:

* :meth:`SandboxPool.tick_shared` runs ``edge_tick`` on the world's shared column files: the
  worker maps them read-only and writes into the component's output area; the runtime copies
  the write columns back for the batch's slots (only the slot index travels, and only when it
  changed).
* :meth:`SandboxPool.batch` returns float64 column views backed by shared memory; the caller
  fills them from the world, calls :meth:`SandboxPool.tick`, and copies the write columns back
  (the *copy* mode, for worlds without shared columns).
* :meth:`SandboxPool.tick` runs ``edge_tick`` on the batch (one pipe round trip).
* :meth:`SandboxPool.deliver` hands a batch of messages to ``edge_on_message``; several batches
  may be in flight (``max_in_flight`` per worker), and it returns once the batch is sent.

A component's linear memory does not survive a restart, crash or recycle: ``edge_init`` runs
again and durable state belongs in its KV. The runtime trusts nothing a worker writes
(docs/sandbox.md, "Threat model").

Inference: workers hold no models. A component's ``infer`` import sends a nested request to the
pool during the call; the pool runs the ``infer=`` bridge (bounded by ``infer_timeout_s``; the
call's deadline clock is paused meanwhile, and one call may wait at most ``infer_budget_s`` in
total) and answers the worker, which then returns to the component.

Example::

    async with SandboxPool("drone-1", host, infer=models) as pool:
        await pool.load(load_manifest(path, "drone-1"))
        await pool.deliver("echo", [("edge.drone-1.cmd.echo", b"hi")])
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from edge.errors import ComponentLoadError, SandboxError
from edge.wasm.abi import ModuleInfo, prepare_module
from edge.wasm import calls
from edge.wasm.component import COUNTERS, Component
from edge.wasm.effects import Effects
from edge.wasm.origin import DEFAULT_MAX_HOPS
from edge.wasm.host import (
    DEFAULT_INFER_BUDGET_S,
    DEFAULT_INFER_TIMEOUT_S,
    HostCallbacks,
    InferBridge,
    InferServer,
    MessagePolicy,
)
from edge.wasm.manifest import Manifest, read_module
from edge.wasm.procs import DEFAULT_WORKER_COMMAND, HostRequest, WorkerGone
from edge.wasm.protocol import CLOCK_LIVE
from edge.wasm.supervision import (
    DEFAULT_RSS_CHECK_S,
    FAIL_LIMIT,
    FAIL_WINDOW_S,
    MessageClocks,
    SupervisionConfig,
    Supervisor,
)

__all__ = ["COUNTERS", "FAIL_LIMIT", "FAIL_WINDOW_S", "HostCallbacks", "InferBridge",
           "SandboxPool"]

log = logging.getLogger("edge.wasm.pool")

#: Instantiations a worker process serves before it is replaced (each leaks its wasm3 runtime).
DEFAULT_RECYCLE_AFTER = 200
#: Memory a worker may have leaked (instances it no longer runs) before it is replaced (bytes).
DEFAULT_RECYCLE_LEAK_BYTES = 64 * 2**20
#: Resident memory past which a worker is replaced (bytes): pywasm3 leaks on every host call.
DEFAULT_RECYCLE_RSS_BYTES = 96 * 2**20
#: Wall-clock limit of one call into a worker before the worker is SIGKILLed (seconds).
DEFAULT_DEADLINE_S = 5.0
#: First restart delay after a fault (seconds); doubles per failure in the window.
DEFAULT_BACKOFF_BASE_S = 0.5
#: Longest restart delay (seconds).
DEFAULT_BACKOFF_MAX_S = 30.0
#: wasm3 stack per component (bytes).
DEFAULT_STACK_BYTES = 64 * 1024
#: Message batches in flight per worker before deliver() waits.
DEFAULT_MAX_IN_FLIGHT = 8
#: Worker processes in a pool.
DEFAULT_WORKERS = 2
#: A staged successor is known to its worker as ``<name><sep><handle>`` (never a component name).
STAGED_WIRE_SEP = "#"
#: Prepared modules kept (check + pin + instrument is pure Python: cache it).
PREPARED_CACHE_SIZE = 32
#: The pool's shared-memory directory: ``<base>/edge-sandbox-<pid>-<random>`` (the pid of the
#: runtime that made it, so a later start can remove what a killed runtime left on the tmpfs)
SHM_PREFIX = "edge-sandbox-"


def sweep_stale_shm(base: Path) -> list[Path]:
    """Remove the shared-memory directories of runtimes that are gone (a kill -9, a watchdog
    kill, a power cut of a tmpfs that outlives the process): ``edge-sandbox-<pid>-*`` of this
    user whose pid no longer runs. Returns what was removed."""
    removed = []
    uid = os.getuid()
    for path in base.glob(f"{SHM_PREFIX}*-*"):
        pid_text = path.name[len(SHM_PREFIX):].partition("-")[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            if path.lstat().st_uid != uid or not path.is_dir() or path.is_symlink():
                continue
            os.kill(int(pid_text), 0)
            continue  # its runtime still runs
        except ProcessLookupError:
            pass
        except OSError:  # PermissionError: another user's live process; or the path went away
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d shared-memory directories of stopped runtimes from %s", len(removed), base)
    return removed


class SandboxPool:
    """Hosts components in sandbox worker processes. See the module docstring.

    ``worker_command`` is for tests only: the argv that starts each worker process instead of
    ``python -m edge.wasm.worker`` (a callable gets the worker's slot number, for a test that
    puts a hostile program in one slot).
    """

    def __init__(self, device: str, host: HostCallbacks, *,
                 infer: InferBridge | None = None,
                 recycle_after: int = DEFAULT_RECYCLE_AFTER,
                 recycle_leak_bytes: int = DEFAULT_RECYCLE_LEAK_BYTES,
                 recycle_rss_bytes: int | None = DEFAULT_RECYCLE_RSS_BYTES,
                 rss_check_s: float = DEFAULT_RSS_CHECK_S,
                 deadline_s: float = DEFAULT_DEADLINE_S,
                 workers: int = DEFAULT_WORKERS,
                 backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
                 backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 stack_bytes: int = DEFAULT_STACK_BYTES,
                 infer_timeout_s: float = DEFAULT_INFER_TIMEOUT_S,
                 infer_budget_s: float = DEFAULT_INFER_BUDGET_S,
                 max_hops: int = DEFAULT_MAX_HOPS,
                 policy: MessagePolicy | None = None,
                 clock: int = CLOCK_LIVE,
                 worker_command: Sequence[str] | Callable[[int], Sequence[str]] = (
                     DEFAULT_WORKER_COMMAND)) -> None:
        if recycle_after < 1:
            raise ValueError(f"recycle_after must be at least 1 (got {recycle_after})")
        if workers < 1:
            raise ValueError(f"workers must be at least 1 (got {workers})")
        if recycle_rss_bytes is not None and recycle_rss_bytes <= 0:
            raise ValueError(f"recycle_rss_bytes must be a positive number of bytes or None "
                             f"(got {recycle_rss_bytes})")
        if rss_check_s <= 0:
            raise ValueError(f"rss_check_s must be a positive number of seconds (got {rss_check_s})")
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be a positive number of seconds (got {deadline_s})")
        self.device = device
        self.n_workers = workers
        self._comps: dict[str, Component] = {}
        self._staged: dict[str, Component] = {}  # at most one successor per component name
        self._effects = Effects(host, max_hops=max_hops, policy=policy)
        self._effects_task: asyncio.Task[None] | None = None
        self._infer = InferServer(infer, self._comps, timeout_s=infer_timeout_s,
                                  budget_s=infer_budget_s)
        command = worker_command if callable(worker_command) else _fixed(tuple(worker_command))
        self._sup = Supervisor(
            SupervisionConfig(device, recycle_after, recycle_leak_bytes, deadline_s,
                              backoff_base_s, backoff_max_s, max_in_flight, stack_bytes,
                              command, recycle_rss_bytes, rss_check_s, clock),
            host, self._effects, self._comps, self._on_host_request)
        self._prepared: dict[tuple[bytes, Manifest], tuple[bytes, ModuleInfo]] = {}
        self._shm_dir: Path | None = None
        self._handles = 0

    @property
    def effects(self) -> Effects:
        return self._effects

    @property
    def deadline_s(self) -> float:
        return self._sup.cfg.deadline_s

    @property
    def protocol_violations(self) -> int:
        """Workers killed for breaking the sandbox protocol since the pool started."""
        return self._sup.protocol_violations

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker processes and the effects task (a second call does nothing)."""
        if self._sup.running:
            return
        base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        sweep_stale_shm(Path(base))
        self._shm_dir = Path(tempfile.mkdtemp(prefix=f"{SHM_PREFIX}{os.getpid()}-", dir=base))
        self._effects_task = asyncio.create_task(self._effects.run(), name="sandbox-effects")
        sup = self._sup
        for i in range(self.n_workers):
            sup.workers.append(await sup.new_worker(i))
        sup.running = True
        sup.spawn(sup.watch_rss())

    async def stop(self) -> None:
        """Flush effects, stop every worker and remove the shared memory files."""
        sup = self._sup
        if not sup.running:
            return
        sup.running = False
        for comp in self._comps.values():
            if comp.timer is not None:
                comp.timer.cancel()
        for task in list(sup.bg):
            task.cancel()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._effects.join(), 2.0)
        for w in sup.workers:
            await w.stop()
        sup.workers.clear()
        if self._effects_task is not None:
            self._effects_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._effects_task
        left = self._effects.abandon()
        if left:
            log.error("sandbox stopped with %d effects not handed to the host (counted as "
                      "effects_dropped): %s", sum(left.values()),
                      ", ".join(f"{n} {k}" for k, n in sorted(left.items())))
        for comp in self._comps.values():
            comp.state = "unloaded" if comp.state != "failed" else comp.state
            comp.worker = None
        for comp in self._staged.values():
            comp.state, comp.worker, comp.held = "unloaded", None, None
            comp.discard_storage()
        self._staged.clear()
        if self._shm_dir is not None:
            shutil.rmtree(self._shm_dir, ignore_errors=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- loading -----------------------------------------------------------------------------

    async def load(self, manifest: Manifest, kv: Mapping[str, bytes] | None = None, *,
                   clock: Sequence[tuple[int, int]] | None = None) -> None:
        """Check and instrument the module, start it in a worker and call ``edge_init``.

        Raises ComponentLoadError if the module is refused (file, contract, memory, wasm3 load
        error) or if its first start fails: ``edge_init`` returns non-zero, the start function
        or ``edge_init`` traps, runs out of gas or past the deadline, or the worker dies. Then
        the component is not loaded (not in :meth:`status`, nothing restarts it) and the
        error's sentence gives the reason; ``on_fault`` is not called. Later faults, restarts
        included, are reported through ``on_fault`` and restart with backoff. Loading a name
        that is already loaded replaces it (the old instance is unloaded first, also if the new
        one then fails). ``clock`` (a pool in the replay clock mode): the ``(kind, value)`` the
        start function's and ``edge_init``'s clock reads answer, in order.
        """
        self._check_started("load a component")
        wasm, info = await self._prepare(manifest)
        async with self._sup.lock:
            await self._load_locked(manifest, kv, wasm, info, clock)

    async def _load_locked(self, manifest: Manifest, kv: Mapping[str, bytes] | None,
                           wasm: bytes, info: ModuleInfo,
                           clock: Sequence[tuple[int, int]] | None) -> None:
        sup = self._sup
        old = self._comps.get(manifest.name)
        if old is not None:
            await self._unload_locked(old)
        self._handles += 1
        comp = Component(manifest=manifest, wasm=wasm, info=info, kv=dict(kv or {}),
                         handle=self._handles, init_feed=tuple(clock or ()))
        self._comps[manifest.name] = comp
        comp.loading = True
        try:
            await sup.instantiate(comp, sup.pick_worker())
        except ComponentLoadError:
            comp.state = "unloaded"
            del self._comps[manifest.name]
            raise
        finally:
            comp.loading = False
        if comp.state != "running":
            fault = comp.last_fault
            why = fault.message if fault is not None else (
                f"component '{manifest.name}' did not start")
            await self._unload_locked(comp)
            del self._comps[manifest.name]
            raise ComponentLoadError(
                f"{why}; it is not loaded", component=manifest.name,
                path=str(manifest.path or manifest.module)) from fault

    async def _prepare(self, manifest: Manifest) -> tuple[bytes, ModuleInfo]:
        wasm_src = await asyncio.to_thread(read_module, manifest)  # size-capped
        key = (hashlib.sha256(wasm_src).digest(), manifest)
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = await asyncio.to_thread(prepare_module, wasm_src, manifest)
            if len(self._prepared) >= PREPARED_CACHE_SIZE:
                self._prepared.pop(next(iter(self._prepared)))
            self._prepared[key] = prepared
        return prepared

    # -- warm standby: stage a successor beside the running instance, then promote it ---------

    def can_stage(self, name: str) -> bool:
        """True if a successor of component ``name`` can be staged (it is loaded)."""
        return name in self._comps

    def kv_view(self, name: str) -> dict[str, bytes]:
        """The component's KV as the runtime sees it now (its writes count at once, before
        they reach the bucket): what a successor's ``edge_init`` is given."""
        return dict(self._get(name).kv)

    async def stage(self, manifest: Manifest, kv: Mapping[str, bytes], *,
                    base: Mapping[str, bytes] | None = None) -> None:
        """Load a successor of the running component ``manifest.name`` beside it: checked,
        compiled, instantiated and ``edge_init`` run in another worker, while the running
        instance keeps serving. The successor's effects (its ``edge_init``'s publishes, KV
        writes and log lines) are held until :meth:`promote`. At most one successor per
        component: staging again discards the earlier one. ``base``: the running instance's
        KV (:meth:`kv_view`) when the state ``kv`` was read (default ``kv``): if the running
        instance's KV differs from it at :meth:`promote`, the successor saw an older state.

        Raises ComponentLoadError (the running instance untouched) if the module is refused or
        its ``edge_init`` fails, traps or its worker dies; SandboxError if the component is
        not loaded or no other worker exists (:meth:`can_stage`).
        """
        self._check_started("stage a component")
        name = manifest.name
        if not self.can_stage(name):
            raise SandboxError(f"cannot stage a successor of component '{name}': it is not "
                               "loaded", component=name, reason="usage")
        wasm, info = await self._prepare(manifest)
        sup = self._sup
        async with sup.lock:
            await self._discard_staged_locked(name)
            cur = self._get(name)
            # another worker if there is one (the two do not share fate), else beside it: the
            # worker knows the successor by a name of its own (Component.wire)
            others = [w for w in sup.workers if w is not cur.worker and w.alive] or sup.workers
            self._handles += 1
            comp = Component(manifest=manifest, wasm=wasm, info=info, kv=dict(kv),
                             handle=self._handles, held=[],
                             wire_name=f"{name}{STAGED_WIRE_SEP}{self._handles}")
            comp.loading = True
            self._staged[name] = comp
            try:
                await sup.instantiate(comp, min(others, key=lambda w: len(w.hosted)),
                                      staged=True)
            except ComponentLoadError:
                comp.state = "unloaded"
                del self._staged[name]
                raise
            finally:
                comp.loading = False
            if comp.state != "running":
                fault = comp.last_fault
                why = fault.message if fault is not None else (
                    f"component '{name}' {manifest.version}: its sandbox worker died while "
                    "it was being staged")
                await self._discard_staged_locked(name)
                raise ComponentLoadError(
                    f"{why}; the running version is kept", component=name,
                    path=str(manifest.path or manifest.module)) from fault
            comp.kv_base = dict(base if base is not None else kv)
            log.info("component %s %s staged beside %s", name, manifest.version,
                     cur.manifest.version)

    def staged(self, name: str) -> str | None:
        """The version of the successor staged for ``name`` (None: none)."""
        comp = self._staged.get(name)
        return comp.manifest.version if comp is not None else None

    async def discard_staged(self, name: str) -> None:
        """Unload the successor staged for ``name`` (if any); its held effects are dropped."""
        async with self._sup.lock:
            await self._discard_staged_locked(name)

    async def _discard_staged_locked(self, name: str) -> None:
        comp = self._staged.pop(name, None)
        if comp is not None:
            comp.held = None
            await self._unload_locked(comp, hosted=False)

    async def promote(self, name: str, *,
                      on_swap: Callable[[], None] | None = None) -> bool:
        """Make the staged successor of ``name`` the component (call it once the old one's
        ticks are stopped: :meth:`edge.world.scheduler.TickLoop.stop_after_tick`).

        From this call on, ticks and message batches go to the successor. The old instance's
        calls still under way are answered first and their effects handed out; then the
        successor's held effects follow in order, and the old instance is unloaded: the old
        writes nothing after this returns. If the old version changed its KV after the
        successor was staged (the successor's ``edge_init`` saw an older state), the
        successor is discarded and the new version is loaded again with the KV as it is
        (a cold swap); returns False then, True for a warm promotion.

        ``on_swap`` is called once the old instance is unloaded, before any effect of the
        successor is handed out (the recorder's unload of the old version).

        Raises ComponentLoadError (the old instance untouched) if nothing is staged or the
        successor's worker died meanwhile; a failed cold load raises like :meth:`load`.
        """
        sup = self._sup
        async with sup.lock:
            new = self._staged.get(name)
            old = self._get(name)
            worker = new.worker if new is not None else None
            if new is None or new.state != "running" or worker is None or not worker.alive \
                    or worker not in sup.workers:
                await self._discard_staged_locked(name)
                raise ComponentLoadError(
                    f"component '{name}': no staged successor is running (its sandbox worker "
                    "died or was replaced); the running version is kept", component=name)
            del self._staged[name]
            self._comps[name] = new  # new calls go to the successor from here on
            if worker is not old.worker:
                worker.hosted.add(name)
            if old.worker is not None:  # the old instance's calls under way answer first
                futs = [p.future for p in list(old.worker.pending) if p.component == name]
                if futs:
                    await asyncio.gather(*futs, return_exceptions=True)
            await self._unload_locked(old, hosted=old.worker is not worker)
            if on_swap is not None:
                on_swap()
            if new.kv_base != old.kv:  # the old wrote its KV after the successor's edge_init
                log.info("component %s changed its KV while %s was staged: loading it again "
                         "with the current state", name, new.manifest.version)
                new.held = None
                await self._unload_locked(new)
                self._comps[name] = old  # for load's replacement of the name
                old.state = "unloaded"
                await self._load_locked(new.manifest, old.kv, new.wasm, new.info, ())
                return False
            new.publish_bucket = _carry_bucket(old, new)
            held, new.held = new.held or [], None
            for payload, hops, export in held:
                self.effects.apply(new, payload, hops, export=export)  # type: ignore[arg-type]
            return True

    async def unload(self, name: str) -> None:
        """Stop a component and forget its instance (its status stays, as ``unloaded``)."""
        comp = self._get(name)
        async with self._sup.lock:
            await self._unload_locked(comp)

    async def _unload_locked(self, comp: Component, *, hosted: bool = True) -> None:
        if comp.timer is not None:
            comp.timer.cancel()
            comp.timer = None
        comp.generation += 1
        worker = comp.worker
        comp.worker = None
        comp.state = "unloaded"
        if worker is not None and worker.alive:
            if hosted:  # a staged successor is not in its worker's hosted set
                worker.hosted.discard(comp.name)
            with contextlib.suppress(WorkerGone):
                await worker.send(("unload", comp.wire), comp.name, "unload")
        comp.discard_storage()

    # -- hot path ----------------------------------------------------------------------------

    def batch(self, name: str, n: int) -> list[np.ndarray]:
        """Float64 column views of length ``n`` (shared memory), in manifest column order.

        Call it before each tick: growing the batch maps new storage, and views from earlier
        calls then no longer reach the worker.
        """
        return calls.batch(self._get(name), self._shm, n)

    async def tick(self, name: str, n: int, dt: float,
                   ids: Sequence[str] | None = None, *,
                   clock: Sequence[tuple[int, int]] | None = None) -> bool:
        """Run ``edge_tick`` over the first ``n`` rows of the batch; write columns are updated in
        place. ``ids`` are the entity IDs of the rows (None = unchanged since the last tick).
        ``clock`` (a pool in the replay clock mode): the ``(kind, value)`` the tick's clock
        reads answer, in order. Returns False if the component is not running (backoff,
        failed, restarting) or the call faulted (the fault is reported through ``on_fault``)."""
        return await calls.tick(self._sup, self._get(name), n, dt, ids, clock)

    def init_clocks(self, name: str) -> tuple[list[tuple[int, int]], int]:
        """The clock values the last load (start function and ``edge_init``) of ``name`` read
        and the reads not reported (clock modes record / replay only)."""
        comp = self._get(name)
        return comp.init_clocks, comp.init_clocks_cut

    @property
    def message_clocks(self) -> MessageClocks | None:
        """[replay hook] called with ``(component, clock reads, reads cut)`` of each message
        batch once it is answered (dropped or failed: no reads), in the order sent."""
        return self._sup.message_clocks

    @message_clocks.setter
    def message_clocks(self, listener: MessageClocks | None) -> None:
        self._sup.message_clocks = listener

    def tick_clocks(self, name: str) -> tuple[list[tuple[int, int]], int]:
        """The clock values the last tick of ``name`` read and the reads not reported (empty
        unless the pool records or replays clocks: ``clock`` CLOCK_RECORD or CLOCK_REPLAY)."""
        comp = self._get(name)
        return comp.tick_clocks, comp.tick_clocks_cut

    async def tick_shared(self, name: str, n: int, dt: float, *, version: object,
                          columns: Sequence[tuple[str, int, int]],
                          index: np.ndarray | None, ids: Sequence[str],
                          on_done: Callable[[], None]) -> bool | None:
        """Run ``edge_tick`` on the world's shared column files (shared mode).

        ``columns`` are ``(path, inode, nbytes)`` per manifest column; row ``i`` is slot
        ``index[i]`` (or ``i`` when ``index`` is None). The worker maps them read-only and
        writes into the component's output area; when it answers, the write columns it wrote
        are copied into the world for the batch's slots (and no others). The binding is sent to
        the worker only when ``version`` differs from the last one it got. ``on_done`` is called
        exactly once, when the batch's slots are no longer touched for this tick (the results
        are copied, or the worker answered or died), also if this coroutine is cancelled.
        Returns like :meth:`tick`, or None if the columns cannot be mapped (use the copy mode
        instead).
        """
        try:
            comp = self._get(name)
        except SandboxError:
            on_done()
            raise
        return await calls.tick_shared(self._sup, comp, self._shm, n, dt, version=version,
                                       columns=columns, index=index, ids=ids, on_done=on_done)

    async def deliver(self, name: str, messages: Sequence[tuple[str, bytes]],
                      hops: int = 0, *, clock: Sequence[tuple[int, int]] | None = None) -> None:
        """Hand ``messages`` (subject, payload) to ``edge_on_message``, one round trip for all.

        ``hops`` is the largest number of handlers the messages have passed through (their
        ``Edge-Hops`` header, :mod:`edge.wasm.origin`); what the component publishes while
        handling them carries one more, and past ``max_hops`` it is refused.

        Returns once the batch is sent; at most ``max_in_flight`` batches per worker are
        outstanding (this call waits for room). Messages for a component that is not running
        are dropped and counted. Use :meth:`flush` to wait for the results. ``clock`` (a pool
        in the replay clock mode): the ``(kind, value)`` the batch's clock reads answer.
        """
        if hops < 0:
            raise ValueError(f"hops must be >= 0 (got {hops})")
        await calls.deliver(self._sup, self._get(name), messages, hops, clock)

    async def flush(self) -> None:
        """Wait until every sent request is answered and every effect is handed to the host."""
        for w in list(self._sup.workers):
            futs = [p.future for p in list(w.pending)]
            if futs:
                await asyncio.gather(*futs, return_exceptions=True)
        await asyncio.sleep(0)  # let done-callbacks run
        await self._effects.join()

    # -- nested host requests (infer) -------------------------------------------------------

    def _on_host_request(self, req: HostRequest) -> None:
        self._sup.spawn(self._infer.serve(req))

    # -- introspection -----------------------------------------------------------------------

    def _get(self, name: str) -> Component:
        comp = self._comps.get(name)
        if comp is None:
            raise SandboxError(f"no component named '{name}' is loaded", component=name,
                               reason="unknown")
        return comp

    def _check_started(self, what: str) -> None:
        if not self._sup.running:
            raise SandboxError(f"cannot {what}: the sandbox pool is not started; call "
                               "start() (or use 'async with SandboxPool(...)') first",
                               reason="stopped")

    def _shm(self) -> Path:
        self._check_started("make a batch")
        if self._shm_dir is None:  # pragma: no cover - set by start()
            raise SandboxError("cannot make a batch: the pool has no shared memory directory",
                               reason="stopped")
        return self._shm_dir

    def component(self, name: str) -> Component:
        """The runtime's record of a loaded component (raises SandboxError if none)."""
        return self._get(name)

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
                "kv": comp.kv_usage.to_dict(),
            })
        return out

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes."""
        return [w.pid for w in self._sup.workers if w.pid is not None and w.alive]

    async def worker_info(self) -> list[dict[str, Any]]:
        """Ask each worker for its pid, instance count and RSS (KiB)."""
        return [await w.ping() for w in list(self._sup.workers) if w.alive]


def _carry_bucket(old: Component, new: Component) -> Any:
    """The publish rate limit's bucket goes on across a swap when the limit is unchanged
    (a swap does not grant a fresh burst)."""
    a, b = old.manifest.limits, new.manifest.limits
    if (a.publish_rate, a.publish_burst) == (b.publish_rate, b.publish_burst):
        return old.publish_bucket
    return new.publish_bucket


def _fixed(command: tuple[str, ...]) -> Callable[[int], Sequence[str]]:
    return lambda _slot: command

