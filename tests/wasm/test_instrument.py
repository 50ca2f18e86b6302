"""Gas instrumentation of wasm modules: real clang-built modules run in wasm3, hand-built binaries.

Run with ``-s`` to see the measured gas rate and metering overhead.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import wasm3

from edge.errors import ComponentLoadError
from edge.wasm.instrument import (
    GAS_LIMIT_UNIT,
    func_import_signatures,
    instrument,
    module_exports,
    module_imports,
)

CASES = Path(__file__).parent / "instrument_cases"
CLANG_FLAGS = ["--target=wasm32", "-O2", "-nostdlib", "-Wl,--no-entry", "-Wl,--export-dynamic"]
EXT_FLAGS = ["-mbulk-memory", "-msign-ext", "-mnontrapping-fptoint"]
STACK_BYTES = 64 * 1024
BIG_GAS = 1e9  # gasLimit in wasm3 units (x 10,000 gas): never reached by these tests


# --------------------------------------------------------------------------------------------
# helpers


def compile_c(src: Path | str, out: Path, flags: list[str] | None = None) -> bytes:
    """Compile C (a file, or source text) to a wasm32 module with clang; return its bytes."""
    clang = shutil.which("clang")
    assert clang, "clang with the wasm32 target is required for these tests"
    if isinstance(src, str):
        path = out.with_suffix(".c")
        path.write_text(src)
        src = path
    cmd = [clang, *CLANG_FLAGS, *(flags or []), "-o", str(out), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return out.read_bytes()


def load(wasm: bytes, gas: float | None = BIG_GAS) -> tuple[Any, Any]:
    env = wasm3.Environment()
    rt = env.new_runtime(STACK_BYTES)
    mod = env.parse_module(wasm)
    rt.load(mod)
    if gas is not None:
        mod.gasLimit = gas
    return rt, mod


def uleb(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def sleb(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if (v == 0 and not b & 0x40) or (v == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def vec(items: list[bytes]) -> bytes:
    return uleb(len(items)) + b"".join(items)


def name(s: str) -> bytes:
    return uleb(len(s.encode())) + s.encode()


def section(sec_id: int, payload: bytes) -> bytes:
    return bytes((sec_id,)) + uleb(len(payload)) + payload


def functype(params: bytes, results: bytes) -> bytes:
    return b"\x60" + vec([bytes((p,)) for p in params]) + vec([bytes((r,)) for r in results])


def func_import(module: str, field: str, type_index: int) -> bytes:
    return name(module) + name(field) + b"\x00" + uleb(type_index)


def body(expr: bytes, locals_: bytes = b"\x00") -> bytes:
    return uleb(len(locals_) + len(expr)) + locals_ + expr


def export(field: str, kind: int, index: int) -> bytes:
    return name(field) + bytes((kind,)) + uleb(index)


def module(*sections: bytes) -> bytes:
    return b"\x00asm\x01\x00\x00\x00" + b"".join(sections)


def charge(cost: int, usegas: int) -> bytes:
    return b"\x41" + sleb(cost) + b"\x10" + uleb(usegas)


I32, I64, F32, F64, FUNCREF = 0x7F, 0x7E, 0x7D, 0x7C, 0x70


def read_sections(wasm: bytes) -> list[tuple[int, bytes]]:
    """Independent, minimal section splitter for checking the instrumenter's output."""
    assert wasm[:8] == b"\x00asm\x01\x00\x00\x00"
    pos, out = 8, []
    while pos < len(wasm):
        sec_id = wasm[pos]
        size, shift, pos = 0, 0, pos + 1
        while True:
            b = wasm[pos]
            pos += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        out.append((sec_id, wasm[pos : pos + size]))
        pos += size
    return out


def section_payload(wasm: bytes, sec_id: int) -> bytes:
    found = [p for i, p in read_sections(wasm) if i == sec_id]
    assert len(found) == 1, f"expected one section {sec_id}"
    return found[0]


