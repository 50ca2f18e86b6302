"""Runtime benchmark: the message path through a wasm system, against raw nats-py in the same loop.

Run: ``python bench/bench_runtime.py`` (``--quick`` for a short run). Idle RSS and start time
moved to ``bench/bench_rss.py``.

NATS message in -> ComponentInbox -> sandbox worker -> wasm ``echo`` -> publish out, against a raw
nats-py echo (one connection republishing what another sends), both on one nats-server and one
event loop, interleaved round by round (bench/harness.py):
* throughput: a burst of N messages, time until every echo is back (time per message);
* latency: K messages one at a time, publish to echo received; a round's sample is its median,
  and p99 is over every message of a side.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from harness import Comparison, Row, ainterleave, fmt_time, pct, report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.config import DeviceConfig, NatsConfig
from edge.nats.server import NatsServer, ServerOptions
from edge.runtime import Runtime

PAYLOAD = b"x" * 64


async def _burst(nc_pub: Any, nc_sub: Any, subj_in: str, subj_out: str, n: int) -> float:
    got = 0
    done = asyncio.Event()

    async def cb(msg: Any) -> None:
        nonlocal got
        got += 1
        if got == n:
            done.set()

    sub = await nc_sub.subscribe(subj_out, cb=cb)
    await nc_sub.flush()
    t0 = time.perf_counter()
    for i in range(n):
        await nc_pub.publish(subj_in, PAYLOAD)
        if i % 500 == 499:
            await asyncio.sleep(0)
    await nc_pub.flush()
    await asyncio.wait_for(done.wait(), 60)
    elapsed = time.perf_counter() - t0
    await sub.unsubscribe()
    return elapsed / n


async def _latency(nc_pub: Any, nc_sub: Any, subj_in: str, subj_out: str, n: int) -> list[float]:
    queue: asyncio.Queue[float] = asyncio.Queue()

    async def cb(msg: Any) -> None:
        queue.put_nowait(time.perf_counter())

    sub = await nc_sub.subscribe(subj_out, cb=cb)
    await nc_sub.flush()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await nc_pub.publish(subj_in, PAYLOAD)
        await nc_pub.flush()
        t1 = await asyncio.wait_for(queue.get(), 5)
        out.append(t1 - t0)
    await sub.unsubscribe()
    return out


def echo_manifest(tmp: Path) -> Path:
    """The demo's echo with the publish rate at its upper bound: a burst measures the message
    path, not the rate limit (1,000/s by default; bench/bench_sandbox.py measures that)."""
    src = ROOT / "components" / "echo" / "manifest.toml"
    text = src.read_text().replace('module = "../build/echo.wasm"',
                                   f'module = "{src.parent / "../build/echo.wasm"}"')
    path = tmp / "echo.toml"
    path.write_text(text + "publish_rate = 100_000\npublish_burst = 1_000_000\n")
    return path


async def message_path(n: int, lat_n: int, rounds: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        srv = NatsServer(ServerOptions(store_dir=Path(tmp) / "nats"))
        await srv.start()
        cfg = DeviceConfig(device="bench", data_dir=Path(tmp) / "dev", nats=NatsConfig(url=srv.url))
        cfg.components = [echo_manifest(Path(tmp))]
        rt = Runtime(cfg)
        await rt.start()
        pub = await nats.connect(srv.url)
        sub = await nats.connect(srv.url)
        raw = await nats.connect(srv.url)

        async def raw_echo(msg: Any) -> None:
            await raw.publish("raw.out", msg.data)

        await raw.subscribe("raw.in", cb=raw_echo, pending_msgs_limit=1_000_000)
        await raw.flush()
        paths = {"wasm echo": ("edge.bench.cmd.echo", "edge.bench.evt.echo"),
                 "raw nats-py echo": ("raw.in", "raw.out")}
        burst = await ainterleave(
            {k: (lambda i=i, o=o: _burst(pub, sub, i, o, n)) for k, (i, o) in paths.items()},
            rounds=rounds, measure="value")
        every: dict[str, list[float]] = {k: [] for k in paths}

        async def lat_round(key: str) -> float:
            i, o = paths[key]
            lat = await _latency(pub, sub, i, o, lat_n)
            every[key].extend(lat)
            return statistics.median(lat)

        lat = await ainterleave({k: (lambda k=k: lat_round(k)) for k in paths},
                                rounds=rounds * 4, measure="value")
        for c in (pub, sub, raw):
            await c.close()
        await rt.stop()
        await srv.stop()
    p99 = {k: pct(v, 99) for k, v in every.items()}
    return [
        Comparison.of("message path NATS → wasm echo → NATS, burst throughput", burst,
                      "wasm echo", "raw nats-py echo", op="msg",
                      note=f"bursts of {n:,}; target ≤ 2× (≥ 0.5 of raw throughput)"),
        Comparison.of("message path NATS → wasm echo → NATS, one at a time: p50 latency", lat,
                      "wasm echo", "raw nats-py echo",
                      note=f"{lat_n} msgs a round; p99 wasm {fmt_time(p99['wasm echo'])}, "
                           f"raw {fmt_time(p99['raw nats-py echo'])}"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, lat_n, rounds = (3_000, 50, 4) if args.quick else (10_000, 100, 8)
    rows = asyncio.run(message_path(n, lat_n, rounds))
    report(rows, command="bench/bench_runtime.py")


if __name__ == "__main__":
    main()
