"""A component's publish latency next to a flooding neighbour. ``python bench/bench_sandbox.py [--quick]``

Through a real Runtime (embedded nats-server, the device streams, the sandbox): the *victim*
(the ``relay`` test component, tests/wasm/components/relay.c) answers each ``cmd.victim``
message with a publish on ``evt.victim``; the latency is from the ping's publish to the answer's
arrival at a NATS subscriber (the whole path: inbox, worker, effects lane, NATS). Its p99 over
a burst of pings is measured while its neighbour ``hog`` (the same module):

* is quiet (the baseline),
* floods KV writes: 2,000 messages a second, each putting 10 keys (20,000 puts a second
  attempted; coalesced per key in its lane),
* floods publishes: 2,000 messages a second, each publishing 10 copies (cut to its publish
  rate, 1,000/s by default, in the runtime).

The three sides run interleaved, round by round (``bench/harness.py``); a round's sample is the
p99 of its pings. Reported as milliseconds, as 20 Hz tick periods (the demo's physics tick is
50 ms), and as the ratio to the quiet baseline, for one worker (the device default: both
components share it) and for two (each its own).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from harness import Absolute, Comparison, Row, ainterleave, pct, report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nats.aio.msg import Msg  # noqa: E402

from edge.config import DeviceConfig  # noqa: E402
from edge.runtime import Runtime  # noqa: E402

DEV = "bench"
TICK_S = 1 / 20  # the demo's physics tick
FLOOD_MSGS_PER_S = 2_000
FLOOD_FANOUT = 10  # KV keys / publishes per flood message


def relay_module(tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT / "components"))
    import build  # type: ignore[import-not-found]  # components/build.py

    return Path(build.compile_wasm([ROOT / "tests" / "wasm" / "components" / "relay.c"],
                                   tmp / "relay.wasm"))


def manifest(tmp: Path, module: Path, name: str) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(f'name = "{name}"\nversion = "1.0.0"\ncontract = 1\nmodule = "{module}"\n'
                    f'[run]\nsubscribe = ["edge.{DEV}.cmd.{name}.>"]\n'
                    f'publish = ["edge.{DEV}.evt.>"]\n'
                    "[limits]\ngas = 1_000_000_000\npublish_per_call = 1000\n")
    return path


class Victim:
    """Pings the victim and times its answers."""

    def __init__(self, rt: Runtime, pings: int, spacing_s: float) -> None:
        self.rt = rt
        self.pings = pings
        self.spacing_s = spacing_s
        self.sent: dict[bytes, float] = {}
        self.latencies: list[float] = []
        self.done = asyncio.Event()

    async def on_answer(self, msg: Msg) -> None:
        t0 = self.sent.pop(msg.data, None)
        if t0 is not None:
            self.latencies.append(time.perf_counter() - t0)
            if not self.sent:
                self.done.set()

    async def p99(self) -> float:
        nc = self.rt.sandbox.ctx.nc
        self.latencies = []
        self.done.clear()
        for i in range(self.pings):
            key = b"%d-%f" % (i, time.perf_counter())
            self.sent[key] = time.perf_counter()
            await nc.publish(f"edge.{DEV}.cmd.victim.ping", key)
            await asyncio.sleep(self.spacing_s)
        try:
            await asyncio.wait_for(self.done.wait(), 30.0)
        except TimeoutError:
            lost = len(self.sent)
            self.sent.clear()
            self.latencies += [30.0] * lost  # counted as 30 s: never hides a loss
        return pct(self.latencies, 99)


async def flood(rt: Runtime, subject: str, stop: asyncio.Event) -> None:
    nc = rt.sandbox.ctx.nc
    burst = FLOOD_MSGS_PER_S // 100
    payload = b"x" * 64
    while not stop.is_set():
        for _ in range(burst):
            await nc.publish(subject, payload)
        await asyncio.sleep(0.01)


async def drain(rt: Runtime) -> None:
    """Wait until the hog's inbox is empty and every reply and effect is handed over."""
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        st = next((s for s in rt.components_status() if s["name"] == "hog"), None)
        if st is None or st["inbox"]["queued"] == 0:
            break
        await asyncio.sleep(0.05)
    pool = rt.sandbox.pool
    if pool is not None:
        await asyncio.wait_for(pool.flush(), 30.0)


