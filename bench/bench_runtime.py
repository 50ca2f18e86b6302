"""Runtime benchmarks: (b) the message path through a wasm system, (c) idle RSS and time to ready.

Run: ``.venv/bin/python bench/bench_runtime.py`` (``--quick`` for a short run).

(b) NATS message in -> MessagePump -> sandbox worker -> wasm ``echo`` -> publish out, against a raw
nats-py echo (one connection republishing what another sends) in the same run and process.
Throughput: a burst of N messages, time until every echo is back. Latency: one message at a time,
publish to echo received, p50/p99.

(c) ``edge run`` (the embedded demo) as a subprocess: seconds until the device API answers, then the
idle RSS of the runtime and its sandbox worker (nats-server reported separately) after settling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import psutil

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
    return n / elapsed


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
        out.append((t1 - t0) * 1000)
    await sub.unsubscribe()
    return out


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


async def message_path(n: int, lat_n: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        srv = NatsServer(ServerOptions(store_dir=Path(tmp) / "nats"))
        await srv.start()
        cfg = DeviceConfig(device="bench", data_dir=Path(tmp) / "dev", nats=NatsConfig(url=srv.url))
        cfg.components = [ROOT / "components" / "echo" / "manifest.toml"]
        rt = Runtime(cfg)
        await rt.start()
        pub = await nats.connect(srv.url)
        sub = await nats.connect(srv.url)
        raw = await nats.connect(srv.url)

        async def raw_echo(msg: Any) -> None:
            await raw.publish("raw.out", msg.data)

        await raw.subscribe("raw.in", cb=raw_echo, pending_msgs_limit=1_000_000)
        await raw.flush()
        res: dict[str, list[float]] = {"wasm": [], "raw": []}
        for _ in range(rounds):  # interleave so both see the same machine noise
            res["raw"].append(await _burst(pub, sub, "raw.in", "raw.out", n))
            res["wasm"].append(await _burst(pub, sub, "edge.bench.cmd.echo", "edge.bench.evt.echo", n))
        lat_raw = await _latency(pub, sub, "raw.in", "raw.out", lat_n)
        lat_wasm = await _latency(pub, sub, "edge.bench.cmd.echo", "edge.bench.evt.echo", lat_n)
        for c in (pub, sub, raw):
            await c.close()
        await rt.stop()
        await srv.stop()
    out = {
        "raw_msgs_per_s": statistics.median(res["raw"]),
        "wasm_msgs_per_s": statistics.median(res["wasm"]),
        "raw_p50_ms": _pct(lat_raw, 0.5),
        "raw_p99_ms": _pct(lat_raw, 0.99),
        "wasm_p50_ms": _pct(lat_wasm, 0.5),
        "wasm_p99_ms": _pct(lat_wasm, 0.99),
    }
    out["ratio"] = out["wasm_msgs_per_s"] / out["raw_msgs_per_s"]
    return out


CORE_CONFIG = """
[device]
id = "core"
[[components]]
manifest = "{root}/components/physics/manifest.toml"
[[components]]
manifest = "{root}/components/patrol/manifest.toml"
[[components]]
manifest = "{root}/components/battery/manifest.toml"
"""


def idle_footprint(settle_s: float, *, core: bool) -> dict[str, Any]:
    """``edge run`` as a subprocess: the full embedded demo, or the core (the wasm fleet only)."""
    from edge.demo.fleet import demo_entities

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, EDGE_DATA_DIR=tmp)
        args = [sys.executable, "-m", "edge.cli.main", "run", "--quiet", "--log-level", "warning"]
        if core:
            text = CORE_CONFIG.format(root=ROOT)
            for e in demo_entities(5):
                comps = ", ".join(
                    f"{name} = {{ {', '.join(f'{k} = {float(v)}' for k, v in fields.items())} }}"
                    for name, fields in e.components.items()
                )
                text += f'[[entities]]\nid = "{e.id}"\nkind = "drone"\ncomponents = {{ {comps} }}\n'
            cfg = Path(tmp) / "core.toml"
            cfg.write_text(text)
            args += ["--config", str(cfg)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, env=env, cwd=ROOT)
        try:
            runtime_file = Path(tmp) / "runtime.json"
            while not runtime_file.exists():
                if proc.poll() is not None:
                    raise RuntimeError("edge run exited early")
                time.sleep(0.01)
            ready = time.perf_counter() - t0
            time.sleep(settle_s)
            main = psutil.Process(proc.pid)
            main_rss = main.memory_info().rss
            nats_rss = 0
            workers: list[float] = []
            for child in main.children(recursive=True):
                rss = child.memory_info().rss
                if "nats-server" in " ".join(child.cmdline()):
                    nats_rss += rss
                else:
                    workers.append(rss / 2**20)
            return {
                "ready_s": ready,
                "main_rss_mb": main_rss / 2**20,
                "workers_rss_mb": workers,
                "runtime_rss_mb": main_rss / 2**20 + sum(workers),
                "nats_server_rss_mb": nats_rss / 2**20,
            }
        finally:
            proc.terminate()
            proc.wait(15)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, lat_n, rounds = (5_000, 300, 2) if args.quick else (20_000, 2_000, 3)
    mp = asyncio.run(message_path(n, lat_n, rounds))
    print("(b) message path, NATS in -> wasm echo -> NATS out, vs raw nats-py echo (same run)")
    print(f"    raw echo   {mp['raw_msgs_per_s']:>9,.0f} msg/s   p50 {mp['raw_p50_ms']:.3f} ms  p99 {mp['raw_p99_ms']:.3f} ms")
    print(f"    wasm echo  {mp['wasm_msgs_per_s']:>9,.0f} msg/s   p50 {mp['wasm_p50_ms']:.3f} ms  p99 {mp['wasm_p99_ms']:.3f} ms")
    print(f"    ratio wasm/raw throughput {mp['ratio']:.2f} (target >= 0.5)")
    settle = 3.0 if args.quick else 10.0
    print("(c) idle RSS after start (nats-server separate), and time from `edge run` to ready")
    for label, core in (("core: wasm fleet (3 components, 5 drones)", True),
                        ("full embedded demo (+ emulated hardware, face model, agent, tools)", False)):
        fp = idle_footprint(settle, core=core)
        workers = " + ".join(f"{w:.1f}" for w in fp["workers_rss_mb"])
        print(f"    {label}: ready in {fp['ready_s']:.2f} s; runtime {fp['runtime_rss_mb']:.1f} MB "
              f"(main {fp['main_rss_mb']:.1f} + workers {workers}); nats-server {fp['nats_server_rss_mb']:.1f} MB")
    print("    targets: ready <= 3 s, runtime RSS <= 100 MB")

if __name__ == "__main__":
    main()
