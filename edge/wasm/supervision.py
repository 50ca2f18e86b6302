"""Supervision of sandbox workers and the components they host.

:class:`Supervisor` owns the worker processes and every component's lifecycle: it instantiates
a component in a worker, accounts for each reply (effects checked by :mod:`edge.wasm.effects`,
faults), reports faults to ``on_fault`` and restarts with exponential backoff; after
``FAIL_LIMIT`` failures within ``FAIL_WINDOW_S`` a component stays ``failed`` until loaded
again. A dead worker is replaced and every component it hosted is reloaded with its KV state;
a worker is also replaced after ``recycle_after`` instantiations or ``recycle_leak_bytes`` of
leaked memory, because wasm3 never frees a runtime, and when its resident memory, measured by
the runtime in ``/proc`` every ``rss_check_s``, passes ``recycle_rss_bytes``: pywasm3 0.5 leaks
the argument tuple and the result of every host call (docs/sandbox.md, *Memory*).

A worker that breaks the protocol (:mod:`edge.wasm.wire`, or an effect the grants refuse) is
killed; since any component it hosted may have taken it over, each of them gets a fault with
reason ``protocol`` and backs off (a hostile component cannot make its worker restart in a
tight loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from edge.backoff import Backoff
from edge.errors import ComponentLoadError, SandboxError
from edge.wasm.component import Component
from edge.wasm.effects import Effects, check
from edge.wasm.host import HostCallbacks
from edge.wasm.manifest import Manifest
from edge.wasm.procs import HostRequestCallback, Pending, WorkerGone, WorkerProcess
from edge.wasm.protocol import CallResult, LoadSpec

log = logging.getLogger("edge.wasm.pool")

#: [replay hook] ``(component, clock reads, reads cut)`` of one answered message batch.
MessageClocks = Callable[[str, Sequence[tuple[int, int]], int], None]

#: Estimated memory wasm3 keeps per instantiation besides linear memory (bytes).
INSTANCE_OVERHEAD_BYTES = 256 * 1024
#: Failures within FAIL_WINDOW_S after which a component stays failed.
FAIL_LIMIT = 5
FAIL_WINDOW_S = 60.0
#: How often the pool measures each worker's resident memory (seconds).
DEFAULT_RSS_CHECK_S = 0.1
#: A worker whose live components alone already pass the RSS limit is recycled again only once it
#: has grown this much past its size right after the move (bytes): no replacement every check.
RSS_REGROWTH_BYTES = 16 * 2**20

_FAULT_COUNTER = {"trap": "traps", "init_failed": "traps", "out_of_gas": "out_of_gas",
                  "deadline": "deadlines", "crashed": "crashes", "protocol": "protocol_errors"}


@dataclass(frozen=True)
class SupervisionConfig:
    """The pool's supervision settings (see :class:`~edge.wasm.pool.SandboxPool`)."""

    device: str
    recycle_after: int
    recycle_leak_bytes: int
    deadline_s: float
    backoff_base_s: float
    backoff_max_s: float
    max_in_flight: int
    stack_bytes: int
    worker_command: Callable[[int], Sequence[str]]  # slot -> argv of a worker process
    recycle_rss_bytes: int | None = None  # replace a worker whose RSS passes this; None = never
    rss_check_s: float = DEFAULT_RSS_CHECK_S
    clock: int = 0  # the components' clock mode (edge.wasm.protocol.CLOCK_LIVE | _RECORD | _REPLAY)


