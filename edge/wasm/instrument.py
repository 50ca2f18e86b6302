"""Gas metering for untrusted WebAssembly modules, added at load time.

:func:`instrument` returns a copy of a core module that imports ``metering.usegas(i32)`` (which
pywasm3 links natively: it subtracts the amount from ``module.gasLimit`` and traps
``[trap] Out of gas`` when the budget is spent) and calls it:

* at the entry of every function, with the number of instructions of that function body that
  are not inside a ``loop``;
* at the head of every ``loop`` (right after its block type, which is where a branch to the loop
  lands), with the number of instructions directly inside that loop (nested loops excluded);
* before every ``memory.fill`` / ``memory.copy``, with its length in bytes shifted right by
  :data:`BULK_MEMORY_GAS_SHIFT` (the length is kept in one extra i32 local added to the
  functions that use these instructions).

Every instruction is charged exactly once per pass through its innermost enclosing loop or
function, so the gas spent is an upper bound of roughly "one unit per wasm instruction executed"
for straight-line code, and any unbounded execution (a loop or recursion) spends gas on every
iteration. Gas units: pywasm3's ``module.gasLimit`` is a float in units of
:data:`GAS_LIMIT_UNIT` gas.

Host duties: set ``module.gasLimit`` after ``rt.load`` and before *every* call, including the first
export lookup, which runs the module's start function (pywasm3 starts a module with a budget of 0,
so the first charge traps, and it never resets the counter by itself).

The new import is appended after the existing imports, so imported functions keep their index
and every defined function's index grows by one; every function index in the module is rewritten
(``call``, ``return_call``, ``ref.func``, exports, start, element segments, global initialisers).
The custom ``name`` section is dropped; every other section is kept byte for byte.

Only the MVP instruction set plus sign extension, saturating truncation, bulk memory, reference
types, multi-value block types and tail calls are accepted; SIMD, threads, exception handling and
GC are refused with :class:`~edge.errors.ComponentLoadError`. The instrumenter decodes every
instruction but does not validate types: wasm3 checks the result when it compiles a function.

Security note: metering is only sound if this decoder splits a body into the same instructions
as wasm3 does; otherwise a ``loop`` could hide inside bytes taken here for an immediate. Where
wasm3's reader departs from the spec (it reads the 0xFC sub-opcode as one byte and the memory
access alignment as a plain u32), encodings on which the two could disagree are refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edge.errors import ComponentLoadError
from edge.wasm.wasmbin import (
    REFTYPES,
    SEC_CODE,
    SEC_CUSTOM,
    SEC_ELEMENT,
    SEC_EXPORT,
    SEC_FUNCTION,
    SEC_GLOBAL,
    SEC_IMPORT,
    SEC_START,
    SEC_TYPE,
    SECTION_NAMES,
    SECTION_ORDER,
    VALTYPES,
    Section,
    check_consumed,
    encode_s32,
    encode_u32,
    fail,
    find_section,
    func_import_signatures,
    module_exports,
    module_imports,
    parse_exports,
    parse_function_section,
    parse_imports,
    parse_sections,
    parse_types,
    read_u32,
    skip_leb,
)
from edge.wasm.opcodes import (
    NONE as _NONE,
    LEB as _LEB,
    LEB2 as _LEB2,
    BLOCK as _BLOCK,
    LOOP as _LOOP,
    END as _END,
    CALL as _CALL,
    BRTABLE as _BRTABLE,
    F32 as _F32,
    F64 as _F64,
    SELECTT as _SELECTT,
    MEMARG as _MEMARG,
    PREFIX_FC as _PREFIX_FC,
    FC_IMMEDIATES as _FC_IMMEDIATES,
    KINDS as _KINDS,
)

__all__ = [
    "GAS_LIMIT_UNIT",
    "METERING_MODULE",
    "USEGAS_NAME",
    "func_import_signatures",
    "instrument",
    "module_exports",
    "module_imports",
]

log = logging.getLogger("edge.wasm.instrument")

#: Import module and name of the gas callback that pywasm3 links natively.
METERING_MODULE = "metering"
USEGAS_NAME = "usegas"
#: pywasm3's ``module.gasLimit = x`` allows ``x * GAS_LIMIT_UNIT`` gas (units of instructions).
GAS_LIMIT_UNIT = 10_000

#: ``memory.fill`` / ``memory.copy`` also charge their length in bytes shifted right by this
#: (1 gas per 64 bytes): wasm3 fills ~1 MiB in about the time of ~10,000 ordinary instructions.
BULK_MEMORY_GAS_SHIFT = 6

_USEGAS_TYPE: tuple[bytes, bytes] = (b"\x7f", b"")
_USEGAS_TYPE_ENTRY = b"\x60\x01\x7f\x00"

_UNSUPPORTED: dict[int, str] = {
    **{op: "exception handling" for op in (0x06, 0x07, 0x08, 0x09, 0x0A, 0x18, 0x19, 0x1F)},
    **{op: "typed function references" for op in (0x14, 0x15, 0xD3, 0xD4, 0xD5, 0xD6)},
    0xFB: "garbage collection",
    0xFD: "SIMD",
    0xFE: "threads/atomics",
}


def _unsupported(op: int, where: str, offset: int, sub: int | None = None) -> ComponentLoadError:
    family = _UNSUPPORTED.get(op)
    code = f"0x{op:02x}" if sub is None else f"0x{op:02x} {sub}"
    what = f" ({family})" if family else ""
    return ComponentLoadError(
        f"unsupported instruction: {where} uses opcode {code}{what} at offset {offset} of its "
        "section, which the gas instrumenter does not support"
    )


@dataclass(frozen=True, slots=True)
class _Ctx:
    """Function index space facts shared by every rewrite."""

    n_imports: int  # function imports before instrumentation (= index of usegas)
    n_funcs: int  # imported + defined functions before instrumentation
    usegas_call: bytes  # encoded `call $usegas`

    def remap(self, idx: int, where: str) -> int:
        if idx < self.n_imports:
            return idx
        if idx >= self.n_funcs:
            raise fail(f"{where} refers to function {idx}, but there are only {self.n_funcs}")
        return idx + 1

    def charge(self, cost: int) -> bytes:
        return b"\x41" + encode_s32(max(cost, 1)) + self.usegas_call


def _walk(
    data: bytes,
    pos: int,
    end: int,
    ctx: _Ctx,
    out: list[bytes],
    where: str,
    meter: bool,
    scratch: int = -1,
) -> tuple[int, bool]:
    """Copy the expression at ``pos`` (up to its final ``end``) into ``out``, rewritten.

    Function indices are remapped. With ``meter``, a charge is put at the start and after each
    loop's block type, and ``memory.fill``/``memory.copy`` charge their length using the i32
    local ``scratch``. Returns the position after the final ``end`` and whether ``scratch``
    was used.
    """
    kinds = _KINDS
    n_imports = ctx.n_imports
    last = pos
    count = 0
    stack: list[int] = []  # per open block: -1, or an index into `saves` for a loop
    saves: list[tuple[int, int]] = []  # (count of the enclosing body, placeholder in `out`)
    func_slot = len(out)
    bulk_charge = b""
    if meter:
        local = encode_u32(scratch)
        bulk_charge = (
            b"\x22"
            + local
            + b"\x20"
            + local
            + b"\x41"
            + encode_s32(BULK_MEMORY_GAS_SHIFT)
            + b"\x76"
            + ctx.usegas_call
        )  # local.tee s; local.get s; i32.const SHIFT; i32.shr_u; call usegas
        out.append(b"")  # placeholder for the function-entry charge
    used_scratch = False
    while pos < end:
        op = data[pos]
        kind = kinds[op]
        pos += 1
        count += 1
        if kind == _NONE:
            continue
        if kind == _LEB:
            pos = pos + 1 if data[pos] < 0x80 else skip_leb(data, pos)
        elif kind == _MEMARG:
            # wasm3 reads alignment and offset as two plain u32s: refuse the multi-memory
            # flag (0x40), which would make our decoding and wasm3's disagree.
            if data[pos] < 0x40:
                pos += 1
            else:
                align, pos = read_u32(data, pos)
                if align & 0x40:
                    raise fail(
                        f"{where} has a memory access with alignment field {align} at offset "
                        f"{pos - 1} (multiple memories are not supported)"
                    )
            pos = pos + 1 if data[pos] < 0x80 else skip_leb(data, pos, 5)
        elif kind == _END:
            if stack:
                slot = stack.pop()
                if slot >= 0:
                    outer, placeholder = saves[slot]
                    out[placeholder] = ctx.charge(count)
                    count = outer
                continue
            out.append(data[last:pos])
            if meter:
                out[func_slot] = ctx.charge(count)
            return pos, used_scratch
        elif kind == _CALL:
            start = pos
            idx, pos = read_u32(data, pos)
            if idx >= n_imports:
                out.append(data[last:start])
                out.append(encode_u32(ctx.remap(idx, where)))
                last = pos
        elif kind == _BLOCK:
            pos = pos + 1 if data[pos] < 0x80 else skip_leb(data, pos, 5)
            stack.append(-1)
        elif kind == _LOOP:
            pos = pos + 1 if data[pos] < 0x80 else skip_leb(data, pos, 5)
            if meter:
                out.append(data[last:pos])
                last = pos
                saves.append((count, len(out)))
                out.append(b"")
                stack.append(len(saves) - 1)
                count = 0
            else:
                stack.append(-1)
        elif kind == _LEB2:
            pos = skip_leb(data, skip_leb(data, pos))
        elif kind == _BRTABLE:
            n, pos = read_u32(data, pos)
            for _ in range(n + 1):
                pos = skip_leb(data, pos, 5)
        elif kind == _F64:
            pos += 8
        elif kind == _F32:
            pos += 4
        elif kind == _SELECTT:
            n, pos = read_u32(data, pos)
            for t in data[pos : pos + n]:
                if t not in VALTYPES:
                    raise fail(f"{where} has select with unsupported value type 0x{t:02x}")
            pos += n
        elif kind == _PREFIX_FC:
            # wasm3 reads the sub-opcode as one byte: accept only one-byte encodings.
            sub = data[pos]
            pos += 1
            n_imm = _FC_IMMEDIATES.get(sub)
            if n_imm is None:
                raise _unsupported(op, where, pos - 2, sub)
            if meter and sub in (10, 11):  # memory.copy / memory.fill: length is on top
                out.append(data[last : pos - 2])
                out.append(bulk_charge)
                last = pos - 2
                used_scratch = True
            for _ in range(n_imm):
                pos = skip_leb(data, pos, 5)
        else:
            raise _unsupported(op, where, pos - 1)
    raise fail(f"{where} ends before its final 'end' instruction")


def _rewrite_code(payload: bytes, ctx: _Ctx, param_counts: list[int]) -> bytes:
    count, pos = read_u32(payload, 0)
    if count != len(param_counts):
        raise fail(
            f"the code section has {count} bodies but {len(param_counts)} functions are declared"
        )
    out: list[bytes] = [encode_u32(count)]
    size_total = len(payload)
    for i in range(count):
        where = f"function {ctx.n_imports + i}"
        size, pos = read_u32(payload, pos)
        body_end = pos + size
        if body_end > size_total:
            raise fail(f"the body of {where} runs past the end of the code section")
        body_start = pos
        n_groups, pos = read_u32(payload, pos)
        groups_start = pos
        n_locals = param_counts[i]
        for _ in range(n_groups):
            n, pos = read_u32(payload, pos)
            n_locals += n
            if payload[pos] not in VALTYPES:
                raise fail(f"{where} declares a local of unsupported type 0x{payload[pos]:02x}")
            pos += 1
        body: list[bytes] = [payload[body_start:pos]]
        pos, used_scratch = _walk(payload, pos, body_end, ctx, body, where, True, n_locals)
        if pos != body_end:
            raise fail(f"the body of {where} does not end where its size says")
        if used_scratch:  # declare the scratch i32 local after all the others
            body[0] = encode_u32(n_groups + 1) + body[0][groups_start - body_start :] + b"\x01\x7f"
        out.append(encode_u32(sum(len(chunk) for chunk in body)))
        out.extend(body)
    check_consumed(SEC_CODE, pos, payload)
    return b"".join(out)


def _rewrite_elements(payload: bytes, ctx: _Ctx) -> bytes:
    count, pos = read_u32(payload, 0)
    out: list[bytes] = []
    last = 0
    for i in range(count):
        where = f"element segment {i}"
        flags, pos = read_u32(payload, pos)
        if flags > 7:
            raise fail(f"{where} has unknown flags {flags}")
        if not flags & 1:  # active: optional table index, then offset expression
            if flags & 2:
                pos = skip_leb(payload, pos, 5)
            out.append(payload[last:pos])
            pos, _ = _walk(payload, pos, len(payload), ctx, out, where, meter=False)
            last = pos
        if flags & 3:  # element kind (0x00 = funcref) or reference type
            kind = payload[pos]
            if (flags & 4 and kind not in REFTYPES) or (not flags & 4 and kind != 0):
                raise fail(f"{where} has unsupported element kind 0x{kind:02x}")
            pos += 1
        n, pos = read_u32(payload, pos)
        for _ in range(n):
            if flags & 4:
                out.append(payload[last:pos])
                pos, _ = _walk(payload, pos, len(payload), ctx, out, where, meter=False)
            else:
                start = pos
                idx, pos = read_u32(payload, pos)
                out.append(payload[last:start])
                out.append(encode_u32(ctx.remap(idx, where)))
            last = pos
    out.append(payload[last:pos])
    check_consumed(SEC_ELEMENT, pos, payload)
    return b"".join(out)


def _rewrite_globals(payload: bytes, ctx: _Ctx) -> bytes:
    count, pos = read_u32(payload, 0)
    out: list[bytes] = []
    last = 0
    for i in range(count):
        if payload[pos] not in VALTYPES or payload[pos + 1] > 1:
            raise fail(f"global {i} has an unsupported type")
        pos += 2
        out.append(payload[last:pos])
        pos, _ = _walk(payload, pos, len(payload), ctx, out, f"global {i}", meter=False)
        last = pos
    out.append(payload[last:pos])
    check_consumed(SEC_GLOBAL, pos, payload)
    return b"".join(out)


def _rewrite_exports(payload: bytes, ctx: _Ctx) -> bytes:
    exports = parse_exports(payload)
    out = [encode_u32(len(exports))]
    for exp in exports:
        idx = exp.index
        if exp.kind == "func":
            idx = ctx.remap(idx, f"export '{exp.name}'")
        out.append(exp.raw_name + bytes((_EXPORT_KIND_BYTES[exp.kind],)) + encode_u32(idx))
    return b"".join(out)


_EXPORT_KIND_BYTES = {"func": 0, "table": 1, "memory": 2, "global": 3, "tag": 4}


def _rewrite_start(payload: bytes, ctx: _Ctx) -> bytes:
    idx, pos = read_u32(payload, 0)
    check_consumed(SEC_START, pos, payload)
    return encode_u32(ctx.remap(idx, "the start section"))


def _with_extra_entry(payload: bytes | None, entry: bytes) -> bytes:
    """Append one entry to a vector section payload (or make a one-entry vector)."""
    if payload is None:
        return b"\x01" + entry
    count, pos = read_u32(payload, 0)
    return encode_u32(count + 1) + payload[pos:] + entry


def _name_bytes(name: str) -> bytes:
    raw = name.encode("utf-8")
    return encode_u32(len(raw)) + raw


def instrument(wasm: bytes, *, component: str | None = None) -> bytes:
    """Return a metered copy of the module (see the module docstring for what is charged).

    Raises :class:`ComponentLoadError` for a malformed module, an unsupported instruction, or a
    module that imports ``metering`` itself (it could call ``usegas`` with a negative amount).
    """
    try:
        return _instrument(wasm)
    except ComponentLoadError as err:
        if component is None:
            raise
        raise ComponentLoadError(
            f"component '{component}': {err.message}", component=component
        ) from None


def _instrument(wasm: bytes) -> bytes:
    sections = parse_sections(wasm)
    type_sec = find_section(sections, SEC_TYPE)
    import_sec = find_section(sections, SEC_IMPORT)
    func_sec = find_section(sections, SEC_FUNCTION)
    types = parse_types(type_sec.payload) if type_sec else []
    imports = parse_imports(import_sec.payload) if import_sec else []
    for imp in imports:
        if imp.module == METERING_MODULE:
            raise ComponentLoadError(
                f"the module imports '{imp.module}.{imp.name}'; components must not import the "
                f"'{METERING_MODULE}' module (the host adds it to meter gas)"
            )
    n_imports = sum(1 for imp in imports if imp.kind == "func")
    func_types = parse_function_section(func_sec.payload) if func_sec else []
    n_defined = len(func_types)
    for i, type_idx in enumerate(func_types):
        if type_idx >= len(types):
            raise fail(f"function {n_imports + i} has type {type_idx}, which does not exist")
    param_counts = [len(types[t][0]) for t in func_types]
    ctx = _Ctx(n_imports, n_imports + n_defined, b"\x10" + encode_u32(n_imports))

    new_payloads: dict[int, bytes] = {}
    if _USEGAS_TYPE in types:
        type_index = types.index(_USEGAS_TYPE)
    else:
        type_index = len(types)
        new_payloads[SEC_TYPE] = _with_extra_entry(
            type_sec.payload if type_sec else None, _USEGAS_TYPE_ENTRY
        )
    usegas_entry = (
        _name_bytes(METERING_MODULE) + _name_bytes(USEGAS_NAME) + b"\x00" + encode_u32(type_index)
    )
    new_payloads[SEC_IMPORT] = _with_extra_entry(
        import_sec.payload if import_sec else None, usegas_entry
    )
    rewriters = {
        SEC_CODE: lambda p: _rewrite_code(p, ctx, param_counts),
        SEC_ELEMENT: lambda p: _rewrite_elements(p, ctx),
        SEC_GLOBAL: lambda p: _rewrite_globals(p, ctx),
        SEC_EXPORT: lambda p: _rewrite_exports(p, ctx),
        SEC_START: lambda p: _rewrite_start(p, ctx),
    }
    for sec in sections:
        rewrite = rewriters.get(sec.id)
        if rewrite is not None:
            try:
                new_payloads[sec.id] = rewrite(sec.payload)
            except IndexError:
                raise fail(f"truncated {SECTION_NAMES[sec.id]} section") from None
    if n_defined and find_section(sections, SEC_CODE) is None:
        raise fail(f"{n_defined} functions are declared but the code section is missing")

    pending = [
        Section(sid, new_payloads[sid])
        for sid in (SEC_TYPE, SEC_IMPORT)
        if find_section(sections, sid) is None and sid in new_payloads
    ]
    out = [bytes(wasm[:8])]
    for sec in sections:
        if sec.id == SEC_CUSTOM:
            if sec.name == "name":
                continue
            out.append(sec.encode())
            continue
        while pending and SECTION_ORDER[pending[0].id] < SECTION_ORDER[sec.id]:
            out.append(pending.pop(0).encode())
        payload = new_payloads.get(sec.id, sec.payload)
        out.append(Section(sec.id, payload).encode())
    out.extend(sec.encode() for sec in pending)
    result = b"".join(out)
    log.debug(
        "instrumented module: %d -> %d bytes, %d functions", len(wasm), len(result), n_defined
    )
    return result
