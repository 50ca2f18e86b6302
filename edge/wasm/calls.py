"""The hot-path requests to a component's worker: ticks (copy and shared mode) and messages.

Each function takes the :class:`~edge.wasm.supervision.Supervisor` (which accounts for the
reply) and the component; :class:`~edge.wasm.pool.SandboxPool` is their public face and
documents what they do. ``shm`` is the pool's shared memory directory, for new batch files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import SandboxError
from edge.wasm.columns import CopyBatch, OutputArea, WorldColumns
from edge.wasm.component import Component
from edge.wasm.procs import WorkerGone
from edge.wasm.protocol import FLAG_SHARED, BindSpec, CallResult, encode_tick
from edge.wasm.supervision import Supervisor
from edge.wasm.worker.columns import MAX_SHARED_WRITE_COLUMNS

log = logging.getLogger("edge.wasm.pool")

#: Smallest batch capacity allocated (entities).
MIN_BATCH_CAPACITY = 64


def batch(comp: Component, shm: Callable[[], Path], n: int) -> list[np.ndarray]:
    """Copy mode: the batch's column views of length ``n``, growing its file if needed."""
    if n < 0:
        raise ValueError(f"batch size must be >= 0 (got {n})")
    b = comp.batch
    if b is None or n > b.capacity:
        cap = max(n, MIN_BATCH_CAPACITY, 2 * b.capacity if b is not None else 0)
        comp.batch_gen += 1
        new = CopyBatch(shm() / f"{comp.name}.{comp.batch_gen}.cols",
                        len(comp.manifest.columns), cap)
        if b is not None:
            b.discard()
        comp.batch = b = new
        comp.batch_sent = False
    return b.views(n)


async def tick(sup: Supervisor, comp: Component, n: int, dt: float,
               ids: Sequence[str] | None,
               clock: Sequence[tuple[int, int]] | None = None) -> bool:
    """Copy mode: run ``edge_tick`` on the batch file (``clock``: the values its clock reads
    answer, replay clock mode)."""
    name = comp.name
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
        worker.send(("setup", comp.wire, send_ids, shm), name, "edge_tick")  # answered in order
    if comp.tick_clocks or comp.tick_clocks_cut:
        comp.tick_clocks, comp.tick_clocks_cut = [], 0
    if clock is not None:  # [replay hook] answered in order, before the tick
        worker.send(("clock", comp.wire, list(clock)), name, "edge_tick")
    fut = worker.send(encode_tick(comp.handle, n, float(dt)), name, "edge_tick")
    comp.batch_sent = True
    comp.ids_sent = True
    comp.bound = None
    try:
        status, payload = await fut
    except WorkerGone:
        return False
    return sup.finish_call(comp, worker, status, payload, "edge_tick", 0,
                           current=comp.generation == gen)


async def tick_shared(sup: Supervisor, comp: Component, shm: Callable[[], Path], n: int,
                      dt: float, *, version: object, columns: Sequence[tuple[str, int, int]],
                      index: np.ndarray | None, ids: Sequence[str],
                      on_done: Callable[[], None]) -> bool | None:
    """Shared mode: bind if ``version`` changed, tick, copy the written write columns back."""
    fut: asyncio.Future[tuple[str, Any]] | None = None
    called = False
    name = comp.name

    def finish(_f: object = None) -> None:
        nonlocal called
        if not called:
            called = True
            on_done()

    try:
        worker = comp.worker
        if comp.shared_refused:
            return None
        if comp.state != "running" or worker is None or not comp.info.ticks:
            return False
        gen = comp.generation
        bind: asyncio.Future[tuple[str, Any]] | None = None
        key = (version, worker.pid)
        if comp.bound != key:
            spec = bind_spec(comp, shm, n, columns, index, ids)
            if spec is None:
                return None
            bind = worker.send(("bind", comp.wire, spec), name, "edge_tick")
            comp.bound = key
        fut = worker.send(encode_tick(comp.handle, n, float(dt), FLAG_SHARED), name,
                          "edge_tick")
        try:
            if bind is not None:
                bstatus, bpayload = await asyncio.shield(bind)
                if bstatus != "ok":
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
        ok = sup.finish_call(comp, worker, status, payload, "edge_tick", 0,
                             current=comp.generation == gen, shared=True)
        if ok and comp.output is not None and comp.world is not None:
            comp.world.scatter(comp.output, payload.written, n, index)
        return ok
    finally:
        if fut is None or fut.done():
            finish()
        else:  # cancelled: the worker may still touch the slots until it answers
            fut.add_done_callback(finish)


