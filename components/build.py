"""Build every component under components/ into components/build/<name>.wasm.

Usage: ``python components/build.py [--force] [NAME ...]``

A component is a directory with a ``manifest.toml`` and its sources in one language:

* **C**: ``*.c`` (compiled together) with the header-only SDK ``sdk/edge.h``; needs clang with
  the wasm32 target and wasm-ld (Debian: ``apt-get install clang lld``).
* **Rust**: ``<name>.rs`` (the crate root; other ``.rs`` files of the directory are its
  modules) with the SDK crate ``sdk/rust/edge.rs``, built with plain ``rustc`` (no cargo, no
  registry) for ``wasm32-unknown-unknown``; needs a rustc with that target's standard library
  (Debian: ``apt-get install rustc libstd-rust-dev-wasm32``). ``$EDGE_RUSTC`` names another.
* **Zig**: ``<name>.zig`` (other ``.zig`` files of the directory are imported by it) with the
  SDK module ``sdk/zig/edge.zig``, built for ``wasm32-freestanding`` by the Zig of the PyPI
  package ``ziglang`` (the ``sdk`` extra); ``$EDGE_ZIG`` names another ``zig``.

Every module is linked with a 64 KiB stack (``STACK_BYTES``): the linker puts the stack in
linear memory, where it counts against ``limits.memory_pages`` (rust-lld's own default, 1 MiB,
would need 17 pages). The build is incremental: a module is rebuilt only when one of its
sources, its SDK or this script is newer than the output.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent
SDK = ROOT / "sdk"
RUST_SDK = SDK / "rust" / "edge.rs"
ZIG_SDK = SDK / "zig" / "edge.zig"
OUT = ROOT / "build"
#: Bytes of stack the linker reserves at the start of linear memory (clang's wasm-ld default).
STACK_BYTES = 64 * 1024
CFLAGS = ["--target=wasm32", "-O2", "-nostdlib", "-Wall", "-Wextra", "-Werror",
          "-Wl,--no-entry", "-Wl,--export-dynamic", f"-Wl,-z,stack-size={STACK_BYTES}"]
RUST_TARGET = "wasm32-unknown-unknown"
RUSTFLAGS = ["--edition", "2021", "--target", RUST_TARGET, "-C", "opt-level=3",
             "-C", "panic=abort", "-D", "warnings"]
#: The Zig release the Zig SDK is written for (Zig changes its language between releases).
ZIG_VERSION = "0.17"
ZIG_INSTALL = "pip install 'ziglang==0.17.0' (or: pip install -e '.[sdk]')"
RUST_INSTALL = "apt-get install rustc libstd-rust-dev-wasm32"
LANGUAGES = {".c": "c", ".rs": "rust", ".zig": "zig"}


class BuildError(Exception):
    """The toolchain is missing or a compile failed."""


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"compiling {what} failed:\n{(proc.stderr or proc.stdout).strip()}")


# ---- C ----------------------------------------------------------------------------------------

def find_clang() -> str:
    """Path of a clang that can link wasm32 (it needs wasm-ld on PATH)."""
    clang = shutil.which("clang")
    if clang is None or shutil.which("wasm-ld") is None:
        missing = "clang" if clang is None else "wasm-ld"
        raise BuildError(f"{missing} not found: install the toolchain with "
                         "'apt-get install clang lld'")
    return clang


def compile_wasm(sources: list[Path], out: Path, *, include: Path = SDK,
                 clang: str | None = None) -> Path:
    """Compile C ``sources`` into the wasm module ``out`` (always; no mtime check)."""
    clang = clang or find_clang()
    out.parent.mkdir(parents=True, exist_ok=True)
    _run([clang, *CFLAGS, f"-I{include}", "-o", str(out), *map(str, sources)], out.name)
    return out


# ---- Rust -------------------------------------------------------------------------------------

def _has_wasm_std(rustc: str) -> bool:
    proc = subprocess.run([rustc, "--print", "target-libdir", "--target", RUST_TARGET],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return False
    libdir = Path(proc.stdout.strip())
    return libdir.is_dir() and any(libdir.glob("libcore-*.rlib"))


def find_rustc() -> str:
    """A rustc that has the wasm32-unknown-unknown standard library: ``$EDGE_RUSTC``, then
    Debian's /usr/bin/rustc, then the first on PATH (a rustup toolchain often has no wasm
    target)."""
    env = os.environ.get("EDGE_RUSTC")
    candidates = [env] if env else ["/usr/bin/rustc", shutil.which("rustc")]
    tried = []
    for c in candidates:
        if c and Path(c).exists():
            if _has_wasm_std(c):
                return c
            tried.append(c)
    found = f" ({', '.join(tried)} has no {RUST_TARGET} standard library)" if tried else ""
    raise BuildError(f"no rustc for {RUST_TARGET}{found}: install it with '{RUST_INSTALL}'")


def rust_sdk_lib(out_dir: Path, *, rustc: str | None = None) -> Path:
    """Build the SDK crate ``edge`` into ``out_dir/libedge.rlib`` (if it is older than the SDK)."""
    lib = out_dir / "libedge.rlib"
    newest = max(RUST_SDK.stat().st_mtime, Path(__file__).stat().st_mtime)
    if lib.exists() and lib.stat().st_mtime >= newest:
        return lib
    rustc = rustc or find_rustc()
    out_dir.mkdir(parents=True, exist_ok=True)
    _run([rustc, *RUSTFLAGS, "--crate-type", "rlib", "--crate-name", "edge",
          "-o", str(lib), str(RUST_SDK)], "the Rust SDK")
    return lib


def compile_rust(root: Path, out: Path, *, rustc: str | None = None,
                 stack_bytes: int | None = STACK_BYTES) -> Path:
    """Compile the Rust crate rooted at ``root`` into the wasm module ``out`` (always).
    ``stack_bytes=None`` keeps the linker's default stack (for measuring it)."""
    rustc = rustc or find_rustc()
    lib = rust_sdk_lib(OUT / "rust", rustc=rustc)
    out.parent.mkdir(parents=True, exist_ok=True)
    link = [] if stack_bytes is None else ["-C", f"link-arg=-zstack-size={stack_bytes}"]
    _run([rustc, *RUSTFLAGS, "--crate-type", "cdylib", *link, "-C", "strip=symbols",
          "--extern", f"edge={lib}", "-L", str(lib.parent),
          "-o", str(out), str(root)], out.name)
    return out