def code_bodies(wasm: bytes) -> list[bytes]:
    """Function bodies (locals + expression) of the code section, assuming 1-byte counts."""
    payload = section_payload(wasm, 10)
    count, pos, out = payload[0], 1, []
    for _ in range(count):
        size, shift = 0, 0
        while True:
            b = payload[pos]
            pos += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        out.append(payload[pos : pos + size])
        pos += size
    return out


# --------------------------------------------------------------------------------------------
# fixtures: modules compiled from C


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_c(CASES / "kernels.c", tmp_path_factory.mktemp("k") / "kernels.wasm")


@pytest.fixture(scope="module")
def extensions(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("e") / "extensions.wasm"
    return compile_c(CASES / "extensions.c", out, EXT_FLAGS)


@pytest.fixture(scope="module")
def kernel_pair(kernels: bytes) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    return load(kernels, gas=None), load(instrument(kernels))


KERNEL_CALLS = [
    ("fib", (20,)),
    ("fib", (1,)),
    ("sum_to", (1000,)),
    ("collatz", (27,)),
    ("collatz", (97,)),
    *[("classify", (x,)) for x in (-3, 0, 3, 6, 7, 100)],
    *[("apply", (w, 7, 3)) for w in range(5)],
    ("mix64", (12345,)),
    ("mix64", (-1,)),
    ("hypot_sum", (100,)),
    ("mem_ops", (7,)),
    ("kernel", (100, 1.5)),
]


@pytest.mark.parametrize(("func", "args"), KERNEL_CALLS)
def test_instrumented_module_computes_the_same_results(
    kernel_pair: tuple[tuple[Any, Any], tuple[Any, Any]], func: str, args: tuple[Any, ...]
) -> None:
    (rt0, _), (rt1, mod1) = kernel_pair
    mod1.gasLimit = BIG_GAS
    expected = rt0.find_function(func)(*args)
    assert rt1.find_function(func)(*args) == expected
    assert mod1.gasUsed > 0


def test_function_reached_only_through_the_table_keeps_working(kernels: bytes) -> None:
    rt, _ = load(instrument(kernels))
    # op_secret is not exported: apply(4, ...) reaches it through call_indirect
    assert rt.find_function("apply")(4, 3, 5) == 3005
    assert rt.find_function("apply")(2, 3, 5) == 15


def test_extension_opcodes_compute_the_same_results(extensions: bytes, tmp_path: Path) -> None:
    path = tmp_path / "ext.wasm"
    path.write_bytes(extensions)
    dis = subprocess.run(
        ["llvm-objdump", "-d", str(path)], check=True, capture_output=True, text=True
    ).stdout
    for opcode in ("memory.copy", "memory.fill", "i32.extend8_s", "trunc_sat"):
        assert opcode in dis, f"clang did not emit {opcode}; the test would prove nothing"
    calls: list[tuple[str, tuple[Any, ...]]] = [
        ("copy_fill", (100, 3)),
        ("sext8", (0x1FF,)),
        ("sext16", (0x18000,)),
        ("sext64_32", (0x1FFFFFFFF,)),
        ("sat_i32", (1e20,)),
        ("sat_u32", (-5.0,)),
        ("sat_i64", (-1e30,)),
        ("size", ()),
        ("grow", (1,)),
        ("size", ()),
    ]
    rt0, _ = load(extensions, gas=None)
    rt1, _ = load(instrument(extensions))
    for func, args in calls:
        assert rt1.find_function(func)(*args) == rt0.find_function(func)(*args), func


def test_instrumented_output_disassembles_with_llvm(kernels: bytes, tmp_path: Path) -> None:
    path = tmp_path / "metered.wasm"
    path.write_bytes(instrument(kernels))
    dis = subprocess.run(
        ["llvm-objdump", "-d", str(path)], check=True, capture_output=True, text=True
    ).stdout
    assert "call\t0" in dis  # usegas is function 0 (kernels.c has no imports)


# --------------------------------------------------------------------------------------------
# gas


def test_gas_limit_zero_traps_on_first_charge(kernels: bytes) -> None:
    """pywasm3 starts every module with no gas: the host must set gasLimit before each call."""
    rt, _ = load(instrument(kernels), gas=None)
    with pytest.raises(RuntimeError, match="Out of gas"):
        rt.find_function("classify")(1)


def test_gas_spent_is_exactly_the_static_count() -> None:
    # countdown(n): loop { local.get 0; i32.const 1; i32.sub; local.tee 0; br_if 0 } local.get 0
    expr = b"\x03\x40\x20\x00\x41\x01\x6b\x22\x00\x0d\x00\x0b\x20\x00\x0b"
    wasm = module(
        section(1, vec([functype(bytes([I32]), bytes([I32]))])),
        section(3, vec([uleb(0)])),
        section(7, vec([export("countdown", 0, 0)])),
        section(10, vec([body(expr)])),
    )
    rt, mod = load(instrument(wasm), gas=1000)
    assert rt.find_function("countdown")(1000) == 0
    # function level: loop, local.get, end = 3; loop body: 6 instructions x 1000 iterations
    assert round(mod.gasUsed * GAS_LIMIT_UNIT) == 3 + 6 * 1000


def test_infinite_loop_is_stopped_by_gas_and_rate_is_measured(kernels: bytes) -> None:
    rt, mod = load(instrument(kernels), gas=None)
    rates = []
    for limit in (500, 2000, 8000):  # units of 10,000 gas
        mod.gasLimit = limit
        start = time.perf_counter()
        with pytest.raises(RuntimeError, match="Out of gas"):
            rt.find_function("spin")()
        elapsed = time.perf_counter() - start
        assert mod.gasUsed == pytest.approx(limit, abs=0.01)
        rates.append(limit * GAS_LIMIT_UNIT / elapsed)
    mod.gasLimit = 1
    assert rt.find_function("spin_count")() > 0  # the loop really ran
    rate = max(rates)
    print(
        f"\nwasm3 burns {rate / 1e6:.0f} M gas/s on the spin loop "
        f"(0.5 s = {rate * 0.5 / 1e6:.0f} M gas = gasLimit {rate * 0.5 / GAS_LIMIT_UNIT:.0f})"
    )
    assert elapsed < 10.0


def test_bulk_memory_is_charged_by_length(extensions: bytes) -> None:
    """A loop of 1 MiB memory.fill must not run for ages on a small budget."""
    rt, mod = load(instrument(extensions), gas=1000)  # 10 M gas
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="Out of gas"):
        rt.find_function("fill_forever")(1 << 20)
    elapsed = time.perf_counter() - start
    assert mod.gasUsed == pytest.approx(1000, abs=1)
    print(f"\n1 MiB memory.fill loop: 10 M gas spent in {elapsed * 1e3:.1f} ms")
    # uncharged, each ~10-instruction iteration would cost ~10 gas: 10 M gas = 1 M fills (~20 s)
    assert elapsed < 2.0
    memory = rt.get_memory(0)
    assert any(memory[2048 : 2048 + 4096])  # the fills really happened


