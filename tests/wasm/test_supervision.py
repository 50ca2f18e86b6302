"""Supervision (edge.wasm.supervision) on real compiled components and real worker processes:
gas, deadline, traps and backoff, worker crashes, recycling."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from sandbox_support import DEVICE, Recorder, demo, entry, manifest, physics_tick, wait_for

from edge.wasm.pool import FAIL_LIMIT, SandboxPool

pytestmark = pytest.mark.timeout(60)


async def test_infinite_loop_is_stopped_by_gas_while_others_tick(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, modules: dict[str, Path]) -> None:
    await pool.load(demo("physics"))
    await pool.load(manifest(tmp_path, "loop", modules["loop"], read=("a.b",), tick_hz=1))
    pool.batch("loop", 1)
    t0 = time.monotonic()
    loop_task = asyncio.create_task(pool.tick("loop", 1, 0.1))
    ticks_meanwhile = 0
    while not loop_task.done():
        np.testing.assert_allclose(await physics_tick(pool), 0.5)
        ticks_meanwhile += 1
    assert await loop_task is False
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"gas stopped the loop only after {elapsed:.2f} s"
    assert ticks_meanwhile > 5  # the other component kept ticking in its own worker
    assert rec.reasons("loop") == ["out_of_gas"]
    fault = rec.faults[0][1]
    assert fault.export == "edge_tick" and "ran out of gas" in str(fault)
    st = entry(pool, "loop")
    assert st["state"] == "backoff"
    assert st["counters"]["out_of_gas"] == 1  # type: ignore[index]
    assert st["last_fault"]["reason"] == "out_of_gas"  # type: ignore[index]
    np.testing.assert_allclose(await physics_tick(pool), 0.5)


async def test_deadline_backstop_kills_and_restarts_the_worker(
        rec: Recorder, tmp_path: Path, modules: dict[str, Path]) -> None:
    async with SandboxPool(DEVICE, rec, workers=1, deadline_s=0.5,
                           backoff_base_s=0.05) as p:
        await p.load(demo("physics"))
        # A gas budget far beyond the deadline: only the wall clock can stop this call.
        await p.load(manifest(tmp_path, "loop", modules["loop"], read=("a.b",), tick_hz=1,
                              gas=10**15))
        pid = p.worker_pids()[0]
        p.batch("loop", 1)
        t0 = time.monotonic()
        assert await p.tick("loop", 1, 0.1) is False
        assert time.monotonic() - t0 < 3.0
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert "deadline" in rec.reasons("loop")
        assert rec.reasons("physics") == ["crashed"]  # its worker went down with the loop
        await wait_for(lambda: p.state("physics") == "running")
        assert p.worker_pids()[0] != pid
        np.testing.assert_allclose(await physics_tick(p), 0.5)
        assert entry(p, "loop")["counters"]["deadlines"] == 1  # type: ignore[index]


async def test_trap_is_reported_and_restarted_with_backoff_until_failed(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, modules: dict[str, Path]) -> None:
    await pool.load(manifest(tmp_path, "trap", modules["trap"], read=("a.b",), tick_hz=1,
                             subscribe=("edge.dev1.cmd.trap",)))
    col = pool.batch("trap", 1)[0]
    col[0] = 1.0
    assert await pool.tick("trap", 1, 0.1)
    restart_times: list[float] = []
    for i in range(FAIL_LIMIT):
        await wait_for(lambda: pool.state("trap") == "running")
        restart_times.append(time.monotonic())
        col = pool.batch("trap", 1)[0]
        col[0] = -1.0
        assert await pool.tick("trap", 1, 0.1) is False
        assert pool.state("trap") == ("failed" if i == FAIL_LIMIT - 1 else "backoff")
    faults = [f for c, f in rec.faults if c == "trap"]
    assert len(faults) == FAIL_LIMIT
    assert all(f.reason == "trap" and f.export == "edge_tick" for f in faults)
    assert "unreachable" in str(faults[0]) and "component 'trap'" in str(faults[0])
    gaps = np.diff(restart_times)
    assert gaps[-1] > 3 * gaps[0], gaps  # exponential: nominally 0.05 s -> 0.4 s
    st = entry(pool, "trap")
    assert st["state"] == "failed" and st["restarts"] == FAIL_LIMIT - 1
    assert st["counters"]["traps"] == FAIL_LIMIT  # type: ignore[index]
    await asyncio.sleep(0.5)
    assert pool.state("trap") == "failed"  # stays failed and visible
    assert await pool.tick("trap", 1, 0.1) is False


async def test_trap_in_message_handler_names_the_export(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, modules: dict[str, Path]) -> None:
    await pool.load(manifest(tmp_path, "trap", modules["trap"], read=("a.b",), tick_hz=1,
                             subscribe=("edge.dev1.cmd.trap",)))
    await pool.deliver("trap", [("edge.dev1.cmd.trap", b"ok"), ("edge.dev1.cmd.trap", b""),
                                ("edge.dev1.cmd.trap", b"late")])
    await pool.flush()
    (fault,) = [f for c, f in rec.faults if c == "trap"]
    assert fault.export == "edge_on_message" and "divide by zero" in str(fault).lower()
    counters = entry(pool, "trap")["counters"]
    assert counters["messages"] == 2 and counters["dropped"] == 1  # type: ignore[index]


async def test_worker_sigsegv_restarts_and_reloads_with_kv(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, modules: dict[str, Path]) -> None:
    await pool.load(manifest(tmp_path, "counter", modules["trap"], read=("a.b",), tick_hz=1,
                             subscribe=("x.y",)), kv={"ticks": struct.pack("<q", 40)})
    await pool.load(demo("physics"))
    pool.batch("counter", 1)[0][0] = 1.0
    for _ in range(2):
        assert await pool.tick("counter", 1, 0.1)
    await pool.flush()
    assert rec.kv[("counter", "ticks")] == struct.pack("<q", 42)
    pid = entry(pool, "counter")["worker_pid"]
    assert isinstance(pid, int)
    other = [q for q in pool.worker_pids() if q != pid]
    os.kill(pid, signal.SIGSEGV)
    await wait_for(lambda: rec.reasons("counter") == ["crashed"])
    await wait_for(lambda: pool.state("counter") == "running")
    new_pid = entry(pool, "counter")["worker_pid"]
    assert new_pid != pid and psutil.pid_exists(new_pid)  # type: ignore[arg-type]
    assert set(other) <= set(pool.worker_pids())  # the other worker was not touched
    pool.batch("counter", 1)[0][0] = 1.0
    assert await pool.tick("counter", 1, 0.1)
    await pool.flush()
    assert rec.kv[("counter", "ticks")] == struct.pack("<q", 43)  # KV state survived
    np.testing.assert_allclose(await physics_tick(pool), 0.5)  # the rest kept running
    assert entry(pool, "counter")["counters"]["crashes"] == 1  # type: ignore[index]
    assert entry(pool, "counter")["state"] == "running"


async def test_load_unload_1000_times_keeps_memory_bounded(
        rec: Recorder, tmp_path: Path, modules: dict[str, Path]) -> None:
    me = psutil.Process()
    async with SandboxPool(DEVICE, rec, workers=1, recycle_after=100) as p:
        await p.load(demo("physics"))  # a live component, moved at every recycle
        m = demo("echo")
        pids: set[int] = set()
        base_self = 0
        worker_max = 0
        for i in range(1000):
            await p.load(m)
            await p.deliver("echo", [("edge.dev1.cmd.echo", b"%d" % i)])
            await p.unload("echo")
            pids.update(p.worker_pids())
            if i == 50:
                base_self = me.memory_info().rss
            if i % 25 == 0:
                rss = psutil.Process(p.worker_pids()[0]).memory_info().rss
                worker_max = max(worker_max, rss)
        await p.flush()
        # Without recycling, 1000 instances of echo (16 pinned pages each) take > 1 GB.
        assert len(pids) >= 10, "the worker was not recycled"
        assert worker_max < 120 * 2**20, worker_max
        assert me.memory_info().rss - base_self < 30 * 2**20
        assert p.state("physics") == "running"
        np.testing.assert_allclose(await physics_tick(p), 0.5)
        assert len(rec.published) == 1000  # every message was handled, across 10+ workers
