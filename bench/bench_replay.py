"""Replay: recording overhead and replay speed on the demo fleet (``python bench/bench_replay.py
[--quick]``). Real nats-server, the real runtime with its wasm systems (physics, patrol, battery
over 5 drones; the emulated hardware is left out: it is not recorded).

* Recording overhead, interleaved round by round (bench/harness.py): the same fleet run for W
  seconds with the recorder on and off; a round's sample is the CPU seconds the runtime process
  and its sandbox worker spent per wall second. The recorder's bytes per second are its own count
  of record bytes published.
* Message path: bursts of 3,000 messages through the echo component of two devices on one
  server, one recording and one not, interleaved burst by burst (the cost of recording each
  message batch and publish).
* Clock path: ticks of a physics that reads both clocks for each of 5 entities, in a sandbox
  pool in the record clock mode (the worker reports every value with the call's result) against
  one in the live mode (what a device without the recorder, and every device before clock
  recording, runs), interleaved; and the plain physics (no clock import) in the two modes, whose
  wire is the same compact reply in both. ``--clock`` runs only this part.
* Copy mode: a recorded tick system runs in the copy mode (the batch gathered in the runtime, so
  the record holds exactly what the worker read). The physics tick's duration (the tick loop's
  own timing, median of its last 256 ticks) on the demo fleet with the recorder on (copy mode)
  against the recorder on but every batch left unrecorded (shared mode, what recording would
  cost if it did not force copies) and the recorder off (shared mode), interleaved.
  ``--shared`` runs only this part.
* Replay speed: the recorded span of a window of the last recorded run divided by the wall time
  ``edge replay`` needs for it (start of its sandbox included); the target is at least 20x.
  ``--speed`` runs only this, for a 6 s and a 30 s window (the machine's load average printed).
  ``--speed --against TREE``: the same two windows, recorded once, replayed round by round by
  this tree and by another checkout ``TREE`` (each replay in its own process, its worker from its
  own tree, the first side rotating), reported as the median of the per-round ratios of the
  replay times.
* Worker start and exit: ``--worker --against TREE`` starts a sandbox worker process of this
  tree and of ``TREE`` alternately (``python -P -m edge.wasm.worker``, each with its own tree on
  ``PYTHONPATH``): the time from the spawn to its answer to a first ping, and from the end of its
  input to its exit (what a pool's stop waits for).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test rigs (tests/rigs/)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "replay"))

from edge.config import embedded_default  # noqa: E402
from edge.demo.fleet import apply_demo  # noqa: E402
from edge.replay.recorder import RecorderLayer  # noqa: E402
from edge.replay.replayer import CaptureHost, replay  # noqa: E402
from edge.replay.source import Window  # noqa: E402
from edge.runtime import Runtime  # noqa: E402
from edge.wasm.manifest import load_manifest  # noqa: E402
from edge.wasm.pool import SandboxPool  # noqa: E402
from edge.wasm.protocol import CLOCK_LIVE, CLOCK_RECORD, HEADER, encode  # noqa: E402
from bench_runtime import _burst, echo_manifest  # noqa: E402
from harness import Absolute, Comparison, Row, ainterleave, report  # noqa: E402
from rigs.nats import running_server  # noqa: E402
from replay_support import ROOT, physics_variant  # noqa: E402

#: Ticks per sample of the clock path, entities per tick.
CLOCK_TICKS = 400
CLOCK_ENTITIES = 5

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


async def fleet_run(base: Path, url: str, seconds: float, *, record: bool,
                    out: dict[str, float]) -> float:
    """Run the fleet for ``seconds``; returns CPU seconds per wall second (runtime + workers)."""
    cfg = apply_demo(embedded_default(data_dir=Path(tempfile.mkdtemp(dir=base)), drones=5))
    cfg.demo = False
    cfg.nats.url = url
    rt = Runtime(cfg, record=record)
    await rt.start()
    try:
        await asyncio.sleep(0.5)  # past the loads
        pids = rt.pool.worker_pids() if rt.pool else []
        c0 = time.process_time() + sum(proc_cpu(p) for p in pids)
        b0 = rt.status().get("recorder", {}).get("bytes", 0)
        w0 = time.perf_counter()
        out["t_from"] = time.time()
        await asyncio.sleep(seconds)
        wall = time.perf_counter() - w0
        cpu = time.process_time() + sum(proc_cpu(p) for p in pids) - c0
        out["t_to"] = time.time()
        if record:
            out["bytes_per_s"] = (rt.status()["recorder"]["bytes"] - b0) / wall
    finally:
        await rt.stop()
    return cpu / wall


class _SharedModeRecorder(RecorderLayer):
    """The recorder with every tick batch left unrecorded: its systems keep the shared mode."""

    def records_batch(self, component: str, nbytes: int) -> bool:
        return False


async def physics_tick(base: Path, url: str, seconds: float, mode: str) -> float:
    """The median physics tick duration (seconds) of one fleet run; ``mode``: ``copy``
    (recorded), ``shared`` (recorder on, batches unrecorded) or ``off`` (no recorder)."""
    import edge.replay.recorder as recorder_module

    cfg = apply_demo(embedded_default(data_dir=Path(tempfile.mkdtemp(dir=base)), drones=5))
    cfg.demo = False
    cfg.nats.url = url
    original = recorder_module.RecorderLayer
    if mode == "shared":  # the composition root builds the recorder from this name
        recorder_module.RecorderLayer = _SharedModeRecorder  # type: ignore[misc]
    try:
        rt = Runtime(cfg, record=mode != "off")
        await rt.start()
    finally:
        recorder_module.RecorderLayer = original  # type: ignore[misc]
    try:
        await asyncio.sleep(seconds)
        loop = rt.sandbox.components["physics"].tick
        assert loop is not None
        want = "copy" if mode == "copy" else "shared"
        assert loop.mode == want, f"{mode}: the physics tick ran in the {loop.mode} mode"
        durations = list(loop.stats.durations)
    finally:
        await rt.stop()
    return statistics.median(durations)


async def copy_mode(base: Path, url: str, rounds: int, seconds: float) -> list[Row]:
    samples = await ainterleave({m: (lambda m=m: physics_tick(base, url, seconds, m))
                                 for m in ("copy", "shared", "off")},
                                rounds=rounds, warmup=0, measure="value")
    note = "demo fleet, 5 drones, 20 Hz; median of the last 256 ticks a run"
    return [Comparison.of("physics tick, recorded (copy mode) vs recorder on, batch unrecorded "
                          "(shared mode)", samples, "copy", "shared", op="tick", note=note),
            Comparison.of("physics tick, recorded (copy mode) vs recorder off (shared mode)",
                          samples, "copy", "off", op="tick", note=note)]


async def message_path(base: Path, url: str, rounds: int) -> Comparison:
    runtimes = []
    for device, record in (("recorded", True), ("plain", False)):
        cfg = embedded_default(data_dir=base / device, drones=0)
        cfg.demo = False
        cfg.device = device
        cfg.nats.url = url
        cfg.components = [echo_manifest(base)]
        rt = Runtime(cfg, record=record)
        await rt.start()
        runtimes.append(rt)
    pub = await nats.connect(url)
    sub = await nats.connect(url)
    try:
        async def side(rt: Runtime) -> float:
            t0 = time.perf_counter()
            d = rt.device
            await _burst(pub, sub, f"edge.{d}.cmd.echo", f"edge.{d}.evt.echo", 3000)
            recorder = rt.sandbox.recorder
            if isinstance(recorder, RecorderLayer):
                await recorder.drained()  # the recording of the burst counts
            return (time.perf_counter() - t0) / 3000

        sides = {rt.device: (lambda rt=rt: side(rt)) for rt in runtimes}
        samples = await ainterleave(sides, rounds=rounds, measure="value")
    finally:
        await pub.close()
        await sub.close()
        for rt in runtimes:
            await rt.stop()
    return Comparison.of("message path NATS → wasm echo → NATS, burst, recorder on vs off",
                         samples, "recorded", "plain", op="msg",
                         note="bursts of 3,000; the recorded side until its records are out")


async def clock_path(base: Path, rounds: int) -> list[Row]:
    """Time per tick of a clock-reading physics (and the plain one) in the record clock mode
    against the live one: the cost of reporting the clock values with each call result."""
    clocked = physics_variant(base / "clocked", "        px[i] += vx[i] * dt + "
                              "(double)(edge_clock_ms() % 1000) * 1e-9 + "
                              "(double)(edge_monotonic_ns() % 1000) * 1e-12;", version="1.1.0")
    plain = ROOT / "components" / "physics" / "manifest.toml"
    pools = {mode: SandboxPool("bench", CaptureHost(), workers=1, clock=mode)
             for mode in (CLOCK_LIVE, CLOCK_RECORD)}
    ids = [f"e{i}" for i in range(CLOCK_ENTITIES)]
    try:
        for pool in pools.values():
            await pool.start()
            for path in (clocked, plain):
                m = load_manifest(path, "bench")
                await pool.load(dataclasses.replace(m, name=path.parent.name))

        async def side(pool: SandboxPool, name: str) -> None:
            first = True
            for _ in range(CLOCK_TICKS):
                for view in pool.batch(name, CLOCK_ENTITIES):
                    view[:] = 1.0
                await pool.tick(name, CLOCK_ENTITIES, 0.05, ids if first else None)
                first = False

        rows: list[Row] = []
        for name, what in (("clocked", "tick path of a system reading both clocks 5x a tick"),
                           ("physics", "tick path of a system not reading the clock")):
            samples = await ainterleave(
                {"recording": lambda n=name: side(pools[CLOCK_RECORD], n),
                 "live": lambda n=name: side(pools[CLOCK_LIVE], n)}, rounds=rounds)
            rows.append(Comparison.of(f"{what}, clock recording on vs off", samples,
                                      "recording", "live", ops=CLOCK_TICKS, op="tick",
                                      note=f"copy mode, {CLOCK_ENTITIES} entities"))
        return rows
    finally:
        for pool in pools.values():
            await pool.stop()


async def replay_speed(base: Path, url: str, seconds: float, times: int) -> Row:
    """Record the fleet for ``seconds``, then replay that window ``times`` times."""
    out: dict[str, float] = {}
    await fleet_run(base, url, seconds, record=True, out=out)
    nc = await nats.connect(url)
    try:
        speeds, spans = [], []
        for _ in range(times):
            rep = await replay(nc.jetstream(), "demo", Window(out["t_from"], out["t_to"]))
            assert rep.identical, rep.render()
            speeds.append(rep.speed)
            spans.append(rep.recorded_s)
    finally:
        await nc.close()
    return Absolute(f"replay speed vs real time, demo fleet, {seconds:.0f} s window",
                    f"{statistics.median(speeds):.0f}x, median of {len(speeds)} "
                    f"(min {min(speeds):.0f}x, max {max(speeds):.0f}x)",
                    f"window of {statistics.median(spans):.1f} s; target >= 20x; sandbox start "
                    f"included; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


#: The replay one side of ``--against`` runs (its own process, its tree on ``PYTHONPATH``):
#: url, device, t_from, t_to -> the report's replay time and speed as JSON.
_REPLAY_ONE = """
import asyncio, json, sys
import nats
from edge.replay.replayer import replay
from edge.replay.source import Window
async def main():
    nc = await nats.connect(sys.argv[1])
    try:
        rep = await replay(nc.jetstream(), sys.argv[2], Window(float(sys.argv[3]), float(sys.argv[4])))
    finally:
        await nc.close()
    assert rep.identical, rep.render()
    print(json.dumps({"replay_s": rep.replay_s, "speed": rep.speed}))
