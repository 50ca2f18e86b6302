"""Helpers shared by the sandbox tests: compile real components, write manifests, record the
host callbacks."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edge.errors import SandboxError
from edge.wasm.manifest import Manifest, load_manifest
from edge.wasm.pool import SandboxPool

ROOT = Path(__file__).resolve().parents[2]
TEST_COMPONENTS = Path(__file__).resolve().parent / "components"
DEVICE = "dev1"


def build_module() -> ModuleType:
    """Import components/build.py (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("edge_components_build",
                                                  ROOT / "components" / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compile_test_components(out: Path) -> dict[str, Path]:
    """Compile every tests/wasm/components/*.c into ``out``; name -> module path."""
    build = build_module()
    return {src.stem: build.compile_wasm([src], out / f"{src.stem}.wasm")
            for src in sorted(TEST_COMPONENTS.glob("*.c"))}


def write_manifest(directory: Path, name: str, module: Path, *, read: tuple[str, ...] = (),
                   write: tuple[str, ...] = (), tick_hz: float = 0.0,
                   subscribe: tuple[str, ...] = (), publish: tuple[str, ...] = (),
                   gas: int | None = None, memory_pages: int | None = None,
                   publish_per_call: int | None = None, version: str = "1.0.0",
                   receive_own: bool | None = None,
                   limits: dict[str, float] | None = None) -> Path:
    """Write ``directory/name.toml`` and return its path (``limits``: more ``[limits]`` keys)."""
    def arr(items: tuple[str, ...]) -> str:
        return "[" + ", ".join(f'"{i}"' for i in items) + "]"

    lines = [f'name = "{name}"', f'version = "{version}"', "contract = 1",
             f'module = "{module}"', "[query]", f"read = {arr(read)}", f"write = {arr(write)}",
             "[run]", f"tick_hz = {tick_hz}", f"subscribe = {arr(subscribe)}",
             f"publish = {arr(publish)}"]
    if receive_own is not None:
        lines.append(f"receive_own = {str(receive_own).lower()}")
    lines.append("[limits]")
    lines += [f"{k} = {v}" for k, v in (limits or {}).items()]
    if gas is not None:
        lines.append(f"gas = {gas}")
    if memory_pages is not None:
        lines.append(f"memory_pages = {memory_pages}")
    if publish_per_call is not None:
        lines.append(f"publish_per_call = {publish_per_call}")
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Recorder:
    """HostCallbacks that remembers everything."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, bytes]] = []
        self.kv: dict[tuple[str, str], bytes] = {}
        self.faults: list[tuple[str, SandboxError]] = []
        self.limits: list[tuple[str, str, int]] = []  # (component, limit, dropped) reports
        self.hops: list[int] = []  # hop count of each publish, in order

    async def publish(self, component: str, subject: str, data: bytes,
                      hops: int = 1) -> None:
        self.published.append((component, subject, data))
        self.hops.append(hops)

    async def kv_put(self, component: str, key: str, value: bytes, hops: int = 1) -> None:
        self.kv[(component, key)] = value

    def on_limit(self, component: str, limit: str, dropped: int) -> None:
        self.limits.append((component, limit, dropped))

    def on_fault(self, component: str, fault: SandboxError) -> None:
        self.faults.append((component, fault))

    def reasons(self, component: str) -> list[str | None]:
        return [f.reason for c, f in self.faults if c == component]


async def wait_for(pred: Callable[[], Any], timeout: float = 20.0, step: float = 0.01) -> Any:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` seconds (20 s by
    default: many waits include a sandbox worker's start, a new Python process, which takes
    several seconds on a loaded 2-core machine)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)


def demo(name: str) -> Manifest:
    return load_manifest(ROOT / "components" / name / "manifest.toml", DEVICE)


def manifest(tmp: Path, name: str, module: Path, **kw: object) -> Manifest:
    return load_manifest(write_manifest(tmp, name, module, **kw), DEVICE)  # type: ignore[arg-type]


def entry(p: SandboxPool, name: str) -> dict[str, object]:
    return next(s for s in p.status() if s["name"] == name)


async def physics_tick(p: SandboxPool, n: int = 4) -> np.ndarray:
    cols = p.batch("physics", n)
    for c in cols[:3]:
        c[:] = 0.0
    for c in cols[3:]:
        c[:] = 1.0
    assert await p.tick("physics", n, 0.5)
    return np.array(cols[0])


def with_start(wasm: bytes, export: str) -> bytes:
    """``wasm`` with a ``start`` section naming the function it exports as ``export`` (C cannot
    declare a start function)."""
    from edge.wasm.wasmbin import (
        SEC_CUSTOM,
        SEC_EXPORT,
        SEC_START,
        SECTION_ORDER,
        Section,
        encode_u32,
        find_section,
        parse_exports,
        parse_sections,
    )

    sections = parse_sections(wasm)
    exports = find_section(sections, SEC_EXPORT)
    assert exports is not None
    index = next(e.index for e in parse_exports(exports.payload) if e.name == export)
    start = Section(SEC_START, encode_u32(index))
    out: list[Section] = []
    for sec in sections:
        if (sec.id != SEC_CUSTOM and start not in out
                and SECTION_ORDER[sec.id] > SECTION_ORDER[SEC_START]):
            out.append(start)
        out.append(sec)
    return wasm[:8] + b"".join(s.encode() for s in out)
