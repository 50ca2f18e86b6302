"""Build every component under components/ into components/build/<name>.wasm.

Usage: ``python components/build.py [--force] [NAME ...]``

A component is a directory with a ``manifest.toml`` and ``<name>.c`` (plus any other ``.c``
files, compiled together). The build is incremental: a module is rebuilt only when one of its
sources, the SDK header or this script is newer than the output. Needs clang with the wasm32
target and wasm-ld (Debian/Ubuntu: ``apt-get install clang lld``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SDK = ROOT / "sdk"
OUT = ROOT / "build"
CFLAGS = ["--target=wasm32", "-O2", "-nostdlib", "-Wall", "-Wextra", "-Werror",
          "-Wl,--no-entry", "-Wl,--export-dynamic"]


class BuildError(Exception):
    """The toolchain is missing or a compile failed."""


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
    cmd = [clang, *CFLAGS, f"-I{include}", "-o", str(out), *map(str, sources)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"compiling {out.name} failed:\n{proc.stderr.strip()}")
    return out


def component_dirs(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "manifest.toml").is_file())


def build(names: list[str] | None = None, *, force: bool = False) -> list[Path]:
    """Build the named components (all if None); return the modules that were (re)built."""
    built: list[Path] = []
    clang: str | None = None
    for d in component_dirs():
        name = d.name
        if names and name not in names:
            continue
        sources = sorted(d.glob("*.c"))
        if not sources:
            raise BuildError(f"component {name}: no .c source in {d}")
        out = OUT / f"{name}.wasm"
        deps = [*sources, *SDK.glob("*.h"), Path(__file__)]
        if not force and out.exists():
            newest = max(p.stat().st_mtime for p in deps)
            if out.stat().st_mtime >= newest:
                continue
        clang = clang or find_clang()
        compile_wasm(sources, out, clang=clang)
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