def bind_spec(comp: Component, shm: Callable[[], Path], n: int,
              columns: Sequence[tuple[str, int, int]], index: np.ndarray | None,
              ids: Sequence[str]) -> BindSpec | None:
    """What the worker maps for a shared batch; None (copy mode from now on) if the runtime
    cannot map the write columns itself."""
    writable = comp.manifest.writable
    if len(writable) > MAX_SHARED_WRITE_COLUMNS or len(columns) != len(comp.manifest.columns):
        comp.shared_refused = True
        return None
    cols = tuple(columns)
    try:
        if comp.world is None or comp.world.key != cols:
            comp.world = WorldColumns(cols, writable)
    except SandboxError as err:
        comp.shared_refused = True
        log.warning("component '%s': %s; ticks use copies", comp.name, err.message)
        return None
    out = comp.output
    if out is None or n > out.capacity:
        cap = max(n, MIN_BATCH_CAPACITY, 2 * out.capacity if out is not None else 0)
        comp.batch_gen += 1
        new = OutputArea(shm() / f"{comp.name}.{comp.batch_gen}.out", len(writable), cap)
        if out is not None:
            out.discard()
        comp.output = out = new
    idx = None if index is None else np.ascontiguousarray(index, np.intp).tobytes()
    return BindSpec(n, cols, idx, tuple(ids), (str(out.path), out.capacity))


def _message_clocks(sup: Supervisor, name: str, res: object = None) -> None:
    """[replay hook] tell the listener a batch's clock reads (none: it was not run)."""
    listener = sup.message_clocks
    if listener is not None:
        if isinstance(res, CallResult):
            listener(name, res.clocks, res.clocks_cut)
        else:
            listener(name, (), 0)


async def deliver(sup: Supervisor, comp: Component,
                  messages: Sequence[tuple[str, bytes]], hops: int = 0,
                  clock: Sequence[tuple[int, int]] | None = None) -> None:
    """Send one message batch once the worker's window has room; the reply is accounted for
    in a done-callback (``hops``: the batch's largest hop count; ``clock``: the values the
    batch's clock reads answer, replay clock mode)."""
    if not messages:
        return
    worker = comp.worker
    if comp.state != "running" or worker is None or not comp.info.handles_messages:
        comp.counters["dropped"] += len(messages)
        _message_clocks(sup, comp.name)
        return
    window = worker.window
    if window is None:
        _message_clocks(sup, comp.name)
        raise SandboxError(f"the worker of component '{comp.name}' is not started",
                           component=comp.name, reason="usage")
    await window.acquire()
    if comp.worker is not worker or comp.state != "running":
        window.release()
        comp.counters["dropped"] += len(messages)
        _message_clocks(sup, comp.name)
        return
    gen = comp.generation
    count = len(messages)
    if clock is not None:  # [replay hook] answered in order, before the batch
        worker.send(("clock", comp.wire, list(clock)), comp.name, "edge_on_message")
    fut = worker.send(("deliver", comp.wire, list(messages)), comp.name, "edge_on_message")

    def done(f: asyncio.Future[tuple[str, Any]]) -> None:
        window.release()
        if f.cancelled() or f.exception() is not None:
            comp.counters["dropped"] += count
            _message_clocks(sup, comp.name)
            return
        status, payload = f.result()
        sup.finish_call(comp, worker, status, payload, "edge_on_message", count,
                        current=comp.generation == gen, hops=hops)
        _message_clocks(sup, comp.name, payload)

    fut.add_done_callback(done)
