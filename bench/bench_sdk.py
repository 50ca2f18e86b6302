"""The SDKs' cost: one system written in C, Rust and Zig, ticked through the real sandbox.

``python bench/bench_sdk.py [--quick] [--entities N] [--rounds R]``

The system is the README's `drift` (``position.x += velocity.x * dt`` over a batch, one column
read twice and written once), compiled from the README's three code blocks by
components/build.py and loaded side by side into one pool with one worker. Each round ticks
every variant ``--inner`` times over the same batch size, interleaved (bench/harness.py); the
ratios are Rust / C and Zig / C per tick. What differs is only the code each compiler
generated (wasm3 interprets all three), plus the module sizes printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from harness import Comparison, Row, ainterleave, report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.errors import SandboxError  # noqa: E402
from edge.wasm.manifest import load_manifest  # noqa: E402
from edge.wasm.pool import SandboxPool  # noqa: E402

DEVICE = "bench"
DT = 0.01
SUFFIX = {"c": ".c", "rust": ".rs", "zig": ".zig"}


class Sink:
    async def publish(self, component: str, subject: str, data: bytes) -> None:
        pass

    async def kv_put(self, component: str, key: str, value: bytes) -> None:
        pass

    def on_fault(self, component: str, fault: SandboxError) -> None:
        raise RuntimeError(f"{component}: {fault}")


def build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("components_build", ROOT / "components" / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def readme_block(lang: str) -> str:
    text = (ROOT / "README.md").read_text().split("## Writing a component", 1)[1]
    return text.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def build_variants(tmp: Path) -> dict[str, Path]:
    """lang -> manifest path of the drift system compiled from the README."""
    build = build_module()
    manifest = readme_block("toml")
    out: dict[str, Path] = {}
    for lang, suffix in SUFFIX.items():
        src = tmp / f"drift{suffix}"
        src.write_text(readme_block(lang))
        wasm = tmp / f"drift_{lang}.wasm"
        if lang == "c":
            build.compile_wasm([src], wasm)
        elif lang == "rust":
            build.compile_rust(src, wasm)
        else:
            build.compile_zig(src, wasm)
        m = tmp / f"drift_{lang}.toml"
        m.write_text(manifest.replace('name = "drift"', f'name = "drift_{lang}"')
                     .replace('"../build/drift.wasm"', f'"{wasm}"')
                     .replace("memory_pages = 16", "memory_pages = 64"))
        out[lang] = m
    return out


async def run(n: int, rounds: int, inner: int) -> tuple[list[Row], dict[str, int]]:
    with tempfile.TemporaryDirectory(prefix="edge-bench-sdk-") as tmp:
        manifests = build_variants(Path(tmp))
        sizes = {lang: Path(tmp, f"drift_{lang}.wasm").stat().st_size for lang in SUFFIX}
        async with SandboxPool(DEVICE, Sink(), workers=1) as pool:
            sides = {}
            for lang, path in manifests.items():
                m = load_manifest(path, DEVICE)
                await pool.load(m)
                px, vx = pool.batch(m.name, n)
                px[:] = 0.0
                vx[:] = 1.0

                async def tick(name: str = m.name) -> None:
                    pool.batch(name, n)
                    assert await pool.tick(name, n, DT)

                sides[lang] = tick
            samples = await ainterleave(sides, rounds=rounds, inner=inner)
            for lang in SUFFIX:  # every variant really drifted by the same amount
                px, _ = pool.batch(f"drift_{lang}", n)
                assert abs(float(px[0]) - float(px[-1])) < 1e-9 and px[0] > 0
    rows: list[Row] = [
        Comparison.of(f"drift tick, {n:,} entities: Rust SDK vs C SDK", samples, "rust", "c",
                      ops=n, op="entity"),
        Comparison.of(f"drift tick, {n:,} entities: Zig SDK vs C SDK", samples, "zig", "c",
                      ops=n, op="entity"),
    ]
    return rows, sizes


def main() -> None:
    ap = argparse.ArgumentParser(description="C, Rust and Zig SDKs through the sandbox")
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--entities", type=int, default=100_000,
                    help="batch size (large, so that the kernel and not the pipe dominates)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 60, quick 15)")
    ap.add_argument("--inner", type=int, default=5, help="ticks of each side per round")
    args = ap.parse_args()
    rounds = args.rounds or (15 if args.quick else 60)
    rows, sizes = asyncio.run(run(args.entities, rounds, args.inner))
    report(rows, command="bench/bench_sdk.py")
    print("module sizes: " + ", ".join(f"{lang} {size:,} B" for lang, size in sizes.items()))


if __name__ == "__main__":
    main()
