"""SandboxPool supervision on real compiled components and real worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from sandbox_support import (
    DEVICE,
    ROOT,
    Recorder,
    build_module,
    compile_test_components,
    wait_for,
    write_manifest,
)

from edge.errors import ComponentLoadError, SandboxError
from edge.wasm.manifest import Manifest, load_manifest
from edge.wasm.pool import FAIL_LIMIT, SandboxPool

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    build_module().build()
    return compile_test_components(tmp_path_factory.mktemp("wasm"))


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def pool(rec: Recorder) -> AsyncIterator[SandboxPool]:
    p = SandboxPool(DEVICE, rec, backoff_base_s=0.05, deadline_s=5.0)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def demo(name: str) -> Manifest:
    return load_manifest(ROOT / "components" / name / "manifest.toml", DEVICE)


def manifest(tmp: Path, name: str, module: Path, **kw: object) -> Manifest:
    return load_manifest(write_manifest(tmp, name, module, **kw), DEVICE)  # type: ignore[arg-type]


def entry(p: SandboxPool, name: str) -> dict[str, object]:
    return next(s for s in p.status() if s["name"] == name)


async def physics_tick(p: SandboxPool, n: int = 4) -> np.ndarray:
    cols = p.batch("physics", n)
    for c in cols[:3]:
        c[:] = 0.0
    for c in cols[3:]:
        c[:] = 1.0
    assert await p.tick("physics", n, 0.5)
    return np.array(cols[0])


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


async def test_publish_outside_grants_is_denied_counted_and_logged(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, modules: dict[str, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.wasm")
    await pool.load(manifest(tmp_path, "forbidden", modules["forbidden"], read=("a.b",),
                             tick_hz=1, publish=("edge.{device}.evt.forbidden.>",)))
    pool.batch("forbidden", 1)
    for _ in range(3):
        assert await pool.tick("forbidden", 1, 0.1)
    await pool.flush()
    assert [s for _, s, _ in rec.published] == ["edge.dev1.evt.forbidden.ok"] * 3
    counters = entry(pool, "forbidden")["counters"]
    assert counters["denied"] == 3 and counters["published"] == 3  # type: ignore[index]
    assert any("denied publishing to edge.dev1.cmd.motors.arm" in r.message
               for r in caplog.records)
    # the component saw 0 (ok), -1 (denied), -2 (wildcard subject is invalid)
    assert any(r.message == "[forbidden] 0 -1 -2" for r in caplog.records)


async def test_memory_grow_beyond_the_limit_fails(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, modules: dict[str, Path]) -> None:
    await pool.load(manifest(tmp_path, "grow", modules["grow"], read=("a.b",), tick_hz=1,
                             publish=("edge.dev1.evt.grow",), memory_pages=4))
    for pages in (1.0, 1000.0):
        pool.batch("grow", 1)[0][0] = pages
        assert await pool.tick("grow", 1, 0.1)
    await pool.flush()
    assert [d for _, _, d in rec.published] == [b"-1 4", b"-1 4"]


async def test_module_outside_the_contract_is_refused_at_load(
        pool: SandboxPool, tmp_path: Path, modules: dict[str, Path]) -> None:
    with pytest.raises(ComponentLoadError, match="imports edge.open_socket, which contract 1 "
                                                 "does not provide"):
        await pool.load(manifest(tmp_path, "sock", modules["badimport"], read=("a.b",),
                                 tick_hz=1))
    assert [s["name"] for s in pool.status()] == []


async def test_unknown_component_and_usage_errors(pool: SandboxPool) -> None:
    with pytest.raises(SandboxError, match="no component named 'ghost'"):
        await pool.tick("ghost", 1, 0.1)
    await pool.load(demo("physics"))
    with pytest.raises(SandboxError, match="call batch"):
        await pool.tick("physics", 10, 0.1)
    await pool.unload("physics")
    assert pool.state("physics") == "unloaded"
    assert await pool.tick("physics", 0, 0.1) is False
