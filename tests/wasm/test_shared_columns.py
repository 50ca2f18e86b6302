"""Ticks on the world's shared columns: real World, real worker, real compiled components.

The rules under test (docs/sandbox.md, "Shared world columns"): while a batch is in flight a
freed slot is not reused and is cleared again afterwards; growth during a tick keeps every slot
in place, so the tick's results land on the right entities and never on a new one; other
fields written meanwhile are kept, the fields the system writes are last-writer-wins; a worker
that cannot map the columns makes the loop fall back to copies.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from sandbox_support import DEVICE, ROOT, Recorder, build_module, compile_test_components, wait_for, write_manifest

from edge.wasm.layer import WasmTickRunner
from edge.wasm.manifest import Manifest, load_manifest
from edge.wasm.pool import SandboxPool
from edge.world.scheduler import SharedBatch, TickLoop
from edge.world.store import World

pytestmark = pytest.mark.timeout(60)

WAIT_S = 0.3  # how long the busy component holds a tick in flight


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    build_module().build()
    return compile_test_components(tmp_path_factory.mktemp("wasm"))


@pytest.fixture
async def pool() -> AsyncIterator[SandboxPool]:
    p = SandboxPool(DEVICE, Recorder(), backoff_base_s=0.05, workers=1)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def physics() -> Manifest:
    return load_manifest(ROOT / "components" / "physics" / "manifest.toml", DEVICE)


def busy(tmp: Path, modules: dict[str, Path]) -> Manifest:
    path = write_manifest(tmp, "busy", modules["busy"], read=("position.x",), write=("position.x",),
                          tick_hz=1.0)
    return load_manifest(path, DEVICE)


def physics_world(n: int, *, sparse: bool, shared: bool = True) -> World:
    w = World(shared=shared, capacity=8)
    for i in range(n):
        comps = {"position": {"x": i, "y": 2 * i, "z": 0.5}}
        if not sparse or i % 3 != 1:
            comps["velocity"] = {"x": 1.0, "y": -2.0, "z": 4.0}
        w.spawn(f"e{i}", components=comps)
    return w


def loop_for(w: World, pool: SandboxPool, m: Manifest) -> TickLoop:
    return TickLoop(w, WasmTickRunner(pool, m.name), read=m.read, write=m.write, hz=1.0)


@pytest.mark.parametrize("sparse", [False, True])
async def test_shared_tick_updates_the_world_in_place(pool: SandboxPool, sparse: bool) -> None:
    m = physics()
    await pool.load(m)
    w = physics_world(300, sparse=sparse)
    loop = loop_for(w, pool, m)
    assert loop.mode == "shared"
    w.take_changes()
    for _ in range(3):
        assert await loop.tick_once(0.5)
    assert loop.stats.ticks == 3 and loop.stats.stale == 0 and w.in_flight == 0
    for i in range(300):
        moved = not sparse or i % 3 != 1
        p = w.get(f"e{i}", "position")
        assert p == ({"x": i + 1.5, "y": 2 * i - 3.0, "z": 6.5} if moved else {"x": i, "y": 2 * i, "z": 0.5})
    writes, *_ = w.take_changes()
    changed = {e for e, c, _ in writes if c == "position"}
    assert changed == {f"e{i}" for i in range(300) if not sparse or i % 3 != 1}
    assert not any(c == "velocity" for _, c, _ in writes)


async def test_private_world_uses_the_copy_path(pool: SandboxPool) -> None:
    m = physics()
    await pool.load(m)
    w = physics_world(50, sparse=True, shared=False)
    loop = loop_for(w, pool, m)
    assert loop.mode == "copy" and w.shared_refs(m.columns) is None
    assert await loop.tick_once(1.0)
    assert w.get("e0", "position") == {"x": 1.0, "y": -2.0, "z": 4.5}
    assert w.get("e1", "position") == {"x": 1.0, "y": 2.0, "z": 0.5}


async def _in_flight(loop: TickLoop, dt: float) -> asyncio.Task[bool]:
    task = asyncio.create_task(loop.tick_once(dt))
    await wait_for(lambda: loop.world.in_flight == 1, timeout=5, step=0.001)
    return task


async def test_freed_slot_is_quarantined_while_a_tick_is_in_flight(
        pool: SandboxPool, modules: dict[str, Path], tmp_path: Path) -> None:
    m = busy(tmp_path, modules)
    await pool.load(m)
    w = World(capacity=8)
    for i in range(4):
        w.spawn(f"e{i}", components={"position": {"x": 10 * i}})
    loop = loop_for(w, pool, m)
    slot1 = int(np.flatnonzero(w.query(["position"]).index == 1)[0])
    task = await _in_flight(loop, WAIT_S)
    w.remove("e1")  # the worker still writes x+1 into its slot later
    w.spawn("new", components={"position": {"x": 7}})
    assert await task
    assert w.get("new", "position")["x"] == 7.0  # not the slot the tick wrote into
    assert [w.get(f"e{i}", "position")["x"] for i in (0, 2, 3)] == [1.0, 21.0, 31.0]
    assert w.in_flight == 0
    assert w.column("position.x")[slot1] == 0.0  # cleared again after the flight
    w.spawn("later", components={"position": {"y": 3}})
    assert w.get("later", "position") == {"x": 0.0, "y": 3.0, "z": 0.0}


async def test_growth_during_a_tick_keeps_slots_and_results(
        pool: SandboxPool, modules: dict[str, Path], tmp_path: Path) -> None:
    m = busy(tmp_path, modules)
    await pool.load(m)
    w = World(capacity=4)
    for i in range(4):
        w.spawn(f"e{i}", components={"position": {"x": 10 * i}})
    loop = loop_for(w, pool, m)
    before = w.shared_refs(["position.x"])
    task = await _in_flight(loop, WAIT_S)
    for i in range(4, 12):  # grows 4 -> 8 -> 16 slots while the worker holds the old mapping
        w.spawn(f"e{i}", components={"position": {"x": 10 * i}})
    after = w.shared_refs(["position.x"])
    assert before is not None and after is not None
    assert after[0].ino == before[0].ino and after[0].nbytes == 16 * 8 > before[0].nbytes
    assert await task
    assert loop.stats.stale == 0
    xs = [w.get(f"e{i}", "position")["x"] for i in range(12)]
    assert xs == [1.0, 11.0, 21.0, 31.0] + [10.0 * i for i in range(4, 12)]  # new ones untouched
    assert await loop.tick_once(0.0)  # next tick binds the grown columns
    assert [w.get(f"e{i}", "position")["x"] for i in (0, 11)] == [2.0, 111.0]


async def test_concurrent_writers_other_fields_kept_written_field_last_writer_wins(
        pool: SandboxPool, modules: dict[str, Path], tmp_path: Path) -> None:
    m = busy(tmp_path, modules)
    await pool.load(m)
    w = World()
    for i in range(3):
        w.spawn(f"e{i}", components={"position": {"x": 1, "y": 1}})
    loop = loop_for(w, pool, m)
    task = await _in_flight(loop, WAIT_S)
    await asyncio.sleep(WAIT_S / 3)  # the worker has read its columns (it writes at WAIT_S)
    w.set("e0", "position", {"y": 50})  # a field the system does not write: kept
    w.set("e1", "position", {"x": 99})  # a field it writes, before its col_write: the tick wins
    w.unset("e2", "position")  # gone during the flight: cleared again afterwards
    assert await task
    assert w.get("e0", "position") == {"x": 2.0, "y": 50.0, "z": 0.0}
    assert w.get("e1", "position")["x"] == 2.0
    assert not w.has("e2", "position") and w.query(["position"]).ids == ["e0", "e1"]
    assert float(w.column("position.x")[2]) == 0.0  # e2's slot: the tick's write was cleared
    w.take_changes()  # no dirty mark on the unset component (would raise)


async def test_worker_that_cannot_map_the_columns_falls_back_to_copies(pool: SandboxPool) -> None:
    m = physics()
    await pool.load(m)
    done: list[int] = []
    bogus = [("/proc/self/fd/999999", 1, 8)] * len(m.columns)
    got = await pool.tick_shared("physics", 1, 0.1, version=1, columns=bogus, index=None, ids=["a"],
                                 on_done=lambda: done.append(1))
    assert got is None and done == [1]
    assert pool.state("physics") == "running"

    class Broken(WasmTickRunner):
        async def run_shared(self, batch: SharedBatch, dt: float, on_done: Callable[[], None]) -> bool | None:
            refs = tuple(type(r)("/proc/self/fd/999999", r.ino, r.nbytes) for r in batch.refs)
            return await super().run_shared(SharedBatch(batch.n, batch.version, refs, batch.index,
                                                        batch.ids), dt, on_done)

    await pool.load(m)  # fresh component: not marked as refused yet
    w = physics_world(10, sparse=False)
    loop = TickLoop(w, Broken(pool, "physics"), read=m.read, write=m.write, hz=1.0)
    assert loop.mode == "shared"
    assert await loop.tick_once(1.0)
    assert loop.mode == "copy" and w.in_flight == 0
    assert w.get("e3", "position") == {"x": 4.0, "y": 4.0, "z": 4.5}


async def test_lease_released_when_not_running_and_when_the_worker_dies(
        pool: SandboxPool, modules: dict[str, Path], tmp_path: Path) -> None:
    m = busy(tmp_path, modules)
    await pool.load(m)
    w = World()
    w.spawn("a", components={"position": {"x": 1}})
    loop = loop_for(w, pool, m)
    task = await _in_flight(loop, 10.0)
    pid = pool.worker_pids()[0]
    os.kill(pid, signal.SIGKILL)
    assert await asyncio.wait_for(task, 5) is False
    assert w.in_flight == 0 and w.get("a", "position")["x"] == 1.0
    await wait_for(lambda: pool.state("busy") == "backoff" or pool.state("busy") == "running")
    await pool.unload("busy")
    assert await loop.tick_once(0.0) is False and w.in_flight == 0


async def test_cancelled_tick_keeps_the_lease_until_the_worker_answers(
        pool: SandboxPool, modules: dict[str, Path], tmp_path: Path) -> None:
    m = busy(tmp_path, modules)
    await pool.load(m)
    w = World()
    w.spawn("a", components={"position": {"x": 1}})
    loop = loop_for(w, pool, m)
    task = await _in_flight(loop, WAIT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert w.in_flight == 1  # the worker may still write: the slot stays quarantined
    await wait_for(lambda: w.in_flight == 0, timeout=5)
    await pool.flush()