def test_metering_overhead_on_a_numeric_kernel(
    kernel_pair: tuple[tuple[Any, Any], tuple[Any, Any]],
) -> None:
    times = []
    for rt, mod in kernel_pair:
        if mod.gasLimit:
            mod.gasLimit = BIG_GAS
        kernel = rt.find_function("kernel")
        rt.find_function("reset")()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(200):
                kernel(10000, 0.5)
            best = min(best, time.perf_counter() - start)
        times.append(best)
    ratio = times[1] / times[0]
    print(
        f"\nkernel 200 x 10,000 f64: plain {times[0] * 1e3:.1f} ms, metered "
        f"{times[1] * 1e3:.1f} ms, ratio {ratio:.2f}"
    )
    assert ratio < 3.0


# --------------------------------------------------------------------------------------------
# index rewriting on hand-built modules


def test_start_exports_table_and_imports_keep_their_meaning() -> None:
    t_void, t_get, t_unary = 0, 1, 2
    types = [functype(b"", b""), functype(b"", bytes([I32])), functype(bytes([I32]), bytes([I32]))]
    # function 0 is the import env.unused (never called); defined functions start at 1
    start_fn = b"\x23\x00\x41\xe4\x00\x6a\x24\x00\x0b"  # g += 100
    get_fn = b"\x23\x00\x0b"  # return g
    times7 = b"\x20\x00\x41\x07\x6c\x23\x00\x6a\x0b"  # x*7 + g   (only in the table)
    dispatch = b"\x41\x05\x20\x00\x11\x02\x00\x0b"  # call_indirect type 2 (5, table[i])
    via_call = b"\x20\x00\x41\x01\x6a\x10\x03\x0b"  # call 3 (times7) with x+1
    wasm = module(
        section(1, vec(types)),
        section(2, vec([func_import("env", "unused", t_void)])),
        section(3, vec([uleb(t) for t in (t_void, t_get, t_unary, t_unary, t_unary)])),
        section(4, vec([b"\x70\x00\x04"])),  # funcref table, min 4
        section(6, vec([b"\x7f\x01\x41\x00\x0b"])),  # mut i32 global = 0
        section(7, vec([export("get", 0, 2), export("dispatch", 0, 4)])),
        section(8, uleb(1)),
        section(9, vec([b"\x00\x41\x01\x0b" + vec([uleb(3), uleb(5)])])),  # table[1..] = 3, 5
        section(10, vec([body(x) for x in (start_fn, get_fn, times7, dispatch, via_call)])),
    )
    original = load(wasm, gas=None)[0]
    rt, _ = load(instrument(wasm))
    for r in (original, rt):
        assert r.find_function("get")() == 100  # start ran exactly once
        assert r.find_function("dispatch")(1) == 5 * 7 + 100
        assert r.find_function("dispatch")(2) == 6 * 7 + 100


