"""The Zig SDK (components/sdk/zig) and its example component zig_odometer, built by
components/build.py with the Zig of the PyPI package ziglang and run in the real sandbox.

The toolchain is part of `make components` (the `sdk` extra, which `make setup` installs):
without it these tests fail with the build's sentence, they are not skipped."""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from sandbox_support import DEVICE, ROOT, Recorder, build_module, demo, manifest, wait_for

from edge.errors import ComponentLoadError
from edge.wasm.pool import SandboxPool
from edge.wasm.wasmbin import SEC_MEMORY, find_section, parse_sections

pytestmark = pytest.mark.timeout(60)

BUILD = build_module()
CMD = f"edge.{DEVICE}.cmd.odometer"


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    BUILD.build(["zig_odometer"])


@pytest.fixture
async def pool(rec: Recorder) -> AsyncIterator[SandboxPool]:
    async with SandboxPool(DEVICE, rec, workers=1, backoff_base_s=0.05) as p:
        yield p


def events(rec: Recorder, tail: str) -> list[dict[str, object]]:
    return [json.loads(d) for _, s, d in rec.published if s == f"edge.{DEVICE}.evt.odometer.{tail}"]


def total(rec: Recorder) -> float:
    value: float = struct.unpack("<d", rec.kv[("zig_odometer", "total_m")])[0]
    return value


def test_the_build_finds_the_pinned_zig() -> None:
    BUILD.find_zig()  # raises with the install command if ziglang is missing or another version
    module = ROOT / "components" / "build" / "zig_odometer.wasm"
    assert module.read_bytes()[:4] == b"\0asm"


