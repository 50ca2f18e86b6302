"""Sandbox benchmarks: ``python bench/bench_wasm.py [--quick] [--entities N] [--rounds R]``.

Every figure is interleaved with its baseline in one loop (see bench/harness.py); ratios are
candidate time / baseline time per tick, the median of per-round ratios.

(a) Physics tick over N entities (position += velocity * dt):
    * full path: a real World + TickLoop + WasmTickRunner -> sandbox worker -> World, in shared
      mode with the matching entities in slots 0..N-1 ("contiguous"), against, in the same
      rounds: the raw wasm3 kernel call in this process (data already in linear memory) on the
      metered module the pool runs and on the plain one, esper 3, a pure Python loop over a dict
      of lists, and numpy (``pos += vel * dt`` on float64 columns);
    * shared mode with the entities spread over N + N/5 slots ("sparse"), and copy mode (private
      world columns, gather -> batch file -> worker -> scatter), each against the raw metered
      kernel (one loop per mode: alternating two worlds on one component would rebind every tick);
    * breakdown, against the raw metered kernel: the pool tick alone (copy mode: pipe round trip +
      col_read/kernel/col_write in the worker), the pipe round trip of an empty tick, and the
      worker's shared tick run in this process (contiguous / sparse);
    * metering overhead: raw metered kernel against raw plain kernel.
(b) Echo without NATS: deliver -> wasm edge_on_message -> publish -> host callback, time per
    message over bursts of batches (absolute: no baseline without the sandbox exists).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from harness import Absolute, Comparison, Row, ainterleave, report

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


class Sink:
    """HostCallbacks that count."""

    def __init__(self) -> None:
        self.published = 0

    async def publish(self, component: str, subject: str, data: bytes,
                      hops: int = 1) -> None:
        self.published += 1

    async def kv_put(self, component: str, key: str, value: bytes, hops: int = 1) -> None:
        pass

    def on_limit(self, component: str, limit: str, dropped: int) -> None:
        pass

    def on_fault(self, component: str, fault: SandboxError) -> None:
        print(f"fault: {fault}", file=sys.stderr)


# -- (a) physics ---------------------------------------------------------------------------


def raw_kernel(wasm: bytes, n: int, metered: bool) -> Callable[[], None]:
    """A callable running the physics kernel once on N entities already in linear memory."""
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

    call()
    assert arr[0, 0] > 1.0
    call.keep = (env, rt, mod)  # type: ignore[attr-defined]  # the runtime must outlive the call
    return call


def pure_python(n: int) -> Callable[[], None]:
    world: dict[str, list[float]] = {k: [1.0] * n for k in ("px", "py", "pz", "vx", "vy", "vz")}

    def step() -> None:
        px, py, pz = world["px"], world["py"], world["pz"]
        vx, vy, vz = world["vx"], world["vy"], world["vz"]
        for i in range(n):
            px[i] += vx[i] * DT
            py[i] += vy[i] * DT
            pz[i] += vz[i] * DT

    return step


def numpy_step(n: int) -> Callable[[], None]:
    pos = np.ones((3, n))
    vel = np.ones((3, n))

    def step() -> None:
        pos[:] += vel * DT

    return step


def esper_step(n: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """esper's processor over Position/Velocity, and a callable that deletes its world."""
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

    def step() -> None:
        esper.switch_world("bench")
        esper.process(DT)

    def close() -> None:
        esper.switch_world("default")
        esper.delete_world("bench")

    return step, close


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


def worker_tick(inst: Instance, w: World, n: int, columns: list[str]) -> Callable[[], None]:
    """The worker's side of a shared tick (col_read + kernel + col_write), in this process."""
    q = w.query(["position", "velocity"])
    refs = w.shared_refs(columns)
    assert refs is not None
    inst.bind(BindSpec(n, tuple((r.path, r.ino, r.nbytes) for r in refs),
                       None if q.contiguous else q.index.tobytes(), None))

    def call() -> None:
        inst.result.reset()
        inst.tick(n, DT, True)

    return call


