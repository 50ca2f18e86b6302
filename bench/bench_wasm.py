"""Sandbox benchmarks: run as ``python bench/bench_wasm.py [--entities N] [--rounds R]``.

(a) Physics tick over N entities (position += velocity * dt), entity-updates per second:
    * pool: world arrays -> np.take into the shared-memory batch -> edge_tick in the worker
      (col_read / kernel / col_write) -> write columns copied back into the world;
    * pure Python loop over a dict of lists;
    * esper 3 processor over Position/Velocity components;
    * raw wasm3 kernel call in this process, data already in linear memory, on the plain module
      and on the instrumented (metered) one.
(b) Echo without NATS: messages per second through deliver -> wasm edge_on_message -> publish ->
    host callback.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.errors import SandboxError  # noqa: E402
from edge.wasm.abi import IMPORTS_V1, prepare_module  # noqa: E402
from edge.wasm.manifest import load_manifest  # noqa: E402
from edge.wasm.pool import SandboxPool  # noqa: E402

DEVICE = "bench"
DT = 0.01


def build_components() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("components_build",
                                                  ROOT / "components" / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.build()


def median_time(fn: Callable[[], Any], rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class Sink:
    """HostCallbacks that count."""

    def __init__(self) -> None:
        self.published = 0

    async def publish(self, component: str, subject: str, data: bytes) -> None:
        self.published += 1

    async def kv_put(self, component: str, key: str, value: bytes) -> None:
        pass

    def on_fault(self, component: str, fault: SandboxError) -> None:
        print(f"fault: {fault}", file=sys.stderr)


# -- (a) physics ---------------------------------------------------------------------------


def raw_kernel(wasm: bytes, n: int, rounds: int, metered: bool) -> float:
    import wasm3

    env = wasm3.Environment()
    rt = env.new_runtime(64 * 1024)
    mod = env.parse_module(wasm)
    rt.load(mod)
    for name, sig in IMPORTS_V1.items():
        mod.link_function("edge", name, sig, lambda *a: 0)
    if metered:
        mod.gasLimit = 200_000_000 / 10_000
    ptr = rt.find_function("physics_buffer")(n)
    if ptr == 0:
        raise SystemExit(f"{n} entities do not fit in the physics module's memory")
    mem = rt.get_memory(0)
    arr = np.frombuffer(mem, dtype=np.float64, count=6 * n, offset=ptr).reshape(6, n)
    arr[:] = 1.0
    kernel = rt.find_function("physics_kernel")

    def call() -> None:
        if metered:
            mod.gasLimit = 200_000_000 / 10_000
        kernel(ptr, n, DT)

    t = median_time(call, rounds)
    assert arr[0, 0] > 1.0
    return t


def pure_python(n: int, rounds: int) -> float:
    world: dict[str, list[float]] = {k: [1.0] * n for k in ("px", "py", "pz", "vx", "vy", "vz")}

    def step() -> None:
        px, py, pz = world["px"], world["py"], world["pz"]
        vx, vy, vz = world["vx"], world["vy"], world["vz"]
        for i in range(n):
            px[i] += vx[i] * DT
            py[i] += vy[i] * DT
            pz[i] += vz[i] * DT

    return median_time(step, rounds)


def esper_bench(n: int, rounds: int) -> float:
    import esper

    @dataclass
    class Position:
        x: float = 0.0
        y: float = 0.0
        z: float = 0.0

    @dataclass
    class Velocity:
        x: float = 1.0
        y: float = 1.0
        z: float = 1.0

    class Movement(esper.Processor):  # type: ignore[misc]
        def process(self, dt: float) -> None:
            for _ent, (p, v) in esper.get_components(Position, Velocity):
                p.x += v.x * dt
                p.y += v.y * dt
                p.z += v.z * dt

    esper.switch_world("bench")
    esper.clear_database()
    for _ in range(n):
        esper.create_entity(Position(), Velocity())
    esper.add_processor(Movement())
    t = median_time(lambda: esper.process(DT), rounds)
    esper.switch_world("default")
    esper.delete_world("bench")
    return t


async def pool_physics(n: int, rounds: int) -> tuple[float, float]:
    """Returns (median full world->wasm->world tick, median pool.tick alone)."""
    m = load_manifest(ROOT / "components" / "physics" / "manifest.toml", DEVICE)
    fields = list(m.columns)
    total = n + n // 5  # the world has more entities than match the query
    rng = np.random.default_rng(0)
    world = {f: rng.normal(size=total) for f in fields}
    idx = np.sort(rng.choice(total, size=n, replace=False))
    writes = [(m.columns.index(f), f) for f in m.write]
    async with SandboxPool(DEVICE, Sink(), workers=1) as pool:
        await pool.load(m)
        full, tick_only = [], []
        for r in range(rounds + 1):
            t0 = time.perf_counter()
            cols = pool.batch("physics", n)
            for c, f in enumerate(fields):
                np.take(world[f], idx, out=cols[c], mode="clip")
            t1 = time.perf_counter()
            ok = await pool.tick("physics", n, DT)
            t2 = time.perf_counter()
            for c, f in writes:
                world[f][idx] = cols[c]
            t3 = time.perf_counter()
            assert ok
            if r:
                full.append(t3 - t0)
                tick_only.append(t2 - t1)
    return statistics.median(full), statistics.median(tick_only)


# -- (b) echo -------------------------------------------------------------------------------


async def echo(total: int, batch: int) -> float:
    m = load_manifest(ROOT / "components" / "echo" / "manifest.toml", DEVICE)
    sink = Sink()
    async with SandboxPool(DEVICE, sink, workers=1) as pool:
        await pool.load(m)
        msgs = [(f"edge.{DEVICE}.cmd.echo", b"x" * 64)] * batch
        await pool.deliver("echo", msgs)
        await pool.flush()
        sink.published = 0
        t = time.perf_counter()
        for _ in range(total // batch):
            await pool.deliver("echo", msgs)
        await pool.flush()
        elapsed = time.perf_counter() - t
        assert sink.published == (total // batch) * batch, sink.published
    return (total // batch) * batch / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description="sandbox benchmarks")
    ap.add_argument("--entities", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    n = args.entities
    build_components()
    m = load_manifest(ROOT / "components" / "physics" / "manifest.toml", DEVICE)
    plain = m.module.read_bytes()
    metered, _ = prepare_module(plain, m)

    results: dict[str, float] = {}
    results["raw wasm3 kernel (plain)"] = raw_kernel(plain, n, args.rounds, metered=False)
    results["raw wasm3 kernel (metered)"] = raw_kernel(metered, n, args.rounds, metered=True)
    full, tick_only = asyncio.run(pool_physics(n, args.rounds))
    results["pool tick only (shm + pipe)"] = tick_only
    results["pool world->wasm->world"] = full
    results["esper 3 processor"] = esper_bench(n, max(5, args.rounds // 5))
    results["pure Python dict-of-lists"] = pure_python(n, max(5, args.rounds // 5))

    base = results["raw wasm3 kernel (metered)"]
    print(f"(a) physics tick, {n} entities, median of {args.rounds} rounds")
    print(f"    {'variant':32} {'ms/tick':>9} {'M updates/s':>12} {'vs raw metered':>15}")
    for name, t in results.items():
        print(f"    {name:32} {t * 1e3:9.3f} {n / t / 1e6:12.2f} {t / base:14.2f}x")
    plain_t = results["raw wasm3 kernel (plain)"]
    print(f"    pool world->wasm->world / raw plain kernel = {full / plain_t:.2f}x; "
          f"/ raw metered kernel = {full / base:.2f}x")

    rate = asyncio.run(echo(args.messages, args.batch))
    print(f"(b) echo deliver->wasm->publish callback, batches of {args.batch}: "
          f"{rate:,.0f} msg/s")


if __name__ == "__main__":
    main()
