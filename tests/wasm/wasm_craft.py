"""Hand-built modules for the structure-limit and fuzz tests (no compiler needed)."""

from __future__ import annotations

import subprocess
import sys

from edge.wasm.wasmbin import Section, encode_u32

TICK_TYPE = b"\x60\x02\x7f\x7c\x01\x7f"  # (i32, f64) -> i32, the type of edge_tick


def vec(items: list[bytes]) -> bytes:
    return encode_u32(len(items)) + b"".join(items)


def sec(sec_id: int, items: list[bytes]) -> bytes:
    return Section(sec_id, vec(items)).encode()


def export(name: str, kind: int, index: int) -> bytes:
    raw = name.encode()
    return encode_u32(len(raw)) + raw + bytes((kind,)) + encode_u32(index)


def nested(depth: int, op: int = 0x02) -> bytes:
    """Instructions of ``depth`` nested blocks (``op`` 0x02 block, 0x03 loop) then i32.const 0."""
    return bytes((op, 0x40)) * depth + b"\x0b" * depth + b"\x41\x00"


def tick_module(code: bytes = b"\x41\x00", *, locals_decl: bytes = b"\x00", n_funcs: int = 1,
                types: int = 1, globals_: int = 0, table: int | None = None,
                data: bytes | None = None, extra_exports: int = 0) -> bytes:
    """A contract-1 module exporting ``memory`` and ``edge_tick`` whose body is ``code``."""
    body = locals_decl + code + b"\x0b"
    exports = [export("memory", 2, 0), export("edge_tick", 0, 0)]
    exports += [export(f"x{i}", 0, 0) for i in range(extra_exports)]
    out = b"\x00asm\x01\x00\x00\x00" + sec(1, [TICK_TYPE] * types) + sec(3, [b"\x00"] * n_funcs)
    if table is not None:
        out += sec(4, [b"\x70\x00" + encode_u32(table)])
    out += sec(5, [b"\x00\x01"])
    if globals_:
        out += sec(6, [b"\x7f\x00\x41\x00\x0b"] * globals_)
    out += sec(7, exports)
    out += sec(10, [encode_u32(len(body)) + body] * n_funcs)
    if data is not None:
        out += sec(11, [b"\x00\x41\x00\x0b" + encode_u32(len(data)) + data])
    return out


_RUN_RAW = r"""
import resource, sys, wasm3
stack = int(sys.argv[1])
b = sys.stdin.buffer.read()
env = wasm3.Environment(); rt = env.new_runtime(65536)
m = env.parse_module(b); rt.load(m)
print("loaded", flush=True)
try:
    print("result", rt.find_function("edge_tick")(0, 0.0), flush=True)
except Exception as e:
    print("exception", e, flush=True)
"""


def run_raw(wasm: bytes, stack_bytes: int = 8 * 1024 * 1024, timeout: float = 60) -> tuple[int, str]:
    """Load ``wasm`` in bare wasm3 (no checks, no metering) in a fresh process whose C stack is
    ``stack_bytes`` and call edge_tick; return (exit code, stdout). -11 = SIGSEGV."""
    def limit() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_STACK, (stack_bytes, stack_bytes))

    p = subprocess.run([sys.executable, "-c", _RUN_RAW, str(stack_bytes)], input=wasm,
                       capture_output=True, timeout=timeout, preexec_fn=limit)
    return p.returncode, p.stdout.decode()
