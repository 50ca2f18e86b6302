"""Structure limits: refuse at load what wasm3 cannot survive (docs/sandbox.md, *Structure limits*).

wasm3 compiles a function the first time it is called, recursively: every open ``block``,
``loop`` or ``if`` costs one C stack frame of the compiler (~190 bytes on x86_64). A function
nested ~43,600 deep overflows the worker's 8 MiB C stack and kills it with SIGSEGV on its first
call, every time it is reloaded (~5,400 with a 1 MiB stack). Other sizes are bounded so that no
module makes the worker allocate without bound while wasm3 parses, loads or compiles it.

:func:`check_structure` runs on the section list of a module before anything else looks inside
it (first thing in :func:`edge.wasm.abi.check_module`). It decodes only counts, sizes and block
structure. What it cannot decode (a truncated section, an opcode the instrumenter does not
know) it skips, section by section and body by body, and leaves to the parsers that follow:
they refuse it with their own sentence. :func:`measure` returns the same numbers, for tests
and docs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from typing import TYPE_CHECKING

from edge.errors import ComponentLoadError
from edge.wasm.opcodes import (
    BLOCK as _BLOCK,
    BRTABLE as _BRTABLE,
    CALL as _CALL,
    END as _END,
    F32 as _F32,
    F64 as _F64,
    FC_IMMEDIATES as _FC_IMMEDIATES,
    KINDS as _KINDS,
    LEB as _LEB,
    LEB2 as _LEB2,
    LOOP as _LOOP,
    MEMARG as _MEMARG,
    NONE as _NONE,
    PREFIX_FC as _PREFIX_FC,
    SELECTT as _SELECTT,
)
from edge.wasm.wasmbin import (
    SEC_CODE,
    SEC_DATA,
    SEC_ELEMENT,
    SEC_EXPORT,
    SEC_FUNCTION,
    SEC_GLOBAL,
    SEC_IMPORT,
    SEC_TABLE,
    SEC_TYPE,
    Section,
    read_u32,
    skip_leb,
)

if TYPE_CHECKING:  # only a type here: the sandbox worker imports this module, never a manifest parser
    from edge.wasm.manifest import Manifest

#: Blocks (``block``, ``loop``, ``if``) open at once in one function (levels). wasm3's compiler
#: recurses once per level and crashes the worker near 43,600 levels with an 8 MiB C stack
#: (~5,400 with 1 MiB, ~1,340 with 256 KiB); clang's output for our components stays below 20.
MAX_NESTING_DEPTH = 1_024
#: Functions defined by the module (functions), not counting imports.
MAX_FUNCTIONS = 10_000
#: Size of one function body in the code section (bytes).
MAX_BODY_BYTES = 256 * 1024
#: Locals declared by one function, the sum of its local declarations (locals; parameters not
#: counted). wasm3 refuses a function whose frame exceeds its stack height limit anyway.
MAX_LOCALS = 1_000
#: Entries of the type section (function types).
MAX_TYPES = 1_000
#: Entries of the import section (imports). Contract 1 has 12 host functions.
MAX_IMPORTS = 64
#: Entries of the export section (exports).
MAX_EXPORTS = 1_000
#: Entries of the global section (globals).
MAX_GLOBALS = 1_000
#: Initial and maximum size of a table, and all element segments' entries together (elements).
#: wasm3 allocates a table's initial size at load.
MAX_TABLE_ELEMENTS = 65_536
#: Size of the data section: every data segment with its headers (bytes). Segments are copied
#: into linear memory at load, which is pinned at ``limits.memory_pages`` anyway.
MAX_DATA_BYTES = 4 * 1024 * 1024
#: Targets of one ``br_table`` instruction (labels).
MAX_BR_TABLE_TARGETS = 65_536


@dataclass
class Structure:
    """What :func:`measure` found: the largest value of each limited quantity."""

    nesting_depth: int = 0  #: deepest block nesting of any function
    functions: int = 0
    body_bytes: int = 0  #: largest function body
    locals: int = 0  #: most locals declared by one function
    types: int = 0
    imports: int = 0
    exports: int = 0
    globals: int = 0
    table_elements: int = 0  #: largest table size or element entries in total
    data_bytes: int = 0
    br_table_targets: int = 0  #: largest br_table


#: Structure field -> (limit, sentence fragment with {value} and {limit}).
LIMITS: dict[str, tuple[int, str]] = {
    "nesting_depth": (MAX_NESTING_DEPTH, "nests blocks at least {value} deep{where}; the limit is {limit}"),
    "functions": (MAX_FUNCTIONS, "defines {value} functions; the limit is {limit}"),
    "body_bytes": (MAX_BODY_BYTES, "has a function body of {value} bytes{where}; the limit is {limit}"),
    "locals": (MAX_LOCALS, "declares {value} locals{where}; the limit is {limit}"),
    "types": (MAX_TYPES, "declares {value} function types; the limit is {limit}"),
    "imports": (MAX_IMPORTS, "has {value} imports; the limit is {limit}"),
    "exports": (MAX_EXPORTS, "has {value} exports; the limit is {limit}"),
    "globals": (MAX_GLOBALS, "defines {value} globals; the limit is {limit}"),
    "table_elements": (
        MAX_TABLE_ELEMENTS,
        "has a table or element segments of {value} elements; the limit is {limit}",
    ),
    "data_bytes": (MAX_DATA_BYTES, "has a data section of {value} bytes; the limit is {limit}"),
    "br_table_targets": (
        MAX_BR_TABLE_TARGETS,
        "has a br_table with {value} targets{where}; the limit is {limit}",
    ),
}


class _Over(Exception):
    """A limit is exceeded (raised early, so a huge module is not walked to its end)."""

    def __init__(self, field: str, value: int, where: str = "") -> None:
        self.field, self.value, self.where = field, value, where


class _Stop(Exception):
    """The structure cannot be decoded further; the parsers that follow will refuse it."""


def _count(payload: bytes) -> int:
    try:
        return read_u32(payload, 0)[0]
    except (IndexError, ComponentLoadError):
        raise _Stop from None


def _expr(data: bytes, pos: int, end: int, where: str, s: Structure) -> int:
    """Walk one expression (a function body or a constant expression) to its final ``end``.

    Tracks the nesting depth and br_table sizes; returns the position after the final ``end``.
    Raises _Stop at an opcode it does not know (the instrumenter refuses those).
    """
    kinds = _KINDS
    depth = 0
    while pos < end:
        op = data[pos]
        kind = kinds[op]
        pos += 1
        if kind == _NONE:
            continue
        if kind == _BLOCK or kind == _LOOP:
            pos = skip_leb(data, pos, 5)
            depth += 1
            if depth > s.nesting_depth:
                s.nesting_depth = depth
                if depth > MAX_NESTING_DEPTH:
                    raise _Over("nesting_depth", _final_depth(data, pos, end, depth), where)
        elif kind == _END:
            if depth == 0:
                return pos
            depth -= 1
        elif kind == _LEB or kind == _CALL:
            pos = skip_leb(data, pos)
        elif kind == _MEMARG:
            pos = skip_leb(data, skip_leb(data, pos, 5), 10)
        elif kind == _LEB2:
            pos = skip_leb(data, skip_leb(data, pos))
        elif kind == _BRTABLE:
            n, pos = read_u32(data, pos)
            if n + 1 > s.br_table_targets:
                s.br_table_targets = n + 1
                if n + 1 > MAX_BR_TABLE_TARGETS:
                    raise _Over("br_table_targets", n + 1, where)
            for _ in range(n + 1):
                pos = skip_leb(data, pos, 5)
        elif kind == _F64:
            pos += 8
        elif kind == _F32:
            pos += 4
        elif kind == _SELECTT:
            n, pos = read_u32(data, pos)
            pos += n
        elif kind == _PREFIX_FC:
            n_imm = _FC_IMMEDIATES.get(data[pos])
            if n_imm is None:
                raise _Stop
            pos += 1
            for _ in range(n_imm):
                pos = skip_leb(data, pos, 5)
        else:
            raise _Stop
    raise _Stop


def _final_depth(data: bytes, pos: int, end: int, depth: int) -> int:
    """Deepest nesting of the rest of a body (for the refusal's sentence), counted roughly:
    every block-opening byte after ``pos`` before the first ``end`` byte."""
    deepest = depth
    while pos < end:
        op = data[pos]
        if op in (0x02, 0x03, 0x04):
            depth += 1
            deepest = max(deepest, depth)
            pos += 2
        else:
            break
    return deepest


def _code(payload: bytes, first_index: int, s: Structure) -> None:
    count, pos = read_u32(payload, 0)
    total = len(payload)
    for i in range(count):
        where = f" (function {first_index + i})"
        size, pos = read_u32(payload, pos)
        if size > s.body_bytes:
            s.body_bytes = size
            if size > MAX_BODY_BYTES:
                raise _Over("body_bytes", size, where)
        end = pos + size
        if end > total:
            raise _Stop
        n_groups, pos = read_u32(payload, pos)
        n_locals = 0
        for _ in range(n_groups):
            n, pos = read_u32(payload, pos)
            n_locals += n
            pos += 1
            if n_locals > MAX_LOCALS:
                raise _Over("locals", n_locals, where)
        s.locals = max(s.locals, n_locals)
        try:
            _expr(payload, pos, end, where, s)
        except (_Stop, IndexError, ComponentLoadError):
            pass  # this body is refused later; the next ones are still checked
        pos = end


def _tables(payload: bytes, _: int, s: Structure) -> None:
    count, pos = read_u32(payload, 0)
    for _ in range(count):
        flags = payload[pos + 1]
        initial, pos = read_u32(payload, pos + 2)
        sizes = [initial]
        if flags & 1:
            maximum, pos = read_u32(payload, pos)
            sizes.append(maximum)
        for size in sizes:
            s.table_elements = max(s.table_elements, size)
            if size > MAX_TABLE_ELEMENTS:
                raise _Over("table_elements", size)


def _elements(payload: bytes, _: int, s: Structure) -> None:
    count, pos = read_u32(payload, 0)
    end = len(payload)
    total = 0
    for i in range(count):
        where = f" (element segment {i})"
        flags, pos = read_u32(payload, pos)
        if flags > 7:
            raise _Stop
        if flags & 2 and not flags & 1:  # explicit table index
            pos = skip_leb(payload, pos, 5)
        if not flags & 1:  # active: offset expression
            pos = _expr(payload, pos, end, where, s)
        if flags & 3:  # element kind or reference type
            pos += 1
        n, pos = read_u32(payload, pos)
        total += n
        s.table_elements = max(s.table_elements, total)
        if total > MAX_TABLE_ELEMENTS:
            raise _Over("table_elements", total)
        for _ in range(n):
            if flags & 4:
                pos = _expr(payload, pos, end, where, s)
            else:
                pos = skip_leb(payload, pos, 5)


_WALKS: dict[int, Callable[[bytes, int, Structure], None]] = {
    SEC_TABLE: _tables,
    SEC_ELEMENT: _elements,
    SEC_CODE: _code,
}


def _measure(sections: list[Section], s: Structure) -> None:
    n_func_imports = 0
    for sec in sections:
        sid = sec.id
        p = sec.payload
        if sid == SEC_TYPE:
            s.types = _count(p)
        elif sid == SEC_IMPORT:
            s.imports = _count(p)
            if s.imports <= MAX_IMPORTS:
                n_func_imports = _func_imports(p)
        elif sid == SEC_FUNCTION:
            s.functions = _count(p)
        elif sid == SEC_EXPORT:
            s.exports = _count(p)
        elif sid == SEC_GLOBAL:
            s.globals = _count(p)
        elif sid == SEC_DATA:
            s.data_bytes = len(p)
        else:
            continue
        _check(s)
    stopped = False
    for sec in sections:
        walk = _WALKS.get(sec.id)
        if walk is None:
            continue
        try:  # each section on its own: one that cannot be decoded does not hide the others
            walk(sec.payload, n_func_imports, s)
        except (_Stop, IndexError, ComponentLoadError):
            stopped = True
    if stopped:
        raise _Stop


def _func_imports(payload: bytes) -> int:
    """Number of function imports (0 if the section cannot be read: it is refused later)."""
    from edge.wasm.wasmbin import parse_imports

    try:
        return sum(1 for imp in parse_imports(payload) if imp.kind == "func")
    except ComponentLoadError:
        return 0


def _check(s: Structure) -> None:
    for f in fields(s):
        value = getattr(s, f.name)
        if value > LIMITS[f.name][0]:
            raise _Over(f.name, value)


def measure(sections: list[Section]) -> Structure:
    """The structure of a module, up to the first limit it exceeds (no exception for that)."""
    s = Structure()
    try:
        _measure(sections, s)
    except (_Over, _Stop):
        pass
    return s


def check_structure(sections: list[Section], manifest: Manifest | None = None) -> None:
    """Raise ComponentLoadError naming the first structure limit the module exceeds.

    E.g. "component 'x' nests blocks 50000 deep (function 3); the limit is 1024".
    A module whose structure cannot be decoded is left to the parsers that run next.
    """
    s = Structure()
    try:
        _measure(sections, s)
    except _Stop:
        return
    except _Over as over:
        limit, text = LIMITS[over.field]
        sentence = text.format(value=over.value, limit=limit, where=over.where)
        if manifest is None:
            raise ComponentLoadError(f"module {sentence}") from None
        raise ComponentLoadError(
            f"component '{manifest.name}' {sentence}",
            component=manifest.name,
            path=str(manifest.module),
        ) from None
