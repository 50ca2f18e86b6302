"""The warm-standby swap: a successor staged beside the running instance, then promoted
(SandboxPool.stage / promote, TickLoop.stop_after_tick; docs/ota.md, *Store and activation*).
Real worker processes, real compiled wasm."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
from sandbox_support import Recorder, manifest, wait_for

from edge.errors import ComponentLoadError
from edge.wasm.pool import SandboxPool
from edge.world.scheduler import NativeTickRunner, TickLoop
from edge.world.store import World

pytestmark = pytest.mark.timeout(60)


def i32(v: int) -> bytes:
    return struct.pack("<i", v)


async def test_stop_after_tick_finishes_the_tick_and_the_successor_takes_the_next_slot() -> None:
    world = World(shared=False)
    world.spawn("e1", "drone", components={"position": {"x": 0.0}})
    old_ticks: list[float] = []
    new_ticks: list[float] = []
    loop = asyncio.get_running_loop()

    def old_fn(cols: list[np.ndarray], n: int, dt: float) -> None:
        old_ticks.append(loop.time())

    def new_fn(cols: list[np.ndarray], n: int, dt: float) -> None:
        new_ticks.append(loop.time())

    old = TickLoop(world, NativeTickRunner("old", 1, old_fn), read=["position.x"], write=[], hz=50)
    old.start()
    await wait_for(lambda: len(old_ticks) >= 3)
    since = await old.stop_after_tick()
    assert since is not None and since == old.last_at
    count = len(old_ticks)
    new = TickLoop(world, NativeTickRunner("new", 1, new_fn), read=["position.x"], write=[], hz=50)
    new.start(since=since)
    await wait_for(lambda: len(new_ticks) >= 3)
    await new.stop()
    assert len(old_ticks) == count  # the old one never ticked after it stopped
    assert old.stats.ticks == count
    # the successor's first tick is the old schedule's next slot: not before it (no double tick)
    assert new_ticks[0] >= since + old.period - 1e-6
    assert old_ticks[-1] < new_ticks[0]


async def test_stop_after_tick_waits_for_the_tick_under_way() -> None:
    world = World(shared=False)
    world.spawn("e1", "drone", components={"position": {"x": 0.0}})
    entered = asyncio.Event()
    release = asyncio.Event()
    done: list[bool] = []

    class Slow(NativeTickRunner):
        async def run(self, n: int, dt: float, ids: object) -> bool:
            entered.set()
            await release.wait()
            done.append(True)
            return True

    tl = TickLoop(world, Slow("slow", 1, lambda c, n, dt: None), read=["position.x"], write=[], hz=50)
    tl.start()
    await entered.wait()
    stopping = asyncio.create_task(tl.stop_after_tick())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # the tick under way is not cut off
    release.set()
    assert await stopping == tl.last_at
    assert done == [True] and tl.stats.ticks == 1


async def test_staged_init_sees_the_state_and_its_effects_wait_for_the_promotion(
        pool: SandboxPool, rec: Recorder, modules: dict[str, Path], tmp_path: Path) -> None:
    m1 = manifest(tmp_path, "swap", modules["swapper"], subscribe=("edge.dev1.cmd.swap",))
    await pool.load(m1, {"count": i32(3)})
    await pool.flush()
    assert rec.kv[("swap", "seen")] == i32(3)
    await pool.deliver("swap", [("edge.dev1.cmd.swap", b"w\x05")])
    await pool.flush()
    assert rec.kv[("swap", "count")] == i32(5)
    (tmp_path / "v2").mkdir()
    m2 = manifest(tmp_path / "v2", "swap", modules["swapper"], version="2.0.0",
                  subscribe=("edge.dev1.cmd.swap",))
    del rec.kv[("swap", "seen")]
    await pool.stage(m2, pool.kv_view("swap"))
    assert pool.staged("swap") == "2.0.0"
    await pool.flush()
    assert ("swap", "seen") not in rec.kv  # held: the old one is still the component
    assert pool.state("swap") == "running" and pool.status()[0]["version"] == "1.0.0"
    old_pid = pool.status()[0]["worker_pid"]
    assert await pool.promote("swap") is True
    await pool.flush()
    assert rec.kv[("swap", "seen")] == i32(5)  # edge_init saw the state as it was, written now
    st = pool.status()[0]
    assert st["version"] == "2.0.0" and st["state"] == "running"
    assert st["worker_pid"] != old_pid  # staged in the other worker
    assert pool.staged("swap") is None
    await pool.deliver("swap", [("edge.dev1.cmd.swap", b"w\x09")])  # messages go to the new one
    await pool.flush()
    assert rec.kv[("swap", "count")] == i32(9)


async def test_a_kv_write_of_the_old_while_staged_makes_a_cold_swap_with_the_current_state(
        pool: SandboxPool, rec: Recorder, modules: dict[str, Path], tmp_path: Path) -> None:
    m1 = manifest(tmp_path, "swap", modules["swapper"], subscribe=("edge.dev1.cmd.swap",))
    await pool.load(m1, {"count": i32(1)})
    (tmp_path / "v2").mkdir()
    m2 = manifest(tmp_path / "v2", "swap", modules["swapper"], version="2.0.0",
                  subscribe=("edge.dev1.cmd.swap",))
    await pool.stage(m2, pool.kv_view("swap"))
    await pool.deliver("swap", [("edge.dev1.cmd.swap", b"w\x07")])  # the old one writes
    assert await pool.promote("swap") is False  # its edge_init saw 1: loaded again
    await pool.flush()
    assert rec.kv[("swap", "seen")] == i32(7)
    assert pool.status()[0]["version"] == "2.0.0"


async def test_a_failing_staged_init_leaves_the_old_running(
        pool: SandboxPool, rec: Recorder, modules: dict[str, Path], tmp_path: Path) -> None:
    m1 = manifest(tmp_path, "swap", modules["swapper"], subscribe=("edge.dev1.cmd.swap",))
    await pool.load(m1)
    (tmp_path / "v2").mkdir()
    bad = manifest(tmp_path / "v2", "swap", modules["initfail"], version="2.0.0")
    with pytest.raises(ComponentLoadError, match=r"edge_init returned 1; the running version is kept"):
        await pool.stage(bad, pool.kv_view("swap"))
    assert pool.staged("swap") is None
    st = pool.status()[0]
    assert st["version"] == "1.0.0" and st["state"] == "running"
    assert rec.faults == []  # a refused successor is no fault of the running component
    with pytest.raises(ComponentLoadError, match="no staged successor"):
        await pool.promote("swap")
    await pool.deliver("swap", [("edge.dev1.cmd.swap", b"w\x02")])
    await pool.flush()
    assert rec.kv[("swap", "count")] == i32(2)


async def test_a_crash_of_the_staged_worker_keeps_the_old_and_refuses_the_promotion(
        pool: SandboxPool, rec: Recorder, modules: dict[str, Path], tmp_path: Path) -> None:
    m1 = manifest(tmp_path, "swap", modules["swapper"], subscribe=("edge.dev1.cmd.swap",))
    await pool.load(m1)
    old_pid = pool.status()[0]["worker_pid"]
    (tmp_path / "v2").mkdir()
    m2 = manifest(tmp_path / "v2", "swap", modules["swapper"], version="2.0.0")
    await pool.stage(m2, pool.kv_view("swap"))
    staged_pid = next(p for p in pool.worker_pids() if p != old_pid)
    os.kill(staged_pid, signal.SIGKILL)
    await wait_for(lambda: staged_pid not in pool.worker_pids() and len(pool.worker_pids()) == 2)
    with pytest.raises(ComponentLoadError, match="its sandbox worker died"):
        await pool.promote("swap")
    st = pool.status()[0]
    assert st["version"] == "1.0.0" and st["state"] == "running" and st["worker_pid"] == old_pid
    assert rec.faults == []
    # staging again works (the replacement worker), and so does the promotion
    await pool.stage(m2, pool.kv_view("swap"))
    assert await pool.promote("swap") is True
    assert pool.status()[0]["version"] == "2.0.0"


async def test_at_most_one_successor_is_staged(
        pool: SandboxPool, modules: dict[str, Path], tmp_path: Path) -> None:
    await pool.load(manifest(tmp_path, "swap", modules["swapper"]))
    for v in ("2.0.0", "3.0.0"):
        (tmp_path / v).mkdir()
        await pool.stage(manifest(tmp_path / v, "swap", modules["swapper"], version=v),
                         pool.kv_view("swap"))
    assert pool.staged("swap") == "3.0.0"
    await pool.discard_staged("swap")
    assert pool.staged("swap") is None


async def test_a_single_worker_pool_stages_beside_the_running_instance(
        modules: dict[str, Path], tmp_path: Path) -> None:
    rec = Recorder()
    async with SandboxPool("dev1", rec, workers=1) as p:
        await p.load(manifest(tmp_path, "swap", modules["swapper"], subscribe=("edge.dev1.cmd.swap",)),
                     {"count": i32(4)})
        (tmp_path / "v2").mkdir()
        (tmp_path / "v3").mkdir()
        bad = manifest(tmp_path / "v3", "swap", modules["initfail"], version="3.0.0")
        with pytest.raises(ComponentLoadError, match="the running version is kept"):
            await p.stage(bad, p.kv_view("swap"))
        # the failed successor in the same worker did not take the running one with it
        await p.deliver("swap", [("edge.dev1.cmd.swap", b"w\x06")])
        await p.flush()
        assert rec.kv[("swap", "count")] == i32(6)
        await p.stage(manifest(tmp_path / "v2", "swap", modules["swapper"], version="2.0.0",
                               subscribe=("edge.dev1.cmd.swap",)), p.kv_view("swap"))
        assert await p.promote("swap") is True
        await p.flush()
        assert rec.kv[("swap", "seen")] == i32(6)
        await p.deliver("swap", [("edge.dev1.cmd.swap", b"w\x08")])
        await p.flush()
        assert rec.kv[("swap", "count")] == i32(8)
        st = p.status()[0]
        assert st["version"] == "2.0.0" and st["state"] == "running"