def side(rt: Runtime, victim: Victim, subject: str | None) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(flood(rt, subject, stop)) if subject else None
        try:
            await asyncio.sleep(0.3 if task else 0.0)  # the flood reaches its steady state
            return await victim.p99()
        finally:
            stop.set()
            if task is not None:
                await task
            await drain(rt)
    return run


async def measure(workers: int, rounds: int, pings: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        module = relay_module(tmp)
        cfg = DeviceConfig(device=DEV, data_dir=tmp / "data")
        cfg.sandbox.workers = workers
        rt = Runtime(cfg)
        await rt.start()
        try:
            kv = await rt.sandbox._bucket()
            await kv.put("victim.out", f"edge.{DEV}.evt.victim".encode())
            await kv.put("hog.out", f"edge.{DEV}.evt.hog".encode())
            await kv.put("hog.reps", str(FLOOD_FANOUT).encode())
            await rt.load_component(str(manifest(tmp, module, "victim")))
            await rt.load_component(str(manifest(tmp, module, "hog")))
            victim = Victim(rt, pings, 0.005)
            await rt.sandbox.ctx.nc.subscribe(f"edge.{DEV}.evt.victim", cb=victim.on_answer)
            samples = await ainterleave({
                "quiet neighbour": side(rt, victim, None),
                "KV flood": side(rt, victim, f"edge.{DEV}.cmd.hog.kv"),
                "publish flood": side(rt, victim, f"edge.{DEV}.cmd.hog.pub"),
            }, rounds=rounds, warmup=1, measure="value")
            hog = next(s for s in rt.components_status() if s["name"] == "hog")
            counters = dict(hog["counters"])
            counters["inbox_dropped"] = hog["inbox"]["dropped"]
            return samples, counters
        finally:
            await rt.stop()


def rows_for(workers: int, samples: dict[str, list[float]], counters: dict[str, int],
             pings: int) -> list[Row]:
    rows: list[Row] = []
    where = "one worker (shared)" if workers == 1 else f"{workers} workers"
    base = samples["quiet neighbour"]
    rows.append(Absolute(f"victim publish latency p99, quiet neighbour, {where}",
                         f"{statistics.median(base) * 1e3:.1f} ms "
                         f"({statistics.median(base) / TICK_S:.2f} ticks at 20 Hz)",
                         f"median over {len(base)} rounds of the p99 of {pings} pings"))
    for name in ("KV flood", "publish flood"):
        med = statistics.median(samples[name])
        rows.append(Comparison.of(f"victim publish latency p99 next to a {name}, {where}",
                                  samples, name, "quiet neighbour",
                                  note=f"{med * 1e3:.1f} ms = {med / TICK_S:.2f} ticks at 20 Hz"))
    rows.append(Absolute(f"flooding neighbour's drops, {where}",
                         f"rate_limited {counters['rate_limited']:,}, effects_dropped "
                         f"{counters['effects_dropped']:,}, inbox full {counters['inbox_dropped']:,}",
                         f"{counters['published']:,} publishes attempted"))
    return rows


async def run(quick: bool) -> list[Row]:
    rounds, pings = (3, 50) if quick else (6, 100)
    rows: list[Row] = []
    for workers in (1, 2):
        t0 = time.perf_counter()
        samples, counters = await measure(workers, rounds, pings)
        print(f"{workers} worker(s), {time.perf_counter() - t0:.0f} s:")
        for name, vals in samples.items():
            print(f"    {name}: p99 per round " + ", ".join(f"{v * 1e3:.1f}" for v in vals) + " ms")
        print(f"    hog counters: {counters}")
        rows += rows_for(workers, samples, counters, pings)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and pings")
    args = ap.parse_args()
    rows = asyncio.run(run(args.quick))
    report(rows, command="bench/bench_sandbox.py")


if __name__ == "__main__":
    main()
