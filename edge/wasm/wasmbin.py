"""Minimal reader/writer for the WebAssembly core binary format (module level only).

It splits a module into sections and decodes the parts the runtime needs before it hands a module
to wasm3: the type, import, function and export sections. Function bodies are decoded by
:mod:`edge.wasm.instrument`. Every malformed input raises
:class:`~edge.errors.ComponentLoadError` with one readable sentence; nothing here executes code.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.errors import ComponentLoadError

MAGIC = b"\x00asm"
VERSION_1 = b"\x01\x00\x00\x00"
#: Header of a component-model binary (layer 1), which is not a core module.
COMPONENT_VERSION_PREFIX = b"\x0d\x00"

SEC_CUSTOM = 0
SEC_TYPE = 1
SEC_IMPORT = 2
SEC_FUNCTION = 3
SEC_TABLE = 4
SEC_MEMORY = 5
SEC_GLOBAL = 6
SEC_EXPORT = 7
SEC_START = 8
SEC_ELEMENT = 9
SEC_CODE = 10
SEC_DATA = 11
SEC_DATACOUNT = 12
SEC_TAG = 13

SECTION_NAMES: dict[int, str] = {
    SEC_CUSTOM: "custom",
    SEC_TYPE: "type",
    SEC_IMPORT: "import",
    SEC_FUNCTION: "function",
    SEC_TABLE: "table",
    SEC_MEMORY: "memory",
    SEC_GLOBAL: "global",
    SEC_EXPORT: "export",
    SEC_START: "start",
    SEC_ELEMENT: "element",
    SEC_CODE: "code",
    SEC_DATA: "data",
    SEC_DATACOUNT: "datacount",
    SEC_TAG: "tag",
}

#: Position of each known section id in the order the binary format requires.
SECTION_ORDER: dict[int, int] = {
    SEC_TYPE: 1,
    SEC_IMPORT: 2,
    SEC_FUNCTION: 3,
    SEC_TABLE: 4,
    SEC_MEMORY: 5,
    SEC_TAG: 6,
    SEC_GLOBAL: 7,
    SEC_EXPORT: 8,
    SEC_START: 9,
    SEC_ELEMENT: 10,
    SEC_DATACOUNT: 11,
    SEC_CODE: 12,
    SEC_DATA: 13,
}

#: Single-byte value types (numeric, vector, funcref, externref) and their wasm3 signature letter.
VALTYPE_LETTERS: dict[int, str] = {0x7F: "i", 0x7E: "I", 0x7D: "f", 0x7C: "F"}
VALTYPES: frozenset[int] = frozenset({0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F})
REFTYPES: frozenset[int] = frozenset({0x70, 0x6F})

IMPORT_KINDS: dict[int, str] = {0: "func", 1: "table", 2: "memory", 3: "global"}
EXPORT_KINDS: dict[int, str] = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}

#: Largest u32 a LEB128 may encode.
U32_MAX = 0xFFFF_FFFF


def fail(message: str) -> ComponentLoadError:
    """Build the error for a module that is not valid (raise the result)."""
    return ComponentLoadError(f"invalid wasm module: {message}")


# ---------------------------------------------------------------------------------------------
# LEB128


def read_u32(data: bytes, pos: int) -> tuple[int, int]:
    """Decode an unsigned LEB128 u32 at ``pos``; return (value, position after it)."""
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift >= 35:
            raise fail(f"LEB128 integer longer than 5 bytes ending at byte {pos}")
    if result > U32_MAX:
        raise fail(f"LEB128 integer {result} does not fit in 32 bits (byte {pos})")
    return result, pos


def skip_leb(data: bytes, pos: int, max_bytes: int = 10) -> int:
    """Return the position after the (signed or unsigned) LEB128 integer at ``pos``."""
    start = pos
    while data[pos] & 0x80:
        pos += 1
        if pos - start >= max_bytes:
            raise fail(f"LEB128 integer longer than {max_bytes} bytes at byte {start}")
    return pos + 1


def encode_u32(value: int) -> bytes:
    """Encode ``value`` (0 <= value <= 2**32-1) as unsigned LEB128."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_s32(value: int) -> bytes:
    """Encode ``value`` as signed LEB128 (the immediate of ``i32.const``)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def read_name(data: bytes, pos: int) -> tuple[str, int]:
    """Decode a length-prefixed UTF-8 name; return (name, position after it)."""
    length, pos = read_u32(data, pos)
    end = pos + length
    if end > len(data):
        raise fail(f"name of {length} bytes at byte {pos} runs past the end of its section")
    try:
        return data[pos:end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise fail(f"name at byte {pos} is not valid UTF-8") from None


# ---------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True, slots=True)
class Section:
    """One section: its id, its payload (without id and size) and, for custom sections, its name."""

    id: int
    payload: bytes
    name: str | None = None

    def encode(self) -> bytes:
        """Serialise the section (id, size, payload)."""
        return bytes((self.id,)) + encode_u32(len(self.payload)) + self.payload


def parse_sections(wasm: bytes) -> list[Section]:
    """Split a core module into its sections, checking the header, sizes and section order."""
    if not isinstance(wasm, (bytes, bytearray, memoryview)):
        raise fail(f"expected bytes, got {type(wasm).__name__}")
    data = bytes(wasm)
    if len(data) < 8 or data[:4] != MAGIC:
        raise fail("it does not start with the magic bytes '\\0asm' (not a WebAssembly binary)")
    if data[4:8] != VERSION_1:
        if data[4:6] == COMPONENT_VERSION_PREFIX:
            raise fail("it is a component-model binary; only core wasm modules are supported")
        raise fail(f"unsupported binary version {data[4:8].hex()} (expected 01000000)")
    sections: list[Section] = []
    pos = 8
    last_rank = 0
    size_total = len(data)
    while pos < size_total:
        sec_id = data[pos]
        try:
            size, body = read_u32(data, pos + 1)
        except IndexError:
            raise fail(f"truncated section header at byte {pos}") from None
        end = body + size
        if end > size_total:
            raise fail(
                f"{SECTION_NAMES.get(sec_id, 'unknown')} section at byte {pos} declares "
                f"{size} bytes but only {size_total - body} remain (truncated module)"
            )
        payload = data[body:end]
        if sec_id == SEC_CUSTOM:
            try:
                name, _ = read_name(payload, 0)
            except IndexError:
                raise fail(f"custom section at byte {pos} has a truncated name") from None
            sections.append(Section(sec_id, payload, name))
        else:
            rank = SECTION_ORDER.get(sec_id)
            if rank is None:
                raise fail(f"unknown section id {sec_id} at byte {pos}")
            if rank <= last_rank:
                raise fail(
                    f"{SECTION_NAMES[sec_id]} section at byte {pos} is duplicated or out of order"
                )
            last_rank = rank
            sections.append(Section(sec_id, payload))
        pos = end
    return sections


def find_section(sections: list[Section], sec_id: int) -> Section | None:
    """Return the (only) non-custom section with ``sec_id``, or None."""
    for sec in sections:
        if sec.id == sec_id:
            return sec
    return None


def check_consumed(sec_id: int, pos: int, payload: bytes) -> None:
    """Raise unless a section parser consumed its payload exactly."""
    if pos != len(payload):
        raise fail(
            f"{SECTION_NAMES[sec_id]} section has {len(payload) - pos} unexpected bytes at its end"
        )


# ---------------------------------------------------------------------------------------------
# Type, import, function and export sections


FuncType = tuple[bytes, bytes]  # (param valtypes, result valtypes), one byte per value type


def _read_valtypes(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    count, pos = read_u32(data, pos)
    end = pos + count
    if end > len(data):
        raise IndexError
    types = data[pos:end]
    for t in types:
        if t not in VALTYPES:
            raise fail(f"{what} uses value type 0x{t:02x}, which is not supported")
    return types, end


def parse_types(payload: bytes) -> list[FuncType]:
    """Decode the type section into (params, results) pairs."""
    try:
        count, pos = read_u32(payload, 0)
        types: list[FuncType] = []
        for i in range(count):
            form = payload[pos]
            if form != 0x60:
                raise fail(
                    f"type {i} has form 0x{form:02x}; only function types (0x60) are supported"
                )
            params, pos = _read_valtypes(payload, pos + 1, f"type {i}")
            results, pos = _read_valtypes(payload, pos, f"type {i}")
            types.append((params, results))
    except IndexError:
        raise fail("truncated type section") from None
    check_consumed(SEC_TYPE, pos, payload)
    return types


@dataclass(frozen=True, slots=True)
class Import:
    """One import entry. ``type_index`` is set for function imports only."""

    module: str
    name: str
    kind: str
    type_index: int | None = None


def _skip_limits(data: bytes, pos: int) -> int:
    flags = data[pos]
    if flags > 0x07:
        raise fail(f"limits flag 0x{flags:02x} at byte {pos} is not valid")
    pos = skip_leb(data, pos + 1)
    if flags & 1:
        pos = skip_leb(data, pos)
    return pos


def parse_imports(payload: bytes) -> list[Import]:
    """Decode the import section."""
    imports: list[Import] = []
    try:
        count, pos = read_u32(payload, 0)
        for _ in range(count):
            module, pos = read_name(payload, pos)
            name, pos = read_name(payload, pos)
            kind_byte = payload[pos]
            pos += 1
            kind = IMPORT_KINDS.get(kind_byte)
            type_index: int | None = None
            if kind == "func":
                type_index, pos = read_u32(payload, pos)
            elif kind == "table":
                if payload[pos] not in REFTYPES:
                    raise fail(f"import {module}.{name} has an unsupported table element type")
                pos = _skip_limits(payload, pos + 1)
            elif kind == "memory":
                pos = _skip_limits(payload, pos)
            elif kind == "global":
                if payload[pos] not in VALTYPES or payload[pos + 1] > 1:
                    raise fail(f"import {module}.{name} has an invalid global type")
                pos += 2
            else:
                raise fail(
                    f"import {module}.{name} has kind 0x{kind_byte:02x}, which is not supported "
                    "(only func, table, memory and global)"
                )
            imports.append(Import(module, name, kind, type_index))
    except IndexError:
        raise fail("truncated import section") from None
    check_consumed(SEC_IMPORT, pos, payload)
    return imports


def parse_function_section(payload: bytes) -> list[int]:
    """Decode the function section: the type index of each defined function."""
    try:
        count, pos = read_u32(payload, 0)
        out: list[int] = []
        for _ in range(count):
            idx, pos = read_u32(payload, pos)
            out.append(idx)
    except IndexError:
        raise fail("truncated function section") from None
    check_consumed(SEC_FUNCTION, pos, payload)
    return out


@dataclass(frozen=True, slots=True)
class Export:
    """One export entry; ``raw_name`` is the length-prefixed name exactly as encoded."""

    name: str
    kind: str
    index: int
    raw_name: bytes


def parse_exports(payload: bytes) -> list[Export]:
    """Decode the export section."""
    exports: list[Export] = []
    try:
        count, pos = read_u32(payload, 0)
        for _ in range(count):
            start = pos
            name, pos = read_name(payload, pos)
            raw_name = payload[start:pos]
            kind_byte = payload[pos]
            kind = EXPORT_KINDS.get(kind_byte)
            if kind is None:
                raise fail(f"export '{name}' has unknown kind 0x{kind_byte:02x}")
            index, pos = read_u32(payload, pos + 1)
            exports.append(Export(name, kind, index, raw_name))
    except IndexError:
        raise fail("truncated export section") from None
    check_consumed(SEC_EXPORT, pos, payload)
    return exports


# ---------------------------------------------------------------------------------------------
# Public queries


def _imports_of(wasm: bytes) -> tuple[list[Section], list[Import]]:
    sections = parse_sections(wasm)
    sec = find_section(sections, SEC_IMPORT)
    return sections, (parse_imports(sec.payload) if sec else [])


def module_imports(wasm: bytes) -> list[tuple[str, str, str]]:
    """Return every import as (module, name, kind), kind in func/table/memory/global."""
    _, imports = _imports_of(wasm)
    return [(imp.module, imp.name, imp.kind) for imp in imports]


def module_exports(wasm: bytes) -> list[tuple[str, str]]:
    """Return every export as (name, kind), kind in func/table/memory/global/tag."""
    sec = find_section(parse_sections(wasm), SEC_EXPORT)
    return [(exp.name, exp.kind) for exp in parse_exports(sec.payload)] if sec else []


def signature_letters(functype: FuncType, what: str) -> str:
    """Format a function type in wasm3 letters, e.g. ``i(iI)``; raise if wasm3 cannot link it."""
    params, results = functype
    if len(results) > 1:
        raise fail(f"{what} returns {len(results)} values; host functions may return at most one")
    letters = []
    for t in results + params:
        letter = VALTYPE_LETTERS.get(t)
        if letter is None:
            raise fail(f"{what} uses value type 0x{t:02x}, which a host function cannot take")
        letters.append(letter)
    ret = letters[0] if results else "v"
    return ret + "(" + "".join(letters[len(results) :]) + ")"


def func_import_signatures(wasm: bytes) -> dict[tuple[str, str], str]:
    """Map each imported function (module, name) to its wasm3 signature, e.g. ``v(iii)``."""
    sections, imports = _imports_of(wasm)
    type_sec = find_section(sections, SEC_TYPE)
    types = parse_types(type_sec.payload) if type_sec else []
    out: dict[tuple[str, str], str] = {}
    for imp in imports:
        if imp.type_index is None:
            continue
        what = f"import {imp.module}.{imp.name}"
        if imp.type_index >= len(types):
            raise fail(f"{what} refers to type {imp.type_index}, which does not exist")
        out[(imp.module, imp.name)] = signature_letters(types[imp.type_index], what)
    return out
