"""The host ABI contract (docs/abi.md) as data, and the load-time checks that enforce it.

:func:`check_module` refuses a module whose imports or exports do not match the contract the
manifest names, with one sentence naming the offending import or export. :func:`fix_memory`
pins the module's linear memory to ``limits.memory_pages`` (initial = maximum), so
``memory.grow`` fails inside the limit instead of letting a component take the device's RAM.
:func:`prepare_module` does both and adds gas metering: its result is what the worker loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

from edge.errors import ComponentLoadError
from edge.wasm.limits import check_structure
from edge.wasm.wasmbin import (
    SEC_EXPORT,
    SEC_FUNCTION,
    SEC_IMPORT,
    SEC_MEMORY,
    SEC_TYPE,
    Section,
    encode_u32,
    find_section,
    parse_exports,
    parse_function_section,
    parse_imports,
    parse_sections,
    parse_types,
    read_u32,
    signature_letters,
)

if TYPE_CHECKING:  # only a type here: the sandbox worker imports this module, never a manifest parser
    from edge.wasm.manifest import Manifest

#: Contract versions this host implements.
CONTRACT_VERSIONS: tuple[int, ...] = (1,)
#: Module name of every host import.
IMPORT_MODULE = "edge"

#: Host imports of contract 1: name -> wasm3 signature.
IMPORTS_V1: dict[str, str] = {
    "log": "v(iii)",
    "publish": "i(iiii)",
    "kv_get": "i(iiii)",
    "kv_put": "i(iiii)",
    "clock_ms": "I()",
    "monotonic_ns": "I()",
    "batch_len": "i()",
    "col_read": "i(iii)",
    "col_write": "i(iii)",
    "entity_id": "i(iii)",
    "device_id": "i(ii)",
    "infer": "i(iiiiii)",
}

#: Function exports the host calls: name -> wasm3 signature.
EXPORTS_V1: dict[str, str] = {
    "edge_alloc": "i(i)",
    "edge_init": "i()",
    "edge_tick": "i(iF)",
    "edge_on_message": "i(iiii)",
    "edge_health": "i()",  # optional: 0 = healthy (edge.wasm.health)
}
REQUIRED_EXPORTS: tuple[str, ...] = ("memory",)
#: A module must export at least one of these.
ENTRY_EXPORTS: tuple[str, ...] = ("edge_tick", "edge_on_message")

#: Contract version -> import table.
CONTRACTS: dict[int, dict[str, str]] = {1: IMPORTS_V1}

WASM_PAGE_BYTES = 65_536
#: Limits of the kv_put import (bytes).
KV_MAX_KEY = 128
KV_MAX_VALUE = 64 * 1024
#: ``kv_put`` result: the key or the value is too large, or the key has characters outside the rule.
KV_TOO_LARGE = -1
#: ``kv_put`` result: the put would take the component past its KV quota (limits.kv_keys/kv_bytes).
KV_OVER_QUOTA = -2
#: Bytes of a component's message kept for its NATS headers (``Edge-Component``, ``Edge-Hops``:
#: at most ~180 bytes with a 64-character name and device id). nats-server counts headers in its
#: ``max_payload`` and closes the connection of a client that sends more, which nats-py does not
#: reconnect: the device's whole connection would be lost.
PUBLISH_HEADER_ROOM = 1024
#: Largest message payload ``publish`` accepts (bytes): nats-server's default ``max_payload``
#: (1 MiB, headers included) less the room for the origin headers.
PUBLISH_MAX_BYTES = 1024 * 1024 - PUBLISH_HEADER_ROOM
#: Longest subject ``publish`` accepts (bytes).
SUBJECT_MAX_BYTES = 256
#: Longest log line kept (bytes); longer lines are cut.
LOG_MAX_BYTES = 1024
#: Longest model name the infer import looks at (bytes); longer names are not granted.
MODEL_NAME_MAX_BYTES = 64

#: Gas charged for each ``infer`` call, before the model runs (metering units; the model's own
#: time is bounded by the infer timeout, not by gas).
INFER_GAS = 1_000_000
#: Return codes of the ``infer`` import (a result >= 0 is the number of output bytes written).
INFER_DENIED = -1  # the manifest does not grant the model (counted as denied_infer)
INFER_UNKNOWN = -2  # no such model is loaded on the device (or the host has no models)
INFER_BAD_INPUT = -3  # in_len differs from the size of the model's inputs
INFER_SMALL_OUTPUT = -4  # out_cap is smaller than the model's outputs
INFER_FAILED = -5  # the model failed, or took longer than the infer timeout


@dataclass(frozen=True)
class ModuleInfo:
    """What the host learned about a module while checking it."""

    exports: frozenset[str]
    initial_pages: int
    max_pages: int | None

    @property
    def ticks(self) -> bool:
        return "edge_tick" in self.exports

    @property
    def handles_messages(self) -> bool:
        return "edge_on_message" in self.exports


def _refuse(manifest: Manifest, what: str) -> ComponentLoadError:
    return ComponentLoadError(
        f"component '{manifest.name}' {what}", component=manifest.name, path=str(manifest.module)
    )


def _memory_limits(payload: bytes, manifest: Manifest) -> tuple[int, int | None]:
    try:
        return _read_memory_limits(payload, manifest)
    except IndexError:  # found by tests/wasm/fuzz.py: it escaped as an IndexError
        raise _refuse(manifest, "has a truncated memory section") from None


def _read_memory_limits(payload: bytes, manifest: Manifest) -> tuple[int, int | None]:
    count, pos = read_u32(payload, 0)
    if count != 1:
        raise _refuse(manifest, f"defines {count} memories; exactly one is supported")
    flags = payload[pos]
    if flags not in (0, 1):
        raise _refuse(
            manifest,
            f"uses memory flags 0x{flags:02x} (shared or 64-bit memory), "
            "which the host does not support",
        )
    initial, pos = read_u32(payload, pos + 1)
    maximum = None
    if flags == 1:
        maximum, pos = read_u32(payload, pos)
    return initial, maximum


def check_module(wasm: bytes, manifest: Manifest) -> ModuleInfo:
    """Check ``wasm`` (uninstrumented) against the contract named by ``manifest``.

    Raises ComponentLoadError with a sentence naming the import or export that is wrong, e.g.
    "component 'x' imports edge.foo, which contract 1 does not provide".
    """
    table = CONTRACTS.get(manifest.contract)
    if table is None:
        raise _refuse(
            manifest,
            f"declares contract {manifest.contract}, which this host does "
            f"not provide (supported: {list(CONTRACT_VERSIONS)})",
        )
    try:
        sections = parse_sections(wasm)
    except ComponentLoadError as err:
        raise _refuse(manifest, f"is not a valid module: {err.message}") from None
    check_structure(sections, manifest)
    c = manifest.contract
    sec = find_section(sections, SEC_TYPE)
    types = parse_types(sec.payload) if sec else []
    sec = find_section(sections, SEC_IMPORT)
    imports = parse_imports(sec.payload) if sec else []
    n_func_imports = 0
    for imp in imports:
        full = f"{imp.module}.{imp.name}"
        if imp.kind != "func":
            raise _refuse(
                manifest,
                f"imports {imp.kind} {full}; contract {c} provides only "
                f"functions of module '{IMPORT_MODULE}'",
            )
        n_func_imports += 1
        if imp.module != IMPORT_MODULE:
            raise _refuse(
                manifest,
                f"imports {full}, which contract {c} does not provide "
                f"(only module '{IMPORT_MODULE}')",
            )
        want = table.get(imp.name)
        if want is None:
            raise _refuse(manifest, f"imports {full}, which contract {c} does not provide")
        assert imp.type_index is not None
        if imp.type_index >= len(types):
            raise _refuse(manifest, f"import {full} refers to a missing type")
        got = signature_letters(types[imp.type_index], f"import {full}")
        if got != want:
            raise _refuse(
                manifest, f"imports {full} with signature {got}; contract {c} defines it as {want}"
            )

    sec = find_section(sections, SEC_FUNCTION)
    func_types = parse_function_section(sec.payload) if sec else []
    sec = find_section(sections, SEC_EXPORT)
    exports = parse_exports(sec.payload) if sec else []
    names: set[str] = set()
    for exp in exports:
        names.add(exp.name)
        if exp.name == "memory" and exp.kind != "memory":
            raise _refuse(manifest, "exports 'memory' but it is not a memory")
        want = EXPORTS_V1.get(exp.name)
        if want is None:
            continue
        if exp.kind != "func":
            raise _refuse(
                manifest,
                f"exports {exp.name} as a {exp.kind}; contract {c} expects a function {want}",
            )
        local = exp.index - n_func_imports
        if local < 0:
            raise _refuse(manifest, f"exports an imported function as {exp.name}")
        if local >= len(func_types) or func_types[local] >= len(types):
            raise _refuse(manifest, f"export {exp.name} refers to a missing function")
        got = signature_letters(types[func_types[local]], f"export {exp.name}")
        if got != want:
            raise _refuse(
                manifest,
                f"exports {exp.name} with signature {got}; contract {c} defines it as {want}",
            )
    for req in REQUIRED_EXPORTS:
        if req not in names:
            raise _refuse(manifest, f"does not export '{req}', which contract {c} requires")
    if not names.intersection(ENTRY_EXPORTS):
        raise _refuse(manifest, "exports neither edge_tick nor edge_on_message")
    if "edge_on_message" in names and "edge_alloc" not in names:
        raise _refuse(manifest, "exports edge_on_message but not edge_alloc")
    if manifest.tick_hz > 0 and "edge_tick" not in names:
        raise _refuse(
            manifest, f"has run.tick_hz = {manifest.tick_hz:g} but does not export edge_tick"
        )
    if manifest.subscribe and "edge_on_message" not in names:
        raise _refuse(manifest, "subscribes to subjects but does not export edge_on_message")

    mem = find_section(sections, SEC_MEMORY)
    if mem is None:
        raise _refuse(manifest, "defines no linear memory")
    initial, maximum = _memory_limits(mem.payload, manifest)
    if initial > manifest.limits.memory_pages:
        raise _refuse(
            manifest,
            f"needs {initial} memory pages at start, more than "
            f"limits.memory_pages = {manifest.limits.memory_pages}",
        )
    return ModuleInfo(frozenset(names), initial, maximum)


def fix_memory(wasm: bytes, manifest: Manifest) -> bytes:
    """Return ``wasm`` with its memory pinned: initial = maximum = the effective page limit.

    The effective limit is ``limits.memory_pages``, or the module's own declared maximum if lower.
    A fixed-size memory means ``memory.grow`` beyond it returns -1 (wasm3 honours the maximum), and
    the host's view of linear memory never moves, so the worker can keep one memoryview per
    instance instead of asking wasm3 for a new one on every host call.
    """
    sections = parse_sections(wasm)
    mem = find_section(sections, SEC_MEMORY)
    if mem is None:
        raise _refuse(manifest, "defines no linear memory")
    initial, maximum = _memory_limits(mem.payload, manifest)
    pages = manifest.limits.memory_pages
    if maximum is not None:
        pages = min(pages, maximum)
    pages = max(pages, initial, 1)
    payload = b"\x01\x01" + encode_u32(pages) + encode_u32(pages)
    out = [bytes(wasm[:8])]
    for sec in sections:
        out.append(Section(sec.id, payload).encode() if sec.id == SEC_MEMORY else sec.encode())
    return b"".join(out)


def prepare_module(wasm: bytes, manifest: Manifest) -> tuple[bytes, ModuleInfo]:
    """Check, pin memory and instrument: returns the bytes the worker loads and the module info."""
    from edge.wasm.instrument import instrument

    info = check_module(wasm, manifest)
    fixed = fix_memory(wasm, manifest)
    try:
        metered = instrument(fixed, component=manifest.name)
    except ComponentLoadError as err:
        raise ComponentLoadError(
            err.message, component=manifest.name, path=str(manifest.module)
        ) from None
    return metered, info