async def test_odometer_integrates_speed_times_dt_and_publishes_milestones(
        pool: SandboxPool, rec: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.wasm.component")
    await pool.load(demo("zig_odometer"))
    assert "[zig_odometer] odometer at 0.0 m" in caplog.messages
    vx, vy, vz = pool.batch("zig_odometer", 2)
    vx[:] = [3.0, 0.0]
    vy[:] = [4.0, 0.0]
    vz[:] = [0.0, 2.0]  # speeds 5 and 2 m/s
    for _ in range(3):
        vx, vy, vz = pool.batch("zig_odometer", 2)
        assert await pool.tick("zig_odometer", 2, 10.0)  # dt as the host passes it: 70 m a tick
    await pool.flush()
    assert total(rec) == pytest.approx(210.0)
    np.testing.assert_array_equal(vx, [3.0, 0.0])  # no cap: velocities untouched
    # 70 -> 140 passes 100, 140 -> 210 passes 200
    assert events(rec, "milestone") == [{"total_m": 100}, {"total_m": 200}]
    assert "[zig_odometer] odometer passed 200 m" in caplog.messages


async def test_odometer_caps_speed_from_its_kv_and_resumes_its_total(
        pool: SandboxPool, rec: Recorder) -> None:
    kv = {"total_m": struct.pack("<d", 95.0), "max_speed_mps": struct.pack("<d", 2.5)}
    await pool.load(demo("zig_odometer"), kv)
    vx, vy, vz = pool.batch("zig_odometer", 2)
    vx[:] = [3.0, 1.0]
    vy[:] = [4.0, 0.0]
    vz[:] = [0.0, 0.0]
    assert await pool.tick("zig_odometer", 2, 2.0)
    await pool.flush()
    np.testing.assert_allclose(vx, [1.5, 1.0])  # 5 m/s scaled to 2.5; 1 m/s kept
    np.testing.assert_allclose(vy, [2.0, 0.0])
    assert total(rec) == pytest.approx(95.0 + 2.5 * 2 + 1.0 * 2)
    assert events(rec, "milestone") == [{"total_m": 100}]


async def test_odometer_commands(pool: SandboxPool, rec: Recorder,
                                 caplog: pytest.LogCaptureFixture) -> None:
    await pool.load(demo("zig_odometer"), {"total_m": struct.pack("<d", 12.3456)})
    await pool.deliver("zig_odometer", [(CMD, b"report"), (CMD, b"reset"), (CMD, b"report"),
                                        (CMD, b"explode")])
    await pool.flush()
    assert events(rec, "total") == [{"total_m": 12.346}, {"total_m": 0.0}]
    assert total(rec) == 0.0
    entry = next(s for s in pool.status() if s["name"] == "zig_odometer")
    assert entry["counters"]["messages"] == 4 and entry["counters"]["errors"] == 1
    # a message larger than its 256-byte inbox: edge_alloc answers 0, dropped and counted
    await pool.deliver("zig_odometer", [(CMD, b"x" * 1000)])
    await pool.flush()
    await wait_for(lambda: next(s for s in pool.status()
                                if s["name"] == "zig_odometer")["counters"]["dropped"] == 1)
    assert pool.state("zig_odometer") == "running"


async def test_a_bad_speed_cap_refuses_the_load(pool: SandboxPool) -> None:
    with pytest.raises(ComponentLoadError,
                       match=r"component 'zig_odometer' failed to start: edge_init returned 1; "
                             r"it is not loaded"):
        await pool.load(demo("zig_odometer"), {"max_speed_mps": struct.pack("<d", 0.0)})


async def test_a_batch_too_big_for_memory_is_an_error_not_a_trap(
        pool: SandboxPool, tmp_path: Path) -> None:
    m = demo("zig_odometer")
    two = manifest(tmp_path, "z2", m.module, read=m.read, write=m.write,
                   subscribe=("edge.dev1.cmd.z2",), publish=("edge.dev1.evt.odometer.>",),
                   memory_pages=2)
    await pool.load(two)
    pool.batch("z2", 10_000)  # 3 columns of 10,000 f64 do not fit in 2 pages
    await pool.tick("z2", 10_000, 0.1)
    assert pool.state("z2") == "running"
    entry = next(s for s in pool.status() if s["name"] == "z2")
    assert entry["counters"]["errors"] == 1 and entry["counters"]["traps"] == 0


PANICS = """
const edge = @import("edge");
var xs: [4]f64 = undefined;
export fn edge_tick(n: i32, dt: f64) i32 {
    _ = dt;
    const len: usize = @intCast(n);  // a negative n fails this safety check
    edge.readColumn(0, xs[0..len]) catch return 2;  // n > 4 fails the bounds check
    return 0;
}
"""


async def test_a_safety_check_traps_and_the_component_is_restarted(
        pool: SandboxPool, rec: Recorder, tmp_path: Path) -> None:
    # ReleaseSafe keeps Zig's checks: a bug traps (restarted with backoff) instead of running on
    src = tmp_path / "panics.zig"
    src.write_text(PANICS)
    module = BUILD.compile_zig(src, tmp_path / "panics.wasm")
    await pool.load(manifest(tmp_path, "zpanics", module, read=("position.x",)))
    pool.batch("zpanics", 2)
    assert await pool.tick("zpanics", 2, 0.1)
    pool.batch("zpanics", 5)
    assert not await pool.tick("zpanics", 5, 0.1)
    assert rec.reasons("zpanics") == ["trap"]
    assert rec.faults[0][1].export == "edge_tick"
    await wait_for(lambda: pool.state("zpanics") == "running")


def test_stack_size_sets_the_initial_memory(tmp_path: Path) -> None:
    root = ROOT / "components" / "zig_odometer" / "zig_odometer.zig"
    out = BUILD.compile_zig(root, tmp_path / "z.wasm")
    mem = find_section(parse_sections(out.read_bytes()), SEC_MEMORY)
    assert mem is not None and mem.payload[:3] == b"\x01\x00\x02"  # one memory, 2 pages, no max


def test_a_missing_zig_is_a_clear_build_error(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    fake = tmp_path / "zig"
    fake.write_text("#!/bin/sh\necho 0.11.0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("EDGE_ZIG", str(fake))
    with pytest.raises(BUILD.BuildError, match=r"zig 0.11.0 found, but the Zig SDK is written "
                                               r"for zig 0.17: pip install 'ziglang==0.17.0'"):
        BUILD.find_zig()