def test_every_element_segment_form_and_global_ref_func_is_remapped() -> None:
    # one import (index 0) then defined functions 1..3; after instrumenting: 0, usegas=1, 2..4
    i32c = b"\x41\x00\x0b"

    def ref(f: int) -> bytes:
        return b"\xd2" + uleb(f) + b"\x0b"

    null = b"\xd0\x70\x0b"
    segments = [
        b"\x00" + i32c + vec([uleb(0), uleb(1), uleb(3)]),
        b"\x01\x00" + vec([uleb(2), uleb(0)]),
        b"\x02\x00" + i32c + b"\x00" + vec([uleb(3)]),
        b"\x03\x00" + vec([uleb(1)]),
        b"\x04" + i32c + vec([ref(1), null, ref(0)]),
        b"\x05\x70" + vec([ref(3)]),
        b"\x06\x00" + i32c + b"\x70" + vec([ref(2), null]),
        b"\x07\x70" + vec([ref(0), ref(2)]),
    ]
    expected = [
        b"\x00" + i32c + vec([uleb(0), uleb(2), uleb(4)]),
        b"\x01\x00" + vec([uleb(3), uleb(0)]),
        b"\x02\x00" + i32c + b"\x00" + vec([uleb(4)]),
        b"\x03\x00" + vec([uleb(2)]),
        b"\x04" + i32c + vec([ref(2), null, ref(0)]),
        b"\x05\x70" + vec([ref(4)]),
        b"\x06\x00" + i32c + b"\x70" + vec([ref(3), null]),
        b"\x07\x70" + vec([ref(0), ref(3)]),
    ]
    nop = b"\x0b"
    calls = b"\x10\x00\x10\x03\xd2\x02\x1a\x0b"  # call 0; call 3; ref.func 2; drop
    wasm = module(
        section(1, vec([functype(b"", b"")])),
        section(2, vec([func_import("env", "f", 0)])),
        section(3, vec([uleb(0)] * 3)),
        section(4, vec([b"\x70\x00\x08"])),
        section(6, vec([b"\x70\x00" + ref(3), b"\x7f\x00" + i32c])),
        section(7, vec([export("a", 0, 0), export("b", 0, 3), export("t", 1, 0)])),
        section(8, uleb(2)),
        section(9, vec(segments)),
        section(10, vec([body(nop), body(calls), body(nop)])),
    )
    out = instrument(wasm)
    assert section_payload(out, 9) == vec(expected)
    assert section_payload(out, 6) == vec([b"\x70\x00" + ref(4), b"\x7f\x00" + i32c])
    assert section_payload(out, 7) == vec([export("a", 0, 0), export("b", 0, 4), export("t", 1, 0)])
    assert section_payload(out, 8) == uleb(3)
    imports = section_payload(out, 2)
    assert imports == vec([func_import("env", "f", 0), func_import("metering", "usegas", 1)])
    assert section_payload(out, 1) == vec([functype(b"", b""), functype(bytes([I32]), b"")])
    bodies = code_bodies(out)
    assert bodies[1] == b"\x00" + charge(5, 1) + b"\x10\x00\x10\x04\xd2\x03\x1a\x0b"