async def physics(n: int, rounds: int, inner: int) -> list[Row]:
    from edge.wasm.layer import WasmTickRunner

    m = load_manifest(ROOT / "components" / "physics" / "manifest.toml", DEVICE)
    plain = m.module.read_bytes()
    metered_wasm, _ = prepare_module(plain, m)
    raw_metered = raw_kernel(metered_wasm, n, metered=True)
    raw_plain = raw_kernel(plain, n, metered=False)
    what = f"physics tick, {n:,} entities"
    kw: dict[str, Any] = {"ops": n, "op": "updates"}
    rows: list[Row] = []

    def cmp(samples: dict[str, list[float]], cand: str, base: str, label: str = "") -> None:
        rows.append(Comparison.of(label or what, samples, cand, base, **kw))

    async with SandboxPool(DEVICE, Sink(), workers=1) as pool:
        await pool.load(m)

        def full_path(extra: int, shared: bool) -> tuple[World, Callable[[], Any]]:
            w = physics_world(n, extra, shared=shared)
            loop = TickLoop(w, WasmTickRunner(pool, "physics"), read=m.read, write=m.write, hz=20)
            assert loop.mode == ("shared" if shared else "copy")

            async def tick() -> None:
                assert await loop.tick_once(DT)

            return w, tick

        # 1. the headline row: the full path against every baseline, all in one loop
        w, tick = full_path(0, True)
        esper_tick, esper_close = esper_step(n)
        s = await ainterleave({
            "full path": tick, "raw kernel (metered)": raw_metered,
            "raw kernel (plain)": raw_plain, "esper": esper_tick,
            "pure Python": pure_python(n), "numpy": numpy_step(n),
        }, rounds=rounds, inner=inner)
        esper_close()
        w.close()
        for base in ("raw kernel (metered)", "raw kernel (plain)", "esper", "pure Python", "numpy"):
            cmp(s, "full path", base, f"{what}, world → wasm → world (shared, contiguous)")
        cmp(s, "raw kernel (metered)", "raw kernel (plain)", f"metering overhead, {what}")

        # 2. the other world layouts, one loop each
        for label, extra, shared in (("shared, sparse", n // 5, True), ("copy, sparse", n // 5, False)):
            w, tick = full_path(extra, shared)
            s = await ainterleave({"full path": tick, "raw kernel (metered)": raw_metered},
                                  rounds=rounds, inner=inner)
            w.close()
            cmp(s, "full path", "raw kernel (metered)", f"{what}, world → wasm → world ({label})")

        # 3. breakdown: the pool's copy-mode tick and an empty tick (the pipe round trip)
        cols = pool.batch("physics", n)
        for c in cols:
            c[:] = 1.0

        async def tick_only() -> None:
            assert await pool.tick("physics", n, DT)

        async def empty() -> None:
            await pool.tick("physics", 0, DT)

        s = await ainterleave({"pool tick": tick_only, "empty tick": empty,
                               "raw kernel (metered)": raw_metered}, rounds=rounds, inner=inner)
        cmp(s, "pool tick", "raw kernel (metered)", f"{what}, pool tick only (copy batch)")
        rows.append(Comparison.of("pipe round trip (empty tick) vs the kernel", s, "empty tick",
                                  "raw kernel (metered)"))

    # 4. breakdown: the worker's shared tick in this process
    spec = LoadSpec(name="physics", wasm=metered_wasm, device=DEVICE, ncols=len(m.columns),
                    writable=m.writable, publish=(), gas=m.limits.gas, publish_per_call=1,
                    kv={}, stack_bytes=64 * 1024)
    inst = Instance(spec)
    inst.start()
    for label, extra in (("contiguous", 0), ("sparse", n // 5)):
        w = physics_world(n, extra, shared=True)
        s = await ainterleave({"worker tick": worker_tick(inst, w, n, list(m.columns)),
                               "raw kernel (metered)": raw_metered}, rounds=rounds, inner=inner)
        inst.unbind()
        w.close()
        cmp(s, "worker tick", "raw kernel (metered)",
            f"{what}, worker tick in process ({label})")
    return rows


# -- (b) echo -------------------------------------------------------------------------------


async def echo(rounds: int, batches: int, batch: int) -> Row:
    m = load_manifest(ROOT / "components" / "echo" / "manifest.toml", DEVICE)
    sink = Sink()
    async with SandboxPool(DEVICE, sink, workers=1) as pool:
        await pool.load(m)
        # what is measured is the path, not the publish rate limit (bench/bench_sandbox.py):
        # no bucket refuses these publishes
        pool._comps["echo"].publish_bucket.rate = float("inf")
        msgs = [(f"edge.{DEVICE}.cmd.echo", b"x" * 64)] * batch

        async def burst() -> None:
            before = sink.published
            for _ in range(batches):
                await pool.deliver("echo", msgs)
            await pool.flush()
            assert sink.published - before == batches * batch, sink.published

        s = await ainterleave({"echo": burst}, rounds=rounds)
    per_msg = [t / (batches * batch) for t in s["echo"]]
    return Absolute.of(f"echo without NATS: deliver → wasm → publish callback, batches of {batch}",
                       per_msg, ops=1, op="msg", note="no baseline without the sandbox")


def main() -> None:
    ap = argparse.ArgumentParser(description="sandbox benchmarks")
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--entities", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 40, quick 12)")
    ap.add_argument("--inner", type=int, default=3, help="calls of each side per round")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    rounds = args.rounds or (12 if args.quick else 40)
    build_components()
    rows = asyncio.run(physics(args.entities, rounds, args.inner))
    rows.append(asyncio.run(echo(max(5, rounds // 2), 40 if args.quick else 160, args.batch)))
    report(rows, command="bench/bench_wasm.py")


if __name__ == "__main__":
    main()