asyncio.run(main())
"""


async def _replay_in(tree: Path, url: str, window: dict[str, float]) -> float:
    """The replay time (seconds) of ``window`` replayed by the code of ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-c", _REPLAY_ONE, url, "demo", str(window["t_from"]),
        str(window["t_to"]), cwd=tree, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"replay in {tree} exited {proc.returncode}: {err.decode()[-500:]}")
    return float(json.loads(out.decode().strip().splitlines()[-1])["replay_s"])


def _worker_once(tree: Path) -> tuple[float, float]:
    """(start, exit) seconds of one worker process of ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-P", "-m", "edge.wasm.worker"], cwd=tree, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(encode(("ping",)))
    proc.stdin.flush()
    (size,) = HEADER.unpack(proc.stdout.read(HEADER.size))
    proc.stdout.read(size)
    t1 = time.perf_counter()
    proc.stdin.close()
    proc.wait(30)
    return t1 - t0, time.perf_counter() - t1


def worker_against(other: Path, rounds: int) -> list[Row]:
    here = Path(__file__).resolve().parent.parent
    runs: dict[str, list[tuple[float, float]]] = {"this tree": [], "other tree": []}
    trees = {"this tree": here, "other tree": other}
    for r in range(rounds + 1):  # round 0 warms the page cache
        for side in (("this tree", "other tree") if r % 2 else ("other tree", "this tree")):
            sample = _worker_once(trees[side])
            if r:
                runs[side].append(sample)
    note = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    return [Comparison.of(f"sandbox worker {what}, this tree vs {other}",
                          {k: [x[i] for x in v] for k, v in runs.items()}, "this tree",
                          "other tree", op=op, note=note)
            for i, (op, what) in enumerate((("start", "start (spawn to first ping answered)"),
                                            ("exit", "exit (end of input to exit)")))]


async def speed_against(base: Path, url: str, other: Path, rounds: int) -> list[Row]:
    here = Path(__file__).resolve().parent.parent
    rows: list[Row] = []
    for seconds in (6.0, 30.0):
        window: dict[str, float] = {}
        await fleet_run(base, url, seconds, record=True, out=window)
        samples = await ainterleave({"this tree": lambda w=window: _replay_in(here, url, w),
                                     "other tree": lambda w=window: _replay_in(other, url, w)},
                                    rounds=rounds, warmup=1, measure="value")
        rows.append(Comparison.of(
            f"replay time, demo fleet, {seconds:.0f} s window, this tree vs {other}", samples,
            "this tree", "other tree", op="replay",
            note=f"sandbox start included; load average {os.getloadavg()[0]:.1f} on "
                 f"{os.cpu_count()} cores"))
    return rows


async def main(quick: bool, clock_only: bool = False, shared_only: bool = False,
               speed_only: bool = False, against: Path | None = None,
               worker_only: bool = False) -> None:
    if worker_only:
        if against is None:
            raise SystemExit("--worker needs --against TREE")
        worker_rows = worker_against(against, 6 if quick else 15)
        report(worker_rows, command=f"bench/bench_replay.py --worker --against {against}")
        return
    if speed_only and against is not None:
        with tempfile.TemporaryDirectory() as tmp:
            async with running_server(Path(tmp)) as srv:
                against_rows = await speed_against(Path(tmp), srv.url, against, 4 if quick else 8)
        report(against_rows, command=f"bench/bench_replay.py --speed --against {against}")
        return
    if speed_only:
        with tempfile.TemporaryDirectory() as tmp:
            async with running_server(Path(tmp)) as srv:
                speed_rows = [await replay_speed(Path(tmp), srv.url, s, 3) for s in (6.0, 30.0)]
        report(speed_rows, command="bench/bench_replay.py --speed")
        return
    if shared_only:
        with tempfile.TemporaryDirectory() as tmp:
            async with running_server(Path(tmp)) as srv:
                shared_rows = await copy_mode(Path(tmp), srv.url, 3 if quick else 6,
                                              8.0 if quick else 14.0)
        report(shared_rows, command="bench/bench_replay.py --shared")
        return
    if clock_only:
        with tempfile.TemporaryDirectory() as tmp:
            rows = await clock_path(Path(tmp), 4 if quick else 8)
        report(rows, command="bench/bench_replay.py --clock")
        return
    seconds = 3.0 if quick else 6.0
    rounds = 2 if quick else 4
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        async with running_server(base) as srv:
            last: dict[str, float] = {}
            rates: list[float] = []

            async def on() -> float:
                value = await fleet_run(base, srv.url, seconds, record=True, out=last)
                rates.append(last["bytes_per_s"])
                return value

            async def off() -> float:
                return await fleet_run(base, srv.url, seconds, record=False, out={})

            samples = await ainterleave({"recording": on, "off": off}, rounds=rounds, warmup=0,
                                        measure="value")
            burst = await message_path(base, srv.url, 3 if quick else 6)
            clock_rows = await clock_path(base, 4 if quick else 8)
            copy_rows = await copy_mode(base, srv.url, 3 if quick else 6, 8.0 if quick else 14.0)
            nc = await nats.connect(srv.url)
            try:
                js = nc.jetstream()
                window = Window(last["t_from"], last["t_to"])
                speeds, spans = [], []
                for _ in range(3):
                    rep = await replay(js, "demo", window)
                    assert rep.identical, rep.render()
                    speeds.append(rep.speed)
                    spans.append(rep.recorded_s)
            finally:
                await nc.close()
    rows: list[Row] = [
        Comparison.of("demo fleet CPU per wall second, recorder on vs off", samples,
                      "recording", "off", op="",
                      note="CPU s per wall s (0.05 = 5 % of a core): runtime process + sandbox worker; 3 systems, 5 drones"),
        burst,
        *clock_rows,
        *copy_rows,
        Absolute("recording rate, demo fleet (5 drones)",
                 f"{statistics.median(rates) / 1024:.1f} KiB/s, median of {len(rates)} "
                 f"(min {min(rates) / 1024:.1f}, max {max(rates) / 1024:.1f})",
                 "REC stream bytes"),
        Absolute("replay speed vs real time, demo fleet",
                 f"{statistics.median(speeds):.0f}x, median of {len(speeds)} "
                 f"(min {min(speeds):.0f}x, max {max(speeds):.0f}x)",
                 f"window of {statistics.median(spans):.1f} s; target >= 20x; sandbox start included"),
    ]
    for row in rows:
        print(row.line())
    report(rows, command="bench/bench_replay.py")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clock", action="store_true", help="only the clock path")
    ap.add_argument("--shared", action="store_true", help="only the copy mode's cost on the tick")
    ap.add_argument("--speed", action="store_true", help="only the replay speed (6 s and 30 s windows)")
    ap.add_argument("--against", type=Path, default=None,
                    help="with --speed: replay the same windows by this tree and by the checkout "
                         "TREE, interleaved")
    ap.add_argument("--worker", action="store_true",
                    help="with --against: only a sandbox worker's start and exit")
    args = ap.parse_args()
    if args.against is not None and not (args.speed or args.worker):
        ap.error("--against needs --speed or --worker")
    if args.worker and args.against is None:
        ap.error("--worker needs --against TREE")
    asyncio.run(main(args.quick, args.clock, args.shared, args.speed, args.against,
                     args.worker))