def test_existing_usegas_type_is_reused_and_missing_sections_are_created() -> None:
    wasm = module(
        section(1, vec([functype(b"", bytes([I32])), functype(bytes([I32]), b"")])),
        section(3, vec([uleb(0)])),
        section(7, vec([export("seven", 0, 0)])),
        section(10, vec([body(b"\x41\x07\x0b")])),
    )
    out = instrument(wasm)
    assert [i for i, _ in read_sections(out)] == [1, 2, 3, 7, 10]
    assert section_payload(out, 1) == section_payload(wasm, 1)
    assert section_payload(out, 2) == vec([func_import("metering", "usegas", 1)])
    rt, _ = load(out)
    assert rt.find_function("seven")() == 7
    # a module with nothing but a memory gets both a type and an import section
    bare = instrument(module(section(5, vec([b"\x00\x01"]))))
    assert [i for i, _ in read_sections(bare)] == [1, 2, 5]
    load(bare)


def test_every_supported_opcode_is_decoded_and_charged() -> None:
    f = 1  # a defined function index (one import): must become 2
    instrs = [
        b"\x01",
        b"\x02\x40",
        b"\x0c\x00",
        b"\x0b",
        b"\x02\x7f",
        b"\x41\xff\xff\xff\xff\x07",
        b"\x0b",
        b"\x1a",
        b"\x02\x01",
        b"\x0b",
        b"\x04\x40",
        b"\x05",
        b"\x0b",
        b"\x0e\x03\x00\x01\x02\x00",
        b"\x0f",
        b"\x10" + uleb(f),
        b"\x10\x00",
        b"\x11\x00\x00",
        b"\x12" + uleb(f),
        b"\x13\x01\x00",
        b"\x1b",
        b"\x1c\x01\x7f",
        b"\x20\x00",
        b"\x21\x00",
        b"\x22\x80\x01",
        b"\x23\x00",
        b"\x24\x00",
        b"\x25\x00",
        b"\x26\x00",
        b"\x28\x02\x00",
        b"\x29\x03\x80\x01",
        b"\x36\x02\x00",
        b"\x3e\x01\x04",
        b"\x3f\x00",
        b"\x40\x00",
        b"\x42" + sleb(-(2**63)),
        b"\x43" + struct.pack("<f", 1.5),
        b"\x44" + struct.pack("<d", -2.25),
        b"\x6a",
        b"\xa0",
        b"\xbf",
        b"\xc0",
        b"\xc4",
        b"\xd0\x70",
        b"\xd1",
        b"\xd2" + uleb(f),
        b"\xd2\x00",
        *[b"\xfc" + bytes((sub,)) for sub in range(8)],
        b"\xfc\x08\x00\x00",
        b"\xfc\x09\x00",
        b"\xfc\x0a\x00\x00",
        b"\xfc\x0b\x00",
        b"\xfc\x0c\x00\x00",
        b"\xfc\x0d\x00",
        b"\xfc\x0e\x00\x00",
        b"\xfc\x0f\x00",
        b"\xfc\x10\x00",
        b"\xfc\x11\x00",
        b"\x00",
        b"\x0b",
    ]
    expected_instrs = list(instrs)
    for pos, instr in enumerate(instrs):
        if instr[0] in (0x10, 0x12, 0xD2) and instr[1:] == uleb(f):
            expected_instrs[pos] = instr[:1] + uleb(f + 1)
        if instr[:2] in (b"\xfc\x0a", b"\xfc\x0b"):  # memory.copy/fill: charge n >> 6
            expected_instrs[pos] = b"\x22\x02\x20\x02\x41\x06\x76\x10\x01" + instr
    assert sum(a != b for a, b in zip(instrs, expected_instrs, strict=True)) == 5
    expr, expected = b"".join(instrs), b"".join(expected_instrs)
    wasm = module(
        section(1, vec([functype(b"", b"")])),
        section(2, vec([func_import("env", "f", 0)])),
        section(3, vec([uleb(0)])),
        section(10, vec([body(expr, b"\x01\x02\x7f")])),
    )
    out = instrument(wasm)
    (only,) = code_bodies(out)
    # a scratch i32 local (index 2, after the 2 declared) holds the bulk-memory length
    assert only == b"\x02\x02\x7f\x01\x7f" + charge(len(instrs), 1) + expected


