"""Memory over time: host calls and load/unload cycles. ``python bench/bench_memory.py [--quick]``

(a) Worker RSS after 1,000,000 host calls of one kind (tests/wasm/components/hostcalls.c: 10,000
    calls a tick), recycling by RSS off: what each call leaks. pywasm3 0.5.0 never releases the
    argument tuple nor the result of a host call (docs/sandbox.md, *Memory*).
(b) The same calls of the leakiest kind under the pool's default RSS limit (96 MiB, checked
    every 0.1 s), and 5,000,000 of them (full run): the peak and final RSS of the worker and how
    often it was replaced. Bounded, not flat: flat needs a pywasm3 that releases them.
(c) 2,000 load/unload cycles (500 with ``--quick``) of echo and battery, alternately, through a
    real Runtime (embedded nats-server): the runtime process's RSS after the first 100 cycles and
    at the end, the JetStream consumers on the components' KV bucket, the asyncio tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import psutil
from harness import Absolute, Row, report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.config import DeviceConfig  # noqa: E402
from edge.errors import SandboxError  # noqa: E402
from edge.runtime import Runtime  # noqa: E402
from edge.wasm.layer import COMPONENT_KV_STREAM  # noqa: E402
from edge.wasm.manifest import load_manifest  # noqa: E402
from edge.wasm.pool import DEFAULT_RECYCLE_RSS_BYTES, SandboxPool  # noqa: E402
from edge.wasm.supervision import process_rss_bytes  # noqa: E402

MIB = 2**20
PER_TICK = 10_000
#: hostcalls.c: the import each tick calls, by the tick's n
KINDS = {"batch_len() (no arguments, cached int)": 0,
         "clock_ms() (no arguments, one shared int a millisecond)": 1,
         "device_id(ptr, cap) (arguments)": 3}
LEAKIEST = 3


class NoHost:
    async def publish(self, component: str, subject: str, data: bytes,
                      hops: int = 1) -> None: ...

    async def kv_put(self, component: str, key: str, value: bytes, hops: int = 1) -> None: ...

    def on_limit(self, component: str, limit: str, dropped: int) -> None:
        pass

    def on_fault(self, component: str, fault: SandboxError) -> None:
        print(f"    fault: {fault.message}")


def hostcalls_manifest(tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT / "components"))
    import build  # type: ignore[import-not-found]  # components/build.py

    wasm = build.compile_wasm([ROOT / "tests" / "wasm" / "components" / "hostcalls.c"],
                              tmp / "hostcalls.wasm")
    path = tmp / "hostcalls.toml"
    path.write_text(f'name = "hostcalls"\nversion = "1.0.0"\ncontract = 1\nmodule = "{wasm}"\n'
                    "[run]\ntick_hz = 0\n[limits]\ngas = 1_000_000_000_000\nmemory_pages = 2\n")
    return path


async def host_calls(manifest: Path, kind: int, calls: int,
                     limit: int | None) -> dict[str, float]:
    async with SandboxPool("bench", NoHost(), workers=1, recycle_rss_bytes=limit) as p:
        await p.load(load_manifest(manifest, "bench"))
        await p.tick("hostcalls", kind, 1000.0)
        start = process_rss_bytes(p.worker_pids()[0]) or 0
        pids = set(p.worker_pids())
        peak = start
        done = 0
        t0 = time.perf_counter()
        while done < calls:
            if await p.tick("hostcalls", kind, float(PER_TICK)):
                done += PER_TICK
            else:
                await asyncio.sleep(0.01)  # being moved to a new worker
            for pid in p.worker_pids():
                pids.add(pid)
                peak = max(peak, process_rss_bytes(pid) or 0)
        elapsed = time.perf_counter() - t0
        end = process_rss_bytes(p.worker_pids()[0]) or 0
    return {"start": start / MIB, "end": end / MIB, "peak": peak / MIB,
            "per_call": (end - start) / calls, "replaced": len(pids) - 1, "s": elapsed}


async def load_cycles(cycles: int, warmup: int = 100) -> dict[str, float]:
    me = psutil.Process()
    echo = str(ROOT / "components" / "echo" / "manifest.toml")
    battery = str(ROOT / "components" / "battery" / "manifest.toml")
    with tempfile.TemporaryDirectory() as d:
        rt = Runtime(DeviceConfig(device="bench", data_dir=Path(d)))
        await rt.start()
        try:
            js = rt.sandbox.ctx.js
            kv = await rt.sandbox._bucket()
            await kv.put("echo.seen", b"1")
            out: dict[str, float] = {}
            t0 = time.perf_counter()
            for i in range(cycles):
                if i == warmup:
                    out["rss_base"] = me.memory_info().rss / MIB
                    out["consumers_base"] = (await js.stream_info(COMPONENT_KV_STREAM)).state.consumer_count
                    out["tasks_base"] = len(asyncio.all_tasks())
                manifest, name = (echo, "echo") if i % 2 == 0 else (battery, "battery")
                await rt.load_component(manifest)
                await rt.unload_component(name)
            out["ms_per_cycle"] = (time.perf_counter() - t0) / cycles * 1000
            out["rss_end"] = me.memory_info().rss / MIB
            out["consumers_end"] = (await js.stream_info(COMPONENT_KV_STREAM)).state.consumer_count
            out["tasks_end"] = len(asyncio.all_tasks())
            return out
        finally:
            await rt.stop()


async def run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    calls = 1_000_000
    with tempfile.TemporaryDirectory() as d:
        manifest = hostcalls_manifest(Path(d))
        print("(a) worker RSS after 1,000,000 host calls, recycling by RSS off")
        for label, kind in KINDS.items():
            r = await host_calls(manifest, kind, calls, None)
            print(f"    {label}: {r['start']:.1f} -> {r['end']:.1f} MB, {r['per_call']:.1f} B a call, "
                  f"{r['s']:.1f} s")
            rows.append(Absolute(f"worker RSS after 1,000,000 host calls, {label}, no RSS limit",
                                 f"{r['start']:.1f} -> {r['end']:.1f} MB ({r['per_call']:.1f} B a call)",
                                 "pywasm3 0.5.0 keeps each call's argument tuple and result"))
        limit = DEFAULT_RECYCLE_RSS_BYTES
        print(f"(b) the same under the default RSS limit ({limit // MIB} MiB)")
        for n in ((calls,) if quick else (calls, 5 * calls)):
            r = await host_calls(manifest, LEAKIEST, n, limit)
            print(f"    {n:,} calls: start {r['start']:.1f} MB, peak {r['peak']:.1f}, end {r['end']:.1f}, "
                  f"replaced {r['replaced']:.0f}x, {r['s']:.1f} s")
            rows.append(Absolute(f"worker RSS after {n:,} host calls (device_id), "
                                 f"{limit // MIB} MiB RSS limit",
                                 f"peak {r['peak']:.1f} MB, end {r['end']:.1f} MB, "
                                 f"worker replaced {r['replaced']:.0f}x",
                                 f"target: flat within a few MB; bounded by the limit instead "
                                 f"(start {r['start']:.1f} MB)"))
    cycles = 500 if quick else 2_000
    print(f"(c) {cycles:,} load/unload cycles through a Runtime (echo, battery alternately)")
    c = await load_cycles(cycles)
    print(f"    runtime RSS {c['rss_base']:.1f} -> {c['rss_end']:.1f} MB; consumers "
          f"{c['consumers_base']:.0f} -> {c['consumers_end']:.0f}; tasks {c['tasks_base']:.0f} -> "
          f"{c['tasks_end']:.0f}; {c['ms_per_cycle']:.1f} ms a cycle")
    rows.append(Absolute(f"runtime RSS after {cycles:,} load/unload cycles",
                         f"{c['rss_base']:.1f} -> {c['rss_end']:.1f} MB (from cycle 100)",
                         f"{c['ms_per_cycle']:.1f} ms a cycle; target flat"))
    rows.append(Absolute(f"JetStream consumers on the components' KV after {cycles:,} cycles",
                         f"{c['consumers_base']:.0f} -> {c['consumers_end']:.0f}",
                         f"asyncio tasks {c['tasks_base']:.0f} -> {c['tasks_end']:.0f}; "
                         "before this change: one consumer per load, kept 5 min"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer calls and cycles")
    args = ap.parse_args()
    rows = asyncio.run(run(args.quick))
    report(rows, command="bench/bench_memory.py")


if __name__ == "__main__":
    main()
