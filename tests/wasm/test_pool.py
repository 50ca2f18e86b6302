"""SandboxPool's public face on real compiled components and real worker processes: loading,
refusals, usage errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sandbox_support import Recorder, demo, manifest

from edge.errors import ComponentLoadError, SandboxError
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
