"""SandboxPool's public face on real compiled components and real worker processes: loading,
refusals, usage errors."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from sandbox_support import Recorder, demo, manifest, with_start

from edge.errors import ComponentLoadError, SandboxError
from edge.wasm.manifest import Manifest
from edge.wasm.pool import SandboxPool

pytestmark = pytest.mark.timeout(60)


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


async def test_module_file_is_size_capped_at_load_without_reading_it(
        pool: SandboxPool, tmp_path: Path, modules: dict[str, Path]) -> None:
    module = tmp_path / "big.wasm"
    module.write_bytes(modules["loop"].read_bytes())
    m = manifest(tmp_path, "big", module, read=("a.b",), tick_hz=1)
    os.truncate(module, 64 * 2**30)  # grew after the manifest was checked; sparse, never read
    with pytest.raises(ComponentLoadError) as exc:
        await pool.load(m)
    assert str(exc.value) == (f"component 'big': module file {module} is {64 * 2**30} bytes, "
                              "larger than the 16 MiB limit")
    assert exc.value.path == str(module) and exc.value.component == "big"
    module.unlink()
    os.mkfifo(module)  # a FIFO is refused at once, not waited on
    with pytest.raises(ComponentLoadError, match=f"module file {module} is not a regular file"):
        await pool.load(m)
    assert [s["name"] for s in pool.status()] == []


def lifecycle(tmp_path: Path, modules: dict[str, Path], *, start: bool = True,
              gas: int | None = None) -> Manifest:
    """The lifecycle test component, with a start section if ``start``."""
    module = tmp_path / "lc.wasm"
    wasm = modules["lifecycle"].read_bytes()
    module.write_bytes(with_start(wasm, "edge_start_here") if start else wasm)
    return manifest(tmp_path, "lc", module, subscribe=("edge.dev1.cmd.lc",), gas=gas)


async def test_a_harmless_start_function_runs_once_before_edge_init(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, modules: dict[str, Path]) -> None:
    # edge_init returns 7 unless the start function ran exactly once before it
    await pool.load(lifecycle(tmp_path, modules), {"start": b"h"})
    assert pool.state("lc") == "running"
    await pool.flush()
    assert rec.kv[("lc", "started")] == struct.pack("<i", 1)  # its effects count
    assert rec.faults == []


@pytest.mark.parametrize(("mode", "gas", "reason"), [
    (b"t", None, "component 'lc' trapped in start: [trap] unreachable"),
    (b"s", 1_000_000, "component 'lc' ran out of gas in start (limit 1000000)"),
])
async def test_a_fault_in_the_start_function_refuses_the_load(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, modules: dict[str, Path],
        mode: bytes, gas: int | None, reason: str) -> None:
    m = lifecycle(tmp_path, modules, gas=gas)
    with pytest.raises(ComponentLoadError) as exc:
        await pool.load(m, {"start": mode})
    assert str(exc.value).startswith(reason) and str(exc.value).endswith("; it is not loaded")
    assert exc.value.component == "lc" and exc.value.path == str(m.path)
    assert pool.status() == [] and rec.faults == []


@pytest.mark.parametrize(("kv", "reason"), [
    ({"init": struct.pack("<i", 1)}, "component 'lc' failed to start: edge_init returned 1"),
    ({"init": struct.pack("<i", -3)}, "component 'lc' failed to start: edge_init returned -3"),
])
async def test_a_failing_edge_init_refuses_the_load(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, modules: dict[str, Path],
        kv: dict[str, bytes], reason: str) -> None:
    m = lifecycle(tmp_path, modules, start=False)
    with pytest.raises(ComponentLoadError) as exc:
        await pool.load(m, kv)
    assert str(exc.value) == f"{reason}; it is not loaded"
    assert pool.status() == [] and rec.faults == []
    await pool.load(m)  # the name is free again; nothing restarts the refused one
    assert pool.state("lc") == "running"
    assert [s["name"] for s in pool.status()] == ["lc"] and rec.faults == []


async def test_a_load_past_the_deadline_is_refused(
        rec: Recorder, tmp_path: Path, modules: dict[str, Path]) -> None:
    m = lifecycle(tmp_path, modules, gas=2**53)  # gas cannot stop it: the deadline does
    async with SandboxPool("dev1", rec, deadline_s=0.5, backoff_base_s=0.05) as p:
        # the load request (start function + edge_init) is timed as edge_init
        with pytest.raises(ComponentLoadError,
                           match=r"ran past the 0.5 s deadline in edge_init; its worker was "
                                 r"killed; it is not loaded"):
            await p.load(m, {"start": b"s"})
        assert p.status() == []
        await p.load(demo("physics"))  # the worker was replaced
        assert p.state("physics") == "running"


def test_a_start_sweeps_the_shared_memory_of_runtimes_that_are_gone(tmp_path: Path) -> None:
    """A killed runtime cannot remove its /dev/shm directory; the next start removes it (only
    those of dead pids: a live runtime's, this process's and unrelated names are kept)."""
    import subprocess
    import sys

    from edge.wasm.pool import SHM_PREFIX, sweep_stale_shm

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f"{SHM_PREFIX}{gone.stdout.strip()}-abc"
    live = tmp_path / f"{SHM_PREFIX}1-def"  # init runs
    mine = tmp_path / f"{SHM_PREFIX}{os.getpid()}-ghi"
    other = tmp_path / f"{SHM_PREFIX}old"
    for d in (dead, live, mine, other):
        d.mkdir()
        (d / "a.1.cols").write_bytes(b"\0" * 512)
    assert sweep_stale_shm(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and mine.exists() and other.exists()