def test_loop_heads_are_charged_with_their_own_body() -> None:
    # i32.const 0; loop; nop; loop (type 129); br 1; end; nop; end; loop i32; end; drop; end
    a, b, c, d, e, f, g, h = (
        b"\x41\x00",
        b"\x03\x40",
        b"\x01",
        b"\x03\x81\x01",
        b"\x0c\x01",
        b"\x0b",
        b"\x01",
        b"\x0b",
    )
    i, j, k, last = b"\x03\x7f", b"\x0b", b"\x1a", b"\x0b"
    wasm = module(
        section(1, vec([functype(b"", b"")])),
        section(3, vec([uleb(0)])),
        section(10, vec([body(a + b + c + d + e + f + g + h + i + j + k + last)])),
    )
    (only,) = code_bodies(instrument(wasm))
    # function: a b i k last = 5; outer loop: c d g h = 4; inner loop: e f = 2; last loop: j -> 1
    expected = (
        b"\x00"
        + charge(5, 0)
        + a
        + b
        + charge(4, 0)
        + c
        + d
        + charge(2, 0)
        + e
        + f
        + g
        + h
        + i
        + charge(1, 0)
        + j
        + k
        + last
    )
    assert only == expected


def test_custom_sections_kept_except_name() -> None:
    custom = section(0, name("producers") + b"\x01\x02\x03")
    names = section(0, name("name") + b"\x01\x03\x01\x00\x01a")
    data = section(11, vec([b"\x00\x41\x08\x0b" + vec([b"h", b"i"])]))
    wasm = module(
        custom,
        section(1, vec([functype(b"", b"")])),
        section(3, vec([uleb(0)])),
        section(5, vec([b"\x00\x01"])),
        section(10, vec([body(b"\x0b")])),
        data,
        names,
    )
    out = instrument(wasm)
    secs = read_sections(out)
    assert secs[0] == (0, custom[2:])
    assert secs[-1] == (11, data[2:])
    assert not any(i == 0 and p.startswith(name("name")) for i, p in secs)
    assert section_payload(out, 5) == vec([b"\x00\x01"])


def test_instrumenting_a_100kb_module_is_fast(tmp_path: Path) -> None:
    funcs = []
    for i in range(300):
        funcs.append(
            f'__attribute__((export_name("f{i}"))) int f{i}(int x, int y) {{\n'
            f"  int s = {i};\n"
            "  for (int k = 0; k < x; k++) {\n"
            "    switch ((k + y) & 7) {\n"
            f"      case 0: s += k * {i + 3}; break;\n"
            f"      case 1: s ^= k << {i % 13}; break;\n"
            f"      case 2: s -= y * {i + 7}; break;\n"
            f"      case 3: s = s * 31 + {i}; break;\n"
            "      case 4: sink = s; break;\n"
            "      case 5: s += sink; break;\n"
            "      case 6: s = (s >> 3) | (k << 5); break;\n"
            f"      default: s += (int)((double)k * {i}.25); break;\n"
            "    }\n  }\n  return s;\n}\n"
        )
    src = "static volatile int sink;\n" + "".join(funcs)
    wasm = compile_c(src, tmp_path / "big.wasm")
    assert len(wasm) > 90_000
    start = time.perf_counter()
    out = instrument(wasm)
    elapsed = time.perf_counter() - start
    print(f"\ninstrumented {len(wasm) / 1024:.0f} KiB in {elapsed * 1e3:.1f} ms")
    assert elapsed < 0.5
    rt0, _ = load(wasm, gas=None)
    rt1, _ = load(out)
    for fn in ("f0", "f123", "f299"):
        assert rt1.find_function(fn)(50, 3) == rt0.find_function(fn)(50, 3)