# ---- Zig --------------------------------------------------------------------------------------

def find_zig() -> list[str]:
    """The command that runs zig: ``$EDGE_ZIG``, else ``python -m ziglang``; checks its version."""
    env = os.environ.get("EDGE_ZIG")
    if env:
        cmd = [env]
    elif importlib.util.find_spec("ziglang") is not None:
        cmd = [sys.executable, "-m", "ziglang"]
    else:
        raise BuildError(f"zig not found (the Python package 'ziglang' is not installed in "
                         f"{sys.prefix}): install it with '{ZIG_INSTALL}'")
    proc = subprocess.run([*cmd, "version"], capture_output=True, text=True, check=False)
    version = proc.stdout.strip()
    if proc.returncode != 0 or not (version == ZIG_VERSION or version.startswith(ZIG_VERSION + ".")):
        raise BuildError(f"zig {version or '(unknown version)'} found, but the Zig SDK is "
                         f"written for zig {ZIG_VERSION}: {ZIG_INSTALL}")
    return cmd


def compile_zig(root: Path, out: Path, *, zig: list[str] | None = None) -> Path:
    """Compile the Zig root file ``root`` into the wasm module ``out`` (always)."""
    zig = zig or find_zig()
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = OUT / "zig-cache"
    _run([*zig, "build-exe", "-target", "wasm32-freestanding", "-mcpu", "mvp", "-O", "ReleaseSafe",
          "-fno-entry", "-rdynamic", "--stack", str(STACK_BYTES), "-fstrip",
          "--cache-dir", str(cache), "--global-cache-dir", str(cache),
          "--dep", "edge", f"-Mroot={root}", f"-Medge={ZIG_SDK}",
          f"-femit-bin={out}"], out.name)
    return out


# ---- components -------------------------------------------------------------------------------

class Sources(NamedTuple):
    """A component's sources: its language, every source file, and the file the build starts at."""

    language: str
    files: list[Path]
    root: Path


def component_dirs(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "manifest.toml").is_file())


def sources_of(d: Path) -> Sources:
    """The sources of component directory ``d``; raises BuildError if there are none, or
    sources of more than one language, or no root file (``<name>.rs`` / ``<name>.zig``)."""
    by_lang: dict[str, list[Path]] = {}
    for p in sorted(d.iterdir()):
        lang = LANGUAGES.get(p.suffix)
        if lang is not None and p.is_file():
            by_lang.setdefault(lang, []).append(p)
    if not by_lang:
        raise BuildError(f"component {d.name}: no .c, .rs or .zig source in {d}")
    if len(by_lang) > 1:
        raise BuildError(f"component {d.name}: sources in more than one language "
                         f"({', '.join(sorted(by_lang))}) in {d}")
    (lang, files), = by_lang.items()
    if lang == "c":
        return Sources(lang, files, files[0])
    root = d / f"{d.name}{'.rs' if lang == 'rust' else '.zig'}"
    if root not in files:
        raise BuildError(f"component {d.name}: a {lang} component's root file must be "
                         f"{root.name} (found {', '.join(p.name for p in files)})")
    return Sources(lang, files, root)


def sdk_files(language: str) -> list[Path]:
    if language == "c":
        return sorted(SDK.glob("*.h"))
    return [RUST_SDK if language == "rust" else ZIG_SDK]


def build(names: list[str] | None = None, *, force: bool = False) -> list[Path]:
    """Build the named components (all if None); return the modules that were (re)built."""
    built: list[Path] = []
    clang: str | None = None
    rustc: str | None = None
    zig: list[str] | None = None
    for d in component_dirs():
        name = d.name
        if names and name not in names:
            continue
        src = sources_of(d)
        out = OUT / f"{name}.wasm"
        deps = [*src.files, *sdk_files(src.language), Path(__file__)]
        if not force and out.exists():
            newest = max(p.stat().st_mtime for p in deps)
            if out.stat().st_mtime >= newest:
                continue
        if src.language == "c":
            clang = clang or find_clang()
            compile_wasm(src.files, out, clang=clang)
        elif src.language == "rust":
            rustc = rustc or find_rustc()
            compile_rust(src.root, out, rustc=rustc)
        else:
            zig = zig or find_zig()
            compile_zig(src.root, out, zig=zig)
        built.append(out)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="components to build (default: all)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        built = build(args.names or None, force=args.force)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for out in built:
        print(f"built {out.relative_to(ROOT.parent)}")
    if not built:
        print("components are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
