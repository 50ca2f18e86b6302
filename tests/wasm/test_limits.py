"""Structure limits (edge/wasm/limits.py): what wasm3 cannot survive is refused at load."""

from __future__ import annotations

import glob
import resource
from pathlib import Path

import pytest
from sandbox_support import ROOT, Recorder, manifest, wait_for
from wasm_craft import nested, run_raw, tick_module

import edge.wasm.abi
from edge.errors import ComponentLoadError
from edge.wasm import limits
from edge.wasm.abi import check_module, prepare_module
from edge.wasm.pool import SandboxPool
from edge.wasm.wasmbin import encode_u32, parse_sections

pytestmark = pytest.mark.timeout(120)


def _manifest(tmp: Path, wasm: bytes, name: str = "crafted") -> object:
    path = tmp / f"{name}.wasm"
    path.write_bytes(wasm)
    return manifest(tmp, name, path, memory_pages=1)


def test_deep_nesting_crashes_bare_wasm3() -> None:
    # The finding of issue 9: wasm3 compiles a function on its first call, one C stack frame
    # per open block. 20,000 levels overflow a 1 MiB stack (8 MiB overflows near 43,600).
    rc, out = run_raw(tick_module(nested(20_000)), stack_bytes=1 << 20)
    assert rc == -11 and out == "loaded\n"  # parse and load succeed; the first call kills it
    # The limit is far from that, even with a 256 KiB stack (which crashes near 1,340).
    rc, out = run_raw(tick_module(nested(limits.MAX_NESTING_DEPTH, op=0x03)), 256 * 1024)
    assert (rc, out) == (0, "loaded\nresult 0\n")


@pytest.mark.parametrize("op", [0x02, 0x03])
def test_check_module_refuses_deep_nesting(tmp_path: Path, op: int) -> None:
    m = _manifest(tmp_path, b"")
    deep = tick_module(nested(50_000, op))
    with pytest.raises(ComponentLoadError, match=r"component 'crafted' nests blocks at least "
                       r"50000 deep \(function 0\); the limit is 1024") as exc:
        check_module(deep, m)  # type: ignore[arg-type]
    assert exc.value.component == "crafted"
    at_limit = tick_module(nested(limits.MAX_NESTING_DEPTH))
    prepare_module(at_limit, m)  # type: ignore[arg-type]
    over = tick_module(b"\x04\x40" + nested(limits.MAX_NESTING_DEPTH) + b"\x1a\x0b\x41\x00")
    with pytest.raises(ComponentLoadError, match="nests blocks at least 1025 deep"):
        check_module(over, m)  # type: ignore[arg-type]


def _stack_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
    return 0 if soft == resource.RLIM_INFINITY else soft


