"""Sandbox benchmarks: run as ``python bench/bench_wasm.py [--entities N] [--rounds R]``.

(a) Physics tick over N entities (position += velocity * dt), entity-updates per second:
    * full path: a real World + TickLoop + WasmTickRunner -> worker -> World, in shared mode (the
      worker copies between the world's shared columns and linear memory) with the matching
      entities in slots 0..N-1 ("contiguous") or spread over N + N/5 slots ("sparse"), and in
      copy mode (private world columns, gather -> batch file -> worker -> scatter);
    * pool tick alone (compact pipe round trip + col_read/kernel/col_write in the worker);
    * breakdown: pipe round trip of an empty tick, the worker's tick in this process (shared,
      contiguous / sparse) against the kernel alone;
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
from edge.wasm.protocol import BindSpec, LoadSpec  # noqa: E402
from edge.wasm.worker import Instance  # noqa: E402
from edge.world.scheduler import TickLoop  # noqa: E402
from edge.world.store import World  # noqa: E402

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


def physics_world(n: int, extra: int, *, shared: bool) -> World:
    """N entities with position + velocity; ``extra`` more with position only, interleaved."""
    w = World(shared=shared, capacity=n + extra)
    rng = np.random.default_rng(0)
    total = n + extra
    moving = set(rng.choice(total, size=n, replace=False).tolist()) if extra else set(range(n))
    for i in range(total):
        comps: dict[str, dict[str, float]] = {"position": {"x": 1.0, "y": 2.0, "z": 3.0}}
        if i in moving:
            comps["velocity"] = {"x": 1.0, "y": 1.0, "z": 1.0}
        w.spawn(f"e{i}", components=comps)
    return w


async def pool_physics(n: int, rounds: int) -> dict[str, float]:
    """Median ms of the full world->wasm->world tick per mode, the pool tick alone, the round trip."""
    from edge.runtime import WasmTickRunner

    m = load_manifest(ROOT / "components" / "physics" / "manifest.toml", DEVICE)
    out: dict[str, float] = {}
    async with SandboxPool(DEVICE, Sink(), workers=1) as pool:
        await pool.load(m)
        for label, extra, shared in (("shared, contiguous", 0, True),
                                     ("shared, sparse", n // 5, True),
                                     ("copy, sparse", n // 5, False)):
            w = physics_world(n, extra, shared=shared)
            loop = TickLoop(w, WasmTickRunner(pool, "physics"), read=m.read, write=m.write, hz=20)
            assert loop.mode == label.split(",")[0]

            async def tick(loop: TickLoop = loop) -> None:
                assert await loop.tick_once(DT)

            out[f"full path ({label})"] = await amedian(tick, rounds)
            w.close()
        cols = pool.batch("physics", n)
        for c in cols:
            c[:] = 1.0

        async def tick_only() -> None:
            assert await pool.tick("physics", n, DT)

        async def empty() -> None:
            await pool.tick("physics", 0, DT)

        out["pool tick only (copy mode)"] = await amedian(tick_only, rounds)
        out["pipe round trip (empty tick)"] = await amedian(empty, rounds)
    return out


async def amedian(fn: Callable[[], Any], rounds: int) -> float:
    await fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def worker_breakdown(wasm: bytes, n: int, rounds: int) -> dict[str, float]:
    """The worker's side of a shared tick, run in this process: col_read + kernel + col_write."""
    m = load_manifest(ROOT / "components" / "physics" / "manifest.toml", DEVICE)
    spec = LoadSpec(name="physics", wasm=wasm, device=DEVICE, ncols=len(m.columns),
                    writable=m.writable, publish=(), gas=m.limits.gas, publish_per_call=1,
                    kv={}, stack_bytes=64 * 1024)
    inst = Instance(spec)
    out = {}
    for label, extra in (("contiguous", 0), ("sparse", n // 5)):
        w = physics_world(n, extra, shared=True)
        q = w.query(["position", "velocity"])
        refs = w.shared_refs(m.columns)
        assert refs is not None
        inst.bind(BindSpec(n, tuple((r.path, r.ino, r.nbytes) for r in refs),
                           None if q.contiguous else q.index.tobytes(), None))

        def call() -> None:
            inst.result.reset()
            inst.tick(n, DT, True)

        out[f"worker tick, in process ({label})"] = median_time(call, rounds)
        inst.unbind()
        w.close()
    return out


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
    results.update(asyncio.run(pool_physics(n, args.rounds)))
    results.update(worker_breakdown(metered, n, args.rounds))
    results["esper 3 processor"] = esper_bench(n, max(5, args.rounds // 5))
    results["pure Python dict-of-lists"] = pure_python(n, max(5, args.rounds // 5))

    base = results["raw wasm3 kernel (metered)"]
    print(f"(a) physics tick, {n} entities, median of {args.rounds} rounds "
          "(raw kernels: the module the pool runs, before/after metering)")
    print(f"    {'variant':40} {'ms/tick':>9} {'M updates/s':>12} {'vs raw metered':>15}")
    for name, t in results.items():
        print(f"    {name:40} {t * 1e3:9.3f} {n / t / 1e6:12.2f} {t / base:14.2f}x")
    plain_t = results["raw wasm3 kernel (plain)"]
    print(f"    metering overhead: metered / plain kernel = {base / plain_t:.2f}x")
    for label in ("shared, contiguous", "shared, sparse", "copy, sparse"):
        full = results[f"full path ({label})"]
        print(f"    full path ({label}): {full / base:.2f}x raw metered, {full / plain_t:.2f}x raw "
              f"plain; esper / it = {results['esper 3 processor'] / full:.2f}x, pure Python / it "
              f"= {results['pure Python dict-of-lists'] / full:.2f}x")

    rate = asyncio.run(echo(args.messages, args.batch))
    print(f"(b) echo deliver->wasm->publish callback, batches of {args.batch}: "
          f"{rate:,.0f} msg/s")


if __name__ == "__main__":
    main()