# --------------------------------------------------------------------------------------------
# refused modules


def simple(expr: bytes, imports: list[bytes] | None = None) -> bytes:
    return module(
        section(1, vec([functype(b"", b""), functype(bytes([I32]), b"")])),
        *([section(2, vec(imports))] if imports else []),
        section(3, vec([uleb(0)])),
        section(10, vec([body(expr)])),
    )


@pytest.mark.parametrize(
    ("wasm", "words"),
    [
        (b"", "magic"),
        (b"\x7fELF\x02\x01\x01\x00", "magic"),
        (b"\x00asm\x02\x00\x00\x00", "version"),
        (b"\x00asm\x0d\x00\x01\x00", "component-model"),
        (module(section(1, b"\x05\x60")), "truncated type section"),
        (module(section(14, b"")), "unknown section id 14"),
        (module(section(3, b"\x00"), section(1, b"\x00")), "out of order"),
        (module(section(1, b"\x00"), section(1, b"\x00")), "duplicated"),
        (module(b"\x01\x20\x00"), "truncated module"),
        (simple(b"\xfd\x0c" + bytes(16) + b"\x1a\x0b"), "opcode 0xfd (SIMD)"),
        (simple(b"\xfe\x03\x00\x0b"), "opcode 0xfe (threads"),
        (simple(b"\xfc\x63\x0b"), "opcode 0xfc 99"),
        # decodings where wasm3 would read the bytes differently from the spec are refused, so
        # a `loop` cannot hide inside what the instrumenter took for an immediate
        (simple(b"\x41\x00\x28\x40\x00\x03\x1a\x0b"), "multiple memories"),
        (simple(b"\x43\x00\x00\x00\x00\xfc\x80\x00\x1a\x0b"), "opcode 0xfc 128"),
        (simple(b"\x06\x40\x0b\x0b"), "exception handling"),
        (simple(b"\x10\x05\x0b"), "refers to function 5"),
        (simple(b"\x01\x01"), "ends before its final 'end'"),
        (simple(b"\x0b\x01"), "does not end where its size says"),
        (simple(b"\x0b", [func_import("metering", "usegas", 1)]), "metering.usegas"),
        (simple(b"\x0b", [func_import("metering", "mint", 1)]), "must not import"),
        (
            module(section(1, vec([functype(b"", b"")])), section(3, vec([uleb(0)]))),
            "code section is missing",
        ),
        (module(section(3, vec([uleb(0)]))), "has type 0, which does not exist"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_modules_are_refused_with_a_sentence(wasm: bytes, words: str) -> None:
    with pytest.raises(ComponentLoadError) as info:
        instrument(wasm)
    assert words in str(info.value)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        ("invalid wasm module: ", "unsupported instruction: ", "the module imports ")
    )


def test_unsupported_opcode_names_the_function_index() -> None:
    wasm = simple(b"\xfd\x0c" + bytes(16) + b"\x1a\x0b", [func_import("edge", "log", 0)])
    with pytest.raises(ComponentLoadError, match=r"function 1 uses opcode 0xfd \(SIMD\)"):
        instrument(wasm)


def test_instrumenting_twice_is_refused(kernels: bytes) -> None:
    with pytest.raises(ComponentLoadError, match="metering"):
        instrument(instrument(kernels))


def test_component_name_is_carried_in_the_error() -> None:
    with pytest.raises(ComponentLoadError) as info:
        instrument(b"nope", component="physics")
    assert info.value.component == "physics"
    assert info.value.to_dict()["component"] == "physics"
    assert str(info.value).startswith("component 'physics': invalid wasm module")


def test_truncations_and_corruptions_only_raise_component_load_error(kernels: bytes) -> None:
    for cut in range(0, len(kernels), 7):
        try:
            instrument(kernels[:cut])
        except ComponentLoadError:
            pass
    rng = random.Random(1234)
    refused = 0
    for _ in range(400):
        data = bytearray(kernels)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(8, len(data))] = rng.randrange(256)
        try:
            instrument(bytes(data))
        except ComponentLoadError:
            refused += 1
    assert refused > 0
    with pytest.raises(ComponentLoadError, match="truncated"):
        instrument(kernels[: len(kernels) // 2])


# --------------------------------------------------------------------------------------------
# imports / exports / signatures

IMPORTS_C = """
#define IMPORT(n) __attribute__((import_module("edge"), import_name(n)))
IMPORT("log") void edge_log(int level, const char *p, int len);
IMPORT("clock_ms") long long edge_clock_ms(void);
IMPORT("publish") int edge_publish(const char *s, int sl, const char *d, int dl);
IMPORT("col_read") int edge_col_read(int col, double *p, int cap);
static double col[4];
__attribute__((export_name("edge_tick"))) int edge_tick(int n, double dt) {
    edge_log(1, "tick", 4);
    edge_col_read(0, col, sizeof col);
    return (int)(edge_clock_ms() & 1) + edge_publish("a", 1, "b", 1) + (int)(dt * n);
}
"""


def test_imports_exports_and_signatures_of_a_c_component(tmp_path: Path) -> None:
    wasm = compile_c(IMPORTS_C, tmp_path / "imports.wasm")
    imports = module_imports(wasm)
    assert set(imports) == {
        ("edge", "log", "func"),
        ("edge", "clock_ms", "func"),
        ("edge", "publish", "func"),
        ("edge", "col_read", "func"),
    }
    assert func_import_signatures(wasm) == {
        ("edge", "log"): "v(iii)",
        ("edge", "clock_ms"): "I()",
        ("edge", "publish"): "i(iiii)",
        ("edge", "col_read"): "i(iii)",
    }
    assert ("memory", "memory") in module_exports(wasm)
    assert ("edge_tick", "func") in module_exports(wasm)
    # the metered copy links the host functions after rt.load and still runs
    metered = instrument(wasm)
    assert module_imports(metered)[-1] == ("metering", "usegas", "func")
    assert module_imports(metered)[:-1] == imports
    rt, mod = load(metered)
    logged: list[int] = []
    mod.link_function("edge", "log", "v(iii)", lambda lvl, p, n: logged.append(lvl))
    mod.link_function("edge", "clock_ms", "I()", lambda: 3)
    mod.link_function("edge", "publish", "i(iiii)", lambda *a: 10)
    mod.link_function("edge", "col_read", "i(iii)", lambda *a: 32)
    assert rt.find_function("edge_tick")(4, 0.5) == 1 + 10 + 2
    assert logged == [1]


def test_signatures_of_float_and_non_function_imports() -> None:
    wasm = module(
        section(1, vec([functype(bytes([F64, F32]), bytes([F64])), functype(b"", b"")])),
        section(
            2,
            vec(
                [
                    func_import("edge", "scale", 0),
                    name("env") + name("mem") + b"\x02\x01\x01\x10",
                    name("env") + name("tab") + b"\x01\x70\x00\x01",
                    name("env") + name("g") + b"\x03\x7e\x00",
                    func_import("edge", "nothing", 1),
                ]
            ),
        ),
    )
    assert module_imports(wasm) == [
        ("edge", "scale", "func"),
        ("env", "mem", "memory"),
        ("env", "tab", "table"),
        ("env", "g", "global"),
        ("edge", "nothing", "func"),
    ]
    assert func_import_signatures(wasm) == {("edge", "scale"): "F(Ff)", ("edge", "nothing"): "v()"}
    assert module_exports(wasm) == []
    two_results = module(
        section(1, vec([functype(b"", bytes([I32, I32]))])),
        section(2, vec([func_import("edge", "pair", 0)])),
    )
    with pytest.raises(ComponentLoadError, match="edge.pair returns 2 values"):
        func_import_signatures(two_results)
    with pytest.raises(ComponentLoadError, match="magic"):
        module_imports(b"\x00\x00\x00\x00\x01\x00\x00\x00")
