"""What a host call leaks, by signature and by what the host function returns. ``python bench/bench_hostcalls.py [--quick]``

pywasm3 0.5.0's import trampoline builds a tuple of the arguments, calls the Python function
and releases neither the tuple nor the returned object (docs/sandbox.md, *Memory*). This probe
measures the bytes each call leaves allocated, with ``tracemalloc`` (exact, unlike RSS), for:

(a) a bare pywasm3 module (compiled here from the C below) calling imports of each signature,
    with small arguments (-5..256: CPython's shared ints) or large ones, and host functions
    returning nothing, a small int, the same large int object every time, or a fresh int;
(b) the sandbox worker's own imports (``edge.wasm.worker.instance.Instance`` in this process,
    tests/wasm/components/hostcalls.c): ``batch_len``, ``clock_ms``, ``monotonic_ns``,
    ``device_id``.

What it shows: the argument tuple (40 + 8 bytes an argument) and every argument outside
-5..256 (32 bytes) leak whatever the host function does, so nothing on our side avoids them;
the result leaks only when it is a fresh object. So the worker returns shared objects where the
value allows: ``clock_ms`` the same int within a millisecond, lengths below 4,096 one shared int
per value (``edge.wasm.worker.imports.shared_int``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import Absolute, Row, report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.wasm.abi import prepare_module  # noqa: E402
from edge.wasm.manifest import load_manifest  # noqa: E402
from edge.wasm.protocol import LoadSpec  # noqa: E402
from edge.wasm.worker.instance import Instance  # noqa: E402

PROBE_C = r"""
#include <stdint.h>
#define IMP(n) __attribute__((import_module("probe"), import_name(n)))
#define EXP(n) __attribute__((export_name(n)))
IMP("v0") void v0(void);
IMP("i0") int32_t i0(void);
IMP("I0") int64_t I0(void);
IMP("v1") void v1(int32_t);
IMP("i2") int32_t i2(int32_t, int32_t);
IMP("i4") int32_t i4(int32_t, int32_t, int32_t, int32_t);
EXP("run_v0") void run_v0(int32_t n) { for (int32_t i = 0; i < n; i++) v0(); }
EXP("run_i0") int32_t run_i0(int32_t n) { int32_t s = 0; for (int32_t i = 0; i < n; i++) s += i0(); return s; }
EXP("run_I0") int64_t run_I0(int32_t n) { int64_t s = 0; for (int32_t i = 0; i < n; i++) s += I0(); return s; }
EXP("run_v1_small") void run_v1_small(int32_t n) { for (int32_t i = 0; i < n; i++) v1(i & 127); }
EXP("run_v1_big") void run_v1_big(int32_t n) { for (int32_t i = 0; i < n; i++) v1(100000 + i); }
EXP("run_i2_small") int32_t run_i2_small(int32_t n) { int32_t s = 0; for (int32_t i = 0; i < n; i++) s += i2(1, 2); return s; }
EXP("run_i2_big") int32_t run_i2_big(int32_t n) { int32_t s = 0; for (int32_t i = 0; i < n; i++) s += i2(100000 + i, 70000); return s; }
EXP("run_i4_big") int32_t run_i4_big(int32_t n) { int32_t s = 0; for (int32_t i = 0; i < n; i++) s += i4(100000 + i, 70000, 80000, 90000); return s; }
"""

SIGS = {"v0": "v()", "i0": "i()", "I0": "I()", "v1": "v(i)", "i2": "i(ii)", "i4": "i(iiii)"}
BIG32 = 1_000_000_007  # one large int object, returned every time
BIG64 = 10**12 + 7

Fn = Callable[..., Any]
#: (export to run, import it calls, arguments, what the host function returns, the function)
CASES: list[tuple[str, str, str, str, Fn]] = [
    ("run_v0", "v0", "none", "nothing (None)", lambda: None),
    ("run_i0", "i0", "none", "a small int", lambda: 7),
    ("run_i0", "i0", "none", "the same large int", lambda: BIG32),
    ("run_i0", "i0", "none", "a fresh int", lambda: time.time_ns() & 0x7FFFFFFF),
    ("run_I0", "I0", "none", "the same large int", lambda: BIG64),
    ("run_I0", "I0", "none", "a fresh int", time.time_ns),
    ("run_v1_small", "v1", "1 small", "nothing (None)", lambda a: None),
    ("run_v1_big", "v1", "1 large", "nothing (None)", lambda a: None),
    ("run_i2_small", "i2", "2 small", "a small int", lambda a, b: 0),
    ("run_i2_big", "i2", "2 large", "a small int", lambda a, b: 0),
    ("run_i2_big", "i2", "2 large", "a fresh int", lambda a, b: a + b),
    ("run_i4_big", "i4", "4 large", "a small int", lambda a, b, c, d: 0),
]


def compile_c(source: str, name: str, tmp: Path) -> bytes:
    sys.path.insert(0, str(ROOT / "components"))
    import build  # type: ignore[import-not-found]  # components/build.py

    src = tmp / f"{name}.c"
    src.write_text(source)
    return Path(build.compile_wasm([src], tmp / f"{name}.wasm")).read_bytes()


def leaked_per_call(run: Callable[[int], Any], calls: int) -> float:
    run(1000)  # warm: wasm3 compiles the function on its first call
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        run(calls)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (after - before) / calls


def bare(wasm: bytes, calls: int) -> list[Row]:
    import wasm3

    rows: list[Row] = []
    print("(a) bare pywasm3, bytes left allocated per call (tracemalloc)")
    for export, imp, args, returns, fn in CASES:
        env = wasm3.Environment()
        rt = env.new_runtime(64 * 1024)
        mod = env.parse_module(wasm)
        rt.load(mod)
        for name, sig in SIGS.items():
            mod.link_function("probe", name, sig, fn if name == imp else (lambda *a: 0))
        b = leaked_per_call(rt.find_function(export), calls)
        label = f"{SIGS[imp]}, arguments: {args}, returns {returns}"
        print(f"    {label}: {b:.1f} B a call")
        rows.append(Absolute(f"pywasm3 host call {label}", f"{b:.1f} B leaked a call",
                             f"tracemalloc over {calls:,} calls"))
    return rows


def worker(tmp: Path, calls: int) -> list[Row]:
    sys.path.insert(0, str(ROOT / "tests" / "wasm"))
    from sandbox_support import compile_test_components, write_manifest

    module = compile_test_components(tmp)["hostcalls"]
    m = load_manifest(write_manifest(tmp, "hostcalls", module, gas=10**15, memory_pages=2), "bench")
    wasm, _ = prepare_module(module.read_bytes(), m)
    inst = Instance(LoadSpec(name="hostcalls", wasm=wasm, device="bench", ncols=0, writable=(),
                             publish=(), gas=m.limits.gas, publish_per_call=0, kv={},
                             stack_bytes=64 * 1024))
    assert inst.start()
    rows: list[Row] = []
    print("(b) the sandbox worker's imports, in this process")
    for name, kind in (("batch_len()", 0), ("clock_ms()", 1), ("monotonic_ns()", 2),
                       ("device_id(ptr, cap)", 3)):
        def run(n: int, kind: int = kind) -> None:
            inst.tick(kind, float(n))
            assert inst.result.fault is None, inst.result.fault
        b = leaked_per_call(run, calls)
        print(f"    {name}: {b:.1f} B a call")
        rows.append(Absolute(f"worker import {name}", f"{b:.1f} B leaked a call",
                             f"tracemalloc over {calls:,} calls (Instance in process)"))
    inst.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer calls")
    args = ap.parse_args()
    calls = 50_000 if args.quick else 200_000
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = bare(compile_c(PROBE_C, "probe", tmp), calls) + worker(tmp, calls)
    report(rows, command="bench/bench_hostcalls.py")


if __name__ == "__main__":
    main()
