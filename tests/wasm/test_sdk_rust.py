"""The Rust SDK (components/sdk/rust) and its example component rust_geofence, built by
components/build.py with Debian's rustc and run in the real sandbox.

The toolchain is part of `make components` (apt: rustc libstd-rust-dev-wasm32): without it these
tests fail with the build's sentence, they are not skipped."""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from sandbox_support import DEVICE, ROOT, Recorder, build_module, demo, manifest, wait_for

from edge.errors import ComponentLoadError
from edge.wasm.pool import SandboxPool
from edge.wasm.wasmbin import SEC_EXPORT, SEC_MEMORY, find_section, parse_exports, parse_sections

pytestmark = pytest.mark.timeout(60)

BUILD = build_module()
RADIUS = 50.0


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    BUILD.build(["rust_geofence"])


@pytest.fixture
async def pool(rec: Recorder) -> AsyncIterator[SandboxPool]:
    async with SandboxPool(DEVICE, rec, workers=1, backoff_base_s=0.05) as p:
        yield p


def initial_pages(wasm: bytes) -> int:
    mem = find_section(parse_sections(wasm), SEC_MEMORY)
    assert mem is not None and mem.payload[0] == 1
    return mem.payload[2]  # flags 0 (no maximum), then the initial size as one LEB128 byte


def events(rec: Recorder, tail: str) -> list[dict[str, object]]:
    return [json.loads(d) for _, s, d in rec.published if s == f"edge.{DEVICE}.evt.geofence.{tail}"]


def test_the_build_finds_a_rustc_with_the_wasm32_standard_library() -> None:
    rustc = BUILD.find_rustc()
    assert BUILD._has_wasm_std(rustc)
    module = ROOT / "components" / "build" / "rust_geofence.wasm"
    assert module.read_bytes()[:4] == b"\0asm"


