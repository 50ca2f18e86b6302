"""Promises of docs/abi.md not covered elsewhere: the interpreter's own call stack (separate
from linear memory) and what a deep recursion does."""

from __future__ import annotations

from pathlib import Path

import pytest
from sandbox_support import DEVICE, Recorder, build_module, manifest

from edge.wasm.pool import DEFAULT_STACK_BYTES, SandboxPool

pytestmark = pytest.mark.timeout(60)

RECURSE = r"""
#include "edge.h"
static volatile int32_t sink;
/* no address-taken locals (they would live on the linker's stack in linear memory), and a store
 * after the call so that the compiler cannot turn the recursion into a loop */
__attribute__((noinline)) static int32_t depth(int32_t n) {
    if (n <= 0) return 0;
    int32_t r = depth(n - 1);
    sink = r;
    return r + 1;
}
EDGE_TICK { (void)dt; return depth(n) == n ? 0 : 1; }
"""


async def test_deep_recursion_overflows_the_interpreter_stack_as_a_trap(tmp_path: Path) -> None:
    assert DEFAULT_STACK_BYTES == 64 * 1024
    src = tmp_path / "recurse.c"
    src.write_text(RECURSE)
    module = build_module().compile_wasm([src], tmp_path / "recurse.wasm")
    rec = Recorder()
    async with SandboxPool(DEVICE, rec, workers=1, backoff_base_s=0.05) as pool:
        await pool.load(manifest(tmp_path, "rec", module, memory_pages=2))
        pool.batch("rec", 1)
        assert await pool.tick("rec", 1_000, 0.0)  # 1,000 frames fit (no batch is read)
        assert not await pool.tick("rec", 1_000_000, 0.0)
        assert rec.reasons("rec") == ["trap"]
        assert "stack overflow" in rec.faults[0][1].message