class Supervisor:
    """Workers, instances, faults and restarts (the pool's lock is held by callers that say
    so)."""

    def __init__(self, cfg: SupervisionConfig, host: HostCallbacks, effects: Effects,
                 comps: dict[str, Component], on_host_request: HostRequestCallback) -> None:
        self.cfg = cfg
        self.host = host
        self.effects = effects
        self.comps = comps
        self.on_host_request = on_host_request
        self.workers: list[WorkerProcess] = []
        self.lock = asyncio.Lock()
        self.bg: set[asyncio.Task[Any]] = set()
        self.running = False
        self.protocol_violations = 0  # workers killed for breaking the protocol
        #: [replay hook] told the clock reads of every message batch when it is answered (or
        #: dropped: no reads), in the order the batches were sent (clock modes record / replay)
        self.message_clocks: MessageClocks | None = None

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self.bg.add(task)
        task.add_done_callback(self.bg.discard)

    def pick_worker(self) -> WorkerProcess:
        return min(self.workers, key=lambda w: len(w.hosted))

    # -- instances ---------------------------------------------------------------------------

    async def instantiate(self, comp: Component, worker: WorkerProcess, *,
                          allow_recycle: bool = True, staged: bool = False) -> None:
        """Load ``comp`` into ``worker`` (lock held). Recycles the worker first if it is due.
        ``staged``: a successor loaded beside the running instance (not in ``worker.hosted``
        until its promotion)."""
        if allow_recycle and self.recycle_due(worker):
            worker = await self.replace_worker(worker, "recycle")
        m = comp.manifest
        spec = LoadSpec(
            name=comp.wire, wasm=comp.wasm, device=self.cfg.device, ncols=len(m.columns),
            writable=m.writable, publish=m.publish, gas=m.limits.gas,
            publish_per_call=m.limits.publish_per_call, kv=dict(comp.kv),
            stack_bytes=self.cfg.stack_bytes, handle=comp.handle, models=m.models,
            kv_keys=m.limits.kv_keys, kv_bytes=m.limits.kv_bytes, clock=self.cfg.clock,
            clock_feed=comp.init_feed,
        )
        comp.generation += 1
        comp.state = "starting"
        comp.worker = worker
        comp.batch_sent = False
        comp.ids_sent = False
        comp.bound = None
        if not staged:
            worker.hosted.add(m.name)
        worker.instances += 1
        worker.reserved_bytes += instance_bytes(m)
        try:
            status, payload = await worker.send(("load", spec), m.name, "edge_init")
        except WorkerGone:
            return  # the crash handler reports it and restarts it
        if status == "refused":
            if not staged:
                worker.hosted.discard(m.name)
            comp.worker = None
            raise ComponentLoadError(f"wasm3 refused component '{m.name}': {payload}",
                                     component=m.name, path=str(m.module))
        if status == "gone":  # an intact worker answers a load with ok, fault or refused
            worker.violate(f"a 'gone' reply to the load of component '{m.name}'")
            return
        if self.finish_call(comp, worker, status, payload, "edge_init", 0, current=True):
            comp.state = "running"

    def finish_call(self, comp: Component, worker: WorkerProcess, status: str, payload: Any,
                    export: str, count: int, *, current: bool, shared: bool = False,
                    hops: int = 0) -> bool:
        """Account for a reply of ``worker``. Effects always count (the call did run) once
        they pass the runtime's check; a fault only acts on the supervision state if the reply
        is from the component's ``current`` instance. ``hops``: the largest hop count of the
        messages the call handled. True if the call succeeded."""
        if status == "gone":
            comp.counters["dropped"] += count
            return False
        if status == "error":
            if current:
                self.fault(comp, ("trap", export, str(payload)))
            return False
        if status not in ("ok", "fault") or not isinstance(payload, CallResult):
            worker.violate(f"a '{status}' reply to {export}")
            return False
        calls = 2 * count if export == "edge_on_message" else 1  # edge_alloc may publish too
        why = check(comp, payload, calls=calls, messages=count, shared=shared)
        if why is not None:
            worker.violate(f"component '{comp.name}': {why}")
            return False
        if export == "edge_tick":
            comp.counters["ticks"] += 1
            if payload.clocks or comp.tick_clocks or payload.clocks_cut:  # [replay hook]
                comp.tick_clocks, comp.tick_clocks_cut = payload.clocks, payload.clocks_cut
        elif export == "edge_init":  # [replay hook]
            comp.init_clocks, comp.init_clocks_cut = payload.clocks, payload.clocks_cut
        if comp.held is not None:  # staged: applied at the promotion (SandboxPool.promote)
            comp.held.append((payload, hops, export))
        else:
            self.effects.apply(comp, payload, hops, export=export)
        if status == "fault":
            if current:
                self.fault(comp, payload.fault or ("trap", export, "unknown"))
            return False
        return current

    # -- faults and restarts -----------------------------------------------------------------

    def fault(self, comp: Component, fault: tuple[str, str, str], *,
              backoff: bool = True) -> None:
        reason, export, text = fault
        name = comp.name
        if reason == "out_of_gas":
            msg = (f"component '{name}' ran out of gas in {export} "
                   f"(limit {comp.manifest.limits.gas})")
        elif reason == "deadline":
            msg = (f"component '{name}' ran past the {self.cfg.deadline_s:g} s deadline in "
                   f"{export}; its worker was killed")
        elif reason == "crashed":
            msg = f"component '{name}': its worker process died ({text})"
        elif reason == "protocol":
            msg = f"component '{name}': its worker broke the sandbox protocol and was killed ({text})"
        elif reason == "init_failed":
            msg = f"component '{name}' failed to start: {text}"
        else:
            msg = f"component '{name}' trapped in {export}: {text}"
        err = SandboxError(msg, component=name, export=export, reason=reason)
        comp.counters[_FAULT_COUNTER.get(reason, "traps")] += 1
        if comp.worker is not None:
            if comp.held is None:  # a staged successor is not in hosted: the name is its
                comp.worker.hosted.discard(name)  # predecessor's

            comp.worker = None
        if comp.loading:  # its first start: pool.load refuses it, nothing restarts it
            comp.last_fault = err
            comp.state = "failed"
            return
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
                delay = Backoff(self.cfg.backoff_base_s, self.cfg.backoff_max_s).delay(len(comp.failures) - 1)
                comp.state = "backoff"
                log.warning("%s; restarting in %.2f s", msg, delay)
                self.schedule_restart(comp, delay)
        else:
            log.warning("%s", msg)
        try:
            self.host.on_fault(name, err)
        except Exception:
            log.exception("on_fault callback failed for component '%s'", name)

    def schedule_restart(self, comp: Component, delay: float) -> None:
        if comp.timer is not None:
            comp.timer.cancel()
        gen = comp.generation

        def fire() -> None:
            comp.timer = None
            self.spawn(self.restart(comp, gen))

        comp.timer = asyncio.get_running_loop().call_later(delay, fire)

    async def restart(self, comp: Component, gen: int) -> None:
        async with self.lock:
            if (not self.running or self.comps.get(comp.name) is not comp
                    or comp.generation != gen or comp.state != "backoff"):
                return
            comp.restarts += 1
            try:
                await self.instantiate(comp, self.pick_worker())
            except ComponentLoadError as err:  # cannot happen for a module that loaded once
                comp.state = "failed"
                log.error("%s", err)

    # -- workers -----------------------------------------------------------------------------

    def recycle_due(self, worker: WorkerProcess) -> bool:
        """True when the worker has served ``recycle_after`` instantiations or has leaked more
        than ``recycle_leak_bytes`` (wasm3 frees neither runtimes nor their linear memory)."""
        if worker.instances >= self.cfg.recycle_after:
            return True
        live = sum(instance_bytes(self.comps[n].manifest) for n in worker.hosted
                   if n in self.comps)
        return worker.reserved_bytes - live >= self.cfg.recycle_leak_bytes

    async def new_worker(self, index: int) -> WorkerProcess:
        w = WorkerProcess(self.cfg.deadline_s, self.on_worker_exit, index, self.on_host_request,
                          self.cfg.worker_command(index))
        await w.start(self.cfg.max_in_flight)
        w.rss_floor = process_rss_bytes(w.pid) or 0
        return w

    async def replace_worker(self, old: WorkerProcess, why: str) -> WorkerProcess:
        """Start a new process in ``old``'s slot and move its running components (lock held)."""
        new = await self.new_worker(old.index)
        self.workers[self.workers.index(old)] = new
        log.info("sandbox worker %s replaced by %s (%s, %d instances)", old.pid, new.pid, why,
                 old.instances)
        for name in sorted(old.hosted):
            comp = self.comps.get(name)
            if comp is None or comp.worker is not old:
                continue
            if comp.state == "running":
                await self.instantiate(comp, new, allow_recycle=False)
        old.hosted.clear()
        if why in ("recycle", "rss"):
            self.spawn(old.stop())
        return new

    # -- resident memory -----------------------------------------------------------------------

    def rss_due(self, worker: WorkerProcess) -> int | None:
        """The worker's RSS (bytes) if it is past ``recycle_rss_bytes`` and past its floor (its
        size when it started, or right after it took over a recycled worker's components, plus
        ``RSS_REGROWTH_BYTES``), else None."""
        limit = self.cfg.recycle_rss_bytes
        if limit is None or not worker.alive or worker.stopping:
            return None
        rss = process_rss_bytes(worker.pid)
        if rss is None or rss < max(limit, worker.rss_floor + RSS_REGROWTH_BYTES):
            return None
        return rss

    async def watch_rss(self) -> None:
        """Every ``rss_check_s``, replace each worker whose RSS is due (see :meth:`rss_due`),
        moving its running components over with their KV, as the load-count recycling does.

        The RSS is read by the runtime from ``/proc/<pid>/statm``, never taken from the
        worker's own ping (a hostile worker could under-report it).
        """
        limit = self.cfg.recycle_rss_bytes
        if limit is None:
            return
        while True:
            await asyncio.sleep(self.cfg.rss_check_s)
            for worker in list(self.workers):
                if self.rss_due(worker) is None:
                    continue
                async with self.lock:
                    rss = self.rss_due(worker) if self.running and worker in self.workers else None
                    if rss is None:
                        continue
                    log.info("sandbox worker %s uses %.0f MiB, more than the %.0f MiB limit: "
                             "replacing it", worker.pid, rss / 2**20, limit / 2**20)
                    try:
                        new = await self.replace_worker(worker, "rss")
                    except SandboxError as err:
                        log.error("cannot replace sandbox worker %s: %s", worker.pid, err)
                        continue
                    after = process_rss_bytes(new.pid) or 0
                    new.rss_floor = after
                    if after >= limit:
                        log.warning("sandbox worker %s uses %.0f MiB just for the components it "
                                    "hosts, more than the %.0f MiB limit (max_worker_rss_mb); "
                                    "it is replaced again only after it grows by %d MiB",
                                    new.pid, after / 2**20, limit / 2**20,
                                    RSS_REGROWTH_BYTES // 2**20)

    def on_worker_exit(self, worker: WorkerProcess, culprit: Pending | None, reason: str,
                       code: int | None) -> None:
        """Report the death of ``worker`` (synchronously) and schedule its replacement."""
        if not self.running or worker not in self.workers:
            return
        how = f"exit status {code}"
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                how = f"killed by {signal.Signals(-code).name}"
        log.error("sandbox worker %s died (%s) hosting %s", worker.pid, how,
                  ", ".join(sorted(worker.hosted)) or "nothing")
        hosted = [self.comps[n] for n in sorted(worker.hosted) if n in self.comps]
        worker.hosted.clear()
        if reason == "protocol":
            self.protocol_violations += 1
        for comp in hosted:
            comp.worker = None
            if reason == "protocol":  # any of them may have taken the worker over
                self.fault(comp, ("protocol", "-", worker.violation or how))
                continue
            blamed = culprit is not None and culprit.component == comp.name
            export = culprit.export if blamed and culprit is not None else "-"
            self.fault(comp, (reason if blamed else "crashed", export, how), backoff=blamed)
            if not blamed:
                comp.state = "starting"
        self.spawn(self.respawn(worker, hosted))

    async def respawn(self, worker: WorkerProcess, hosted: list[Component]) -> None:
        async with self.lock:
            if not self.running or worker not in self.workers:
                return
            try:
                new = await self.new_worker(worker.index)
            except SandboxError as err:
                log.error("cannot restart the sandbox worker: %s", err)
                for comp in hosted:
                    if comp.state == "starting":
                        comp.state = "failed"
                return
            self.workers[self.workers.index(worker)] = new
            for comp in hosted:
                if comp.state == "starting" and self.comps.get(comp.name) is comp:
                    await self.instantiate(comp, new, allow_recycle=False)


def process_rss_bytes(pid: int | None) -> int | None:
    """Resident memory of process ``pid`` (bytes) from ``/proc/<pid>/statm``; None if unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def instance_bytes(manifest: Manifest) -> int:
    """Memory one instance keeps: its pinned linear memory plus wasm3's own structures."""
    return manifest.limits.memory_pages * 65_536 + INSTANCE_OVERHEAD_BYTES
