"""Promises of docs/abi.md not covered elsewhere: the interpreter's own call stack (separate
from linear memory) and what a deep recursion does."""

from __future__ import annotations

from pathlib import Path

import pytest
from sandbox_support import DEVICE, ROOT, Recorder, build_module, manifest

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


def test_the_defaults_table_matches_the_code() -> None:
    from edge.config import device
    from edge.wasm import host, manifest, pool, supervision

    text = (ROOT / "docs" / "abi.md").read_text()
    table = text.split("## Defaults", 1)[1].split("\n\n")[2]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
            for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    mib = 2**20
    assert rows["wall-clock deadline of one call"] == [
        f"{device.DEFAULT_DEADLINE:g} s (`deadline`)", f"{pool.DEFAULT_DEADLINE_S:g} s (`deadline_s`)"]
    assert rows["component loads before a worker is replaced"] == [
        f"{device.DEFAULT_RECYCLE_AFTER} (`recycle_after`)", f"{pool.DEFAULT_RECYCLE_AFTER} (`recycle_after`)"]
    assert rows["sandbox worker processes"] == [
        f"{device.DEFAULT_WORKERS} (`workers`)", f"{pool.DEFAULT_WORKERS} (`workers`)"]
    assert rows["worker RSS past which it is replaced"][0].startswith(
        f"{device.DEFAULT_MAX_WORKER_RSS_MB} MiB")
    assert rows["worker RSS past which it is replaced"][1].startswith(
        f"{pool.DEFAULT_RECYCLE_RSS_BYTES // mib} MiB")
    leak = rows["memory of instances a worker no longer runs, before it is replaced"]
    assert leak == [f"{pool.DEFAULT_RECYCLE_LEAK_BYTES // mib} MiB",
                    f"{pool.DEFAULT_RECYCLE_LEAK_BYTES // mib} MiB (`recycle_leak_bytes`)"]
    assert rows["wasm3 stack per instance (outside linear memory)"][1] == (
        f"{pool.DEFAULT_STACK_BYTES // 1024} KiB (`stack_bytes`)")
    backoff = rows["restart backoff"][0]
    assert backoff == (f"{pool.DEFAULT_BACKOFF_BASE_S:g} s, doubling, at most "
                       f"{pool.DEFAULT_BACKOFF_MAX_S:g} s; `failed` after {supervision.FAIL_LIMIT} "
                       f"faults in {supervision.FAIL_WINDOW_S:g} s")
    assert rows["one `infer` call / all `infer` waits of one call"][0] == (
        f"{host.DEFAULT_INFER_TIMEOUT_S:g} s / {host.DEFAULT_INFER_BUDGET_S:g} s")
    assert rows["message batches in flight per worker"][1] == (
        f"{pool.DEFAULT_MAX_IN_FLIGHT} (`max_in_flight`)")
    per_component = text.split("## Defaults", 1)[1].split("## SDKs", 1)[0]
    assert f"`limits.gas`\n{manifest.DEFAULT_GAS:,}" in per_component
    assert f"`limits.memory_pages` {manifest.DEFAULT_MEMORY_PAGES}," in per_component
    assert f"`limits.publish_per_call` {manifest.DEFAULT_PUBLISH_PER_CALL:,}," in per_component
    cfg = device.DeviceConfig(device="x", data_dir=Path("unused")).sandbox
    assert (cfg.deadline, cfg.recycle_after, cfg.workers) == (
        device.DEFAULT_DEADLINE, device.DEFAULT_RECYCLE_AFTER, device.DEFAULT_WORKERS)


def _readme_block(lang: str) -> str:
    text = (ROOT / "README.md").read_text().split("## Writing a component", 1)[1]
    return text.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("lang", ["c", "rust", "zig"])
async def test_the_readme_drift_examples_build_and_drift(tmp_path: Path, lang: str) -> None:
    build = build_module()
    code = _readme_block(lang)
    suffix = {"c": ".c", "rust": ".rs", "zig": ".zig"}[lang]
    src = tmp_path / f"drift{suffix}"
    src.write_text(code)
    out = tmp_path / "drift.wasm"
    if lang == "c":
        build.compile_wasm([src], out)
    elif lang == "rust":
        build.compile_rust(src, out)
    else:
        build.compile_zig(src, out)
    manifest_text = _readme_block("toml").replace('"../build/drift.wasm"', f'"{out}"')
    path = tmp_path / "manifest.toml"
    path.write_text(manifest_text)
    from edge.wasm.manifest import load_manifest

    m = load_manifest(path, DEVICE)
    assert m.limits.memory_pages == 16
    async with SandboxPool(DEVICE, Recorder(), workers=1) as pool:
        await pool.load(m)
        px, vx = pool.batch("drift", 3)
        px[:] = [0.0, 1.0, 2.0]
        vx[:] = [1.0, -2.0, 0.5]
        assert await pool.tick("drift", 3, 0.5)
        assert list(px) == [0.5, 0.0, 2.25]
        assert list(vx) == [1.0, -2.0, 0.5]


def test_the_sdk_builds_emit_no_start_section() -> None:
    from edge.wasm.wasmbin import SEC_START, find_section, parse_sections

    build_module().build(["rust_geofence", "zig_odometer"])
    for name in ("rust_geofence", "zig_odometer"):
        wasm = (ROOT / "components" / "build" / f"{name}.wasm").read_bytes()
        assert find_section(parse_sections(wasm), SEC_START) is None, name