async def test_pool_refuses_deep_nesting_and_the_worker_survives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = _stack_limit()
    if not stack:
        pytest.skip("unlimited C stack: wasm3 does not overflow it")
    depth = max(60_000, stack // 100)
    deep = tmp_path / "deep.wasm"
    deep.write_bytes(tick_module(nested(depth)))
    rec = Recorder()
    async with SandboxPool("dev1", rec, workers=1, backoff_base_s=0.05) as p:
        m = manifest(tmp_path, "deep", deep, memory_pages=1)
        with pytest.raises(ComponentLoadError, match=f"nests blocks at least {depth} deep"):
            await p.load(m)
        assert p.status() == []
        # Without the check the worker dies with SIGSEGV when wasm3 compiles the function: on
        # the first call, or at load if the host looks the export up (or calls it) while loading.
        monkeypatch.setattr(edge.wasm.abi, "check_structure", lambda *a, **k: None)
        pid = p.worker_pids()[0]
        try:
            await p.load(m)
        except ComponentLoadError as err:
            assert "SIGSEGV" in str(err)
        else:
            p.batch("deep", 0)
            assert await p.tick("deep", 0, 0.1) is False
            await wait_for(lambda: rec.faults)
            assert rec.reasons("deep")[0] == "crashed"
        await wait_for(lambda: p.worker_pids() and p.worker_pids()[0] != pid)


LOCALS_OVER = encode_u32(1) + encode_u32(limits.MAX_LOCALS + 1) + b"\x7f"
LOCALS_AT = encode_u32(2) + encode_u32(limits.MAX_LOCALS - 1) + b"\x7f" + b"\x01\x7e"


@pytest.mark.parametrize(("over", "at", "sentence"), [
    (dict(n_funcs=limits.MAX_FUNCTIONS + 1), dict(n_funcs=limits.MAX_FUNCTIONS),
     "defines 10001 functions; the limit is 10000"),
    (dict(code=b"\x01" * limits.MAX_BODY_BYTES + b"\x41\x00"), dict(code=b"\x01" * 200_000 + b"\x41\x00"),
     "has a function body of 262148 bytes (function 0); the limit is 262144"),
    (dict(locals_decl=LOCALS_OVER), dict(locals_decl=LOCALS_AT),
     "declares 1001 locals (function 0); the limit is 1000"),
    (dict(types=limits.MAX_TYPES + 1), dict(types=limits.MAX_TYPES),
     "declares 1001 function types; the limit is 1000"),
    (dict(extra_exports=limits.MAX_EXPORTS - 1), dict(extra_exports=limits.MAX_EXPORTS - 2),
     "has 1001 exports; the limit is 1000"),
    (dict(globals_=limits.MAX_GLOBALS + 1), dict(globals_=limits.MAX_GLOBALS),
     "defines 1001 globals; the limit is 1000"),
    (dict(table=limits.MAX_TABLE_ELEMENTS + 1), dict(table=limits.MAX_TABLE_ELEMENTS),
     "has a table or element segments of 65537 elements; the limit is 65536"),
    (dict(data=bytes(limits.MAX_DATA_BYTES)), dict(data=bytes(60_000)),
     "has a data section of 4194313 bytes; the limit is 4194304"),
    (dict(code=b"\x02\x40\x41\x00\x0e" + encode_u32(limits.MAX_BR_TABLE_TARGETS) + b"\x00" * 65_537
          + b"\x0b\x41\x00"),
     dict(code=b"\x02\x40\x41\x00\x0e" + encode_u32(100) + b"\x00" * 101 + b"\x0b\x41\x00"),
     "has a br_table with 65537 targets (function 0); the limit is 65536"),
])
def test_each_limit_is_refused_with_its_value(tmp_path: Path, over: dict[str, object],
                                              at: dict[str, object], sentence: str) -> None:
    m = _manifest(tmp_path, b"")
    with pytest.raises(ComponentLoadError) as exc:
        check_module(tick_module(**over), m)  # type: ignore[arg-type]
    assert exc.value.message == f"component 'crafted' {sentence}"
    assert limits.measure(parse_sections(tick_module(**at))) is not None
    check_module(tick_module(**at), m)  # type: ignore[arg-type]


def test_too_many_imports(tmp_path: Path) -> None:
    imp = encode_u32(4) + b"edge" + encode_u32(3) + b"log" + b"\x00\x01"
    n = limits.MAX_IMPORTS + 1
    wasm = tick_module()
    sections = parse_sections(wasm)
    from edge.wasm.wasmbin import Section
    sections.insert(1, Section(2, encode_u32(n) + imp * n))
    with pytest.raises(ComponentLoadError, match="module has 65 imports; the limit is 64"):
        limits.check_structure(sections)


def test_every_real_component_is_well_inside_the_limits(modules: dict[str, Path]) -> None:
    paths = [Path(p) for p in glob.glob(str(ROOT / "components" / "build" / "*.wasm"))]
    paths += list(modules.values())
    assert len(paths) >= 14
    for path in paths:
        s = limits.measure(parse_sections(path.read_bytes()))
        for field, (limit, _) in limits.LIMITS.items():
            assert getattr(s, field) * 8 <= limit, (path.name, field, getattr(s, field))


@pytest.mark.parametrize("memory", [b"\x01", b"\x01\x01", b"\x01\x01\x80", b"\x01\x01\x01"])
def test_truncated_memory_section_is_a_refusal(tmp_path: Path, memory: bytes) -> None:
    # Found by tests/wasm/fuzz.py: check_module let an IndexError escape for these.
    from edge.wasm.wasmbin import Section

    wasm = tick_module()
    sections = parse_sections(wasm)
    out = wasm[:8] + b"".join(Section(s.id, memory).encode() if s.id == 5 else s.encode()
                              for s in sections)
    with pytest.raises(ComponentLoadError, match="component 'crafted' has a truncated memory section"):
        check_module(out, _manifest(tmp_path, b""))  # type: ignore[arg-type]


def test_an_undecodable_section_does_not_hide_deep_nesting(tmp_path: Path) -> None:
    # Element and code sections are walked independently, and each body on its own.
    from edge.wasm.wasmbin import Section

    deep_body = encode_u32(0) + nested(5_000) + b"\x0b"
    simd_body = b"\x00\xfd\x0b"  # body 0 uses SIMD: the walker cannot go on in it
    code = encode_u32(2) + b"".join(encode_u32(len(b)) + b for b in (simd_body, deep_body))
    sections = parse_sections(tick_module(n_funcs=2, table=1))
    assert sections[-1].id == 10
    sections[-1] = Section(10, code)
    sections.insert(-1, Section(9, b"\x01\x07"))  # an element segment that cannot be decoded
    with pytest.raises(ComponentLoadError, match="nests blocks at least 5000 deep"):
        limits.check_structure(sections)