async def test_geofence_turns_outbound_entities_back_and_reports_each_breach(
        pool: SandboxPool, rec: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.wasm.component")
    await pool.load(demo("rust_geofence"))
    await pool.flush()
    # edge_init logged the radius and published from init
    assert "[rust_geofence] geofence radius 50.0 m" in caplog.messages
    assert events(rec, "armed") == [{"radius_m": 50.0}]

    ids = ["inside", "out-going", "out-coming-back", "far-diagonal"]
    px, py, vx, vy = pool.batch("rust_geofence", 4)
    px[:] = [10.0, 60.0, 60.0, 40.0]
    py[:] = [0.0, 0.0, 0.0, 40.0]
    vx[:] = [5.0, 3.0, -3.0, 1.0]
    vy[:] = [0.0, 4.0, 0.0, 2.0]
    assert await pool.tick("rust_geofence", 4, 0.1, ids=ids)
    np.testing.assert_array_equal(px, [10.0, 60.0, 60.0, 40.0])  # read-only columns untouched
    # inside and already-returning entities keep their velocity; outbound ones are reflected
    # about the tangent: the radial part changes sign, the speed stays
    np.testing.assert_allclose(vx, [5.0, -3.0, -3.0, -2.0])
    np.testing.assert_allclose(vy, [0.0, 4.0, 0.0, -1.0])
    await pool.flush()
    breaches = events(rec, "breach")
    assert breaches == [{"entity": "out-going", "dist_m": 60.0},
                        {"entity": "far-diagonal", "dist_m": round(math.hypot(40, 40), 1)}]
    assert rec.kv[("rust_geofence", "breaches")] == struct.pack("<Q", 2)

    # the next tick: both now head inward, nothing more to report
    px, py, vx, vy = pool.batch("rust_geofence", 4)
    assert await pool.tick("rust_geofence", 4, 0.1)
    await pool.flush()
    assert len(events(rec, "breach")) == 2


async def test_geofence_counter_and_radius_come_from_its_kv(pool: SandboxPool,
                                                            rec: Recorder) -> None:
    kv = {"radius_m": struct.pack("<d", 5.0), "breaches": struct.pack("<Q", 41)}
    await pool.load(demo("rust_geofence"), kv)
    px, py, vx, vy = pool.batch("rust_geofence", 1)
    px[0], py[0], vx[0], vy[0] = 6.0, 0.0, 1.0, 0.0
    assert await pool.tick("rust_geofence", 1, 0.1, ids=["e"])
    await pool.flush()
    assert vx[0] == -1.0
    assert events(rec, "armed") == [{"radius_m": 5.0}]
    assert events(rec, "breach") == [{"entity": "e", "dist_m": 6.0}]
    assert rec.kv[("rust_geofence", "breaches")] == struct.pack("<Q", 42)


async def test_a_bad_radius_refuses_the_load(pool: SandboxPool) -> None:
    with pytest.raises(ComponentLoadError,
                       match=r"component 'rust_geofence' failed to start: edge_init returned 1; "
                             r"it is not loaded"):
        await pool.load(demo("rust_geofence"), {"radius_m": struct.pack("<d", -1.0)})
    assert pool.status() == []


async def test_a_batch_too_big_for_memory_is_an_error_not_a_trap(
        pool: SandboxPool, tmp_path: Path) -> None:
    # 1 page of memory: the module's own 2 pages are refused at load, naming the limit
    m = demo("rust_geofence")
    small = manifest(tmp_path, "g1", m.module, read=m.read, write=m.write,
                     publish=("edge.dev1.evt.geofence.>",), memory_pages=1)
    with pytest.raises(ComponentLoadError, match="needs 2 memory pages at start, more than "
                                                 "limits.memory_pages = 1"):
        await pool.load(small)
    # 2 pages: no room for scratch columns of 10,000 entities: edge_tick returns 1, counted
    two = manifest(tmp_path, "g2", m.module, read=m.read, write=m.write,
                   publish=("edge.dev1.evt.geofence.>",), memory_pages=2)
    await pool.load(two)
    pool.batch("g2", 10_000)
    await pool.tick("g2", 10_000, 0.1)
    assert pool.state("g2") == "running"
    entry = next(s for s in pool.status() if s["name"] == "g2")
    assert entry["counters"]["errors"] == 1 and entry["counters"]["traps"] == 0


PANICS = r"""
#![no_std]
#[no_mangle]
pub extern "C" fn edge_tick(n: i32, _dt: f64) -> i32 {
    let mut v = [0.0f64; 4];
    edge::read_column(0, &mut v[..n as usize]).expect("the column");  // n > 4 panics too
    if v[0] < 0.0 {
        panic!("negative");
    }
    0
}
"""


async def test_a_panic_traps_and_the_component_is_restarted(pool: SandboxPool, rec: Recorder,
                                                            tmp_path: Path) -> None:
    src = tmp_path / "panics.rs"
    src.write_text(PANICS)
    module = BUILD.compile_rust(src, tmp_path / "panics.wasm")
    await pool.load(manifest(tmp_path, "panics", module, read=("position.x",)))
    col, = pool.batch("panics", 1)
    col[0] = 1.0
    assert await pool.tick("panics", 1, 0.1)
    col, = pool.batch("panics", 1)
    col[0] = -1.0
    assert not await pool.tick("panics", 1, 0.1)
    assert rec.reasons("panics") == ["trap"]
    fault = rec.faults[0][1]
    assert fault.export == "edge_tick" and "unreachable" in fault.message
    await wait_for(lambda: pool.state("panics") == "running")  # restarted after its backoff


PUT_THEN_PANIC = r"""
#![no_std]
#[no_mangle]
pub extern "C" fn edge_init() -> i32 {
    let count = edge::kv_get_u64("count").unwrap_or(0);
    let subject = edge::device_subject::<64>("evt.putpanic");
    let _ = edge::publish(subject.as_bytes(), &count.to_le_bytes());
    0
}
#[no_mangle]
pub extern "C" fn edge_tick(_n: i32, _dt: f64) -> i32 {
    let count = edge::kv_get_u64("count").unwrap_or(0);
    let _ = edge::kv_put_u64("count", count + 1);
    panic!("after the put");
}
"""


async def test_kv_puts_of_a_call_that_traps_are_kept_for_the_restart(
        pool: SandboxPool, rec: Recorder, tmp_path: Path) -> None:
    src = tmp_path / "putpanic.rs"
    src.write_text(PUT_THEN_PANIC)
    module = BUILD.compile_rust(src, tmp_path / "putpanic.wasm")
    await pool.load(manifest(tmp_path, "putpanic", module, read=("position.x",), tick_hz=1.0,
                             publish=("edge.dev1.evt.putpanic",)))
    pool.batch("putpanic", 1)
    assert not await pool.tick("putpanic", 1, 0.1)
    assert rec.reasons("putpanic") == ["trap"]
    await wait_for(lambda: pool.state("putpanic") == "running")
    await pool.flush()
    await wait_for(lambda: len(rec.published) == 2)
    # edge_init published the count it found: 0 at load, 1 after the restart
    assert [struct.unpack("<Q", d)[0] for _, _, d in rec.published] == [0, 1]
    assert rec.kv[("putpanic", "count")] == struct.pack("<Q", 1)


HELPERS = r"""
#![no_std]
static mut OUT: [u8; 64] = [0; 64];
#[no_mangle]
pub extern "C" fn sq(x: f64) -> f64 { edge::sqrt(x) }
#[no_mangle]
pub extern "C" fn out_ptr() -> i32 { unsafe { OUT.as_ptr() as i32 } }
#[no_mangle]
pub extern "C" fn fixed(v: f64, decimals: i32) -> i32 {
    let mut t: edge::Text<24> = edge::Text::new();
    t.push_fixed(v, decimals as u32);
    unsafe { OUT[..t.len()].copy_from_slice(t.as_bytes()); }
    if t.overflowed { -1 } else { t.len() as i32 }
}
#[no_mangle]
pub extern "C" fn int(v: i64) -> i32 {
    let mut t: edge::Text<24> = edge::Text::new();
    t.push_int(v);
    unsafe { OUT[..t.len()].copy_from_slice(t.as_bytes()); }
    t.len() as i32
}
"""


def test_sdk_sqrt_and_number_formatting(tmp_path: Path) -> None:
    import wasm3

    src = tmp_path / "helpers.rs"
    src.write_text(HELPERS)
    wasm = BUILD.compile_rust(src, tmp_path / "helpers.wasm").read_bytes()
    env = wasm3.Environment()
    rt = env.new_runtime(64 * 1024)
    rt.load(env.parse_module(wasm))
    sq, out_ptr = rt.find_function("sq"), rt.find_function("out_ptr")
    for x in (0.0, 1e-300, 2.0, 0.25, 3600.0, 1e300, 123456.789):
        assert abs(sq(x) - math.sqrt(x)) <= math.ulp(math.sqrt(x)), x
    assert math.isnan(sq(-1.0)) and sq(math.inf) == math.inf

    def text(fn: str, *args: float) -> str:
        n = rt.find_function(fn)(*args)
        ptr = out_ptr()
        return bytes(rt.get_memory(0)[ptr:ptr + n]).decode()

    assert text("fixed", 56.5685, 1) == "56.6"
    assert text("fixed", -0.04, 1) == "0.0"
    assert text("fixed", -2.5, 0) == "-3"
    assert text("fixed", 1.005, 3) == "1.005"
    assert text("fixed", 42.0, 0) == "42"
    assert text("fixed", 1e30, 2) == "inf"
    assert text("fixed", float("nan"), 2) == "NaN"
    assert text("int", -9223372036854775808) == "-9223372036854775808"
    assert text("int", 0) == "0"


def test_rust_lld_default_stack_needs_17_pages(tmp_path: Path) -> None:
    # The docs' claim: rust-lld reserves a 1 MiB stack in linear memory unless told otherwise.
    root = ROOT / "components" / "rust_geofence" / "rust_geofence.rs"
    default = BUILD.compile_rust(root, tmp_path / "default.wasm", stack_bytes=None)
    sized = BUILD.compile_rust(root, tmp_path / "sized.wasm")
    assert initial_pages(default.read_bytes()) == 17
    assert initial_pages(sized.read_bytes()) == 2


async def test_default_stack_module_is_refused_below_17_pages_and_runs_with_17(
        pool: SandboxPool, tmp_path: Path) -> None:
    root = ROOT / "components" / "rust_geofence" / "rust_geofence.rs"
    module = BUILD.compile_rust(root, tmp_path / "default.wasm", stack_bytes=None)
    m = demo("rust_geofence")

    def with_pages(name: str, pages: int) -> object:
        return manifest(tmp_path, name, module, read=m.read, write=m.write,
                        publish=("edge.dev1.evt.geofence.>",), memory_pages=pages)

    with pytest.raises(ComponentLoadError, match="needs 17 memory pages at start, more than "
                                                 "limits.memory_pages = 16"):
        await pool.load(with_pages("g16", 16))  # type: ignore[arg-type]
    await pool.load(with_pages("g17", 17))  # type: ignore[arg-type]
    assert pool.state("g17") == "running"


def test_extra_exports_are_ignored_by_the_contract_check() -> None:
    # rustc exports the linker's __heap_base and __data_end globals next to the contract's
    # functions; the host ignores exports it does not know (the load above succeeds).
    wasm = (ROOT / "components" / "build" / "rust_geofence.wasm").read_bytes()
    sec = find_section(parse_sections(wasm), SEC_EXPORT)
    assert sec is not None
    names = {e.name for e in parse_exports(sec.payload)}
    assert {"memory", "edge_init", "edge_tick"} <= names
    assert names - {"memory", "edge_init", "edge_tick"}  # something beyond the contract


def test_a_missing_rustc_is_a_clear_build_error(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("EDGE_RUSTC", str(tmp_path / "no-such-rustc"))
    with pytest.raises(BUILD.BuildError, match="no rustc for wasm32-unknown-unknown: install it "
                                               "with 'apt-get install rustc libstd-rust-dev-wasm32'"):
        BUILD.find_rustc()


def test_a_compile_error_names_the_module(tmp_path: Path) -> None:
    src = tmp_path / "broken.rs"
    src.write_text("#![no_std]\n#[no_mangle]\npub extern \"C\" fn edge_tick(n: i32, dt: f64) -> i32 { n + }\n")
    with pytest.raises(BUILD.BuildError, match="compiling broken.wasm failed:"):
        BUILD.compile_rust(src, tmp_path / "broken.wasm")
