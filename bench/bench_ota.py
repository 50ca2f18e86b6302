"""Benchmarks of over-the-air updates (docs/ota.md), with real nats-servers, runtimes and wasm.

1. Activation gap: a component ticking at 20 Hz is updated (a warm-standby swap: the new
   version is staged beside the old one, which ticks on; it takes the old one's next scheduled
   tick); the time from the start of the old version's last tick to the start of the new one's
   first (a normal interval is one period, 50 ms; target: at most one period lost).
   Read from the tick loops' start times, one sample per update.
2. Fault on probation -> previous version running again (target 2 s): the new version traps on
   its first tick; the OTA layer's ``last_rollback_ms`` (from the fault report to the previous
   version loaded), one sample per update.
3. Bytes fetched over the link per component update and per model update (TUF metadata + the
   artifact), counted by the device's JetStream fetcher.
4. Rollout of a component update to N devices (default 10; real device nats-servers as leaves
   of one hub, one runtime each), canary 1 then batches of 3, probation 1 s: time from start to
   all committed; the same with a device of the first batch offline (stopped) for its first 5 s.

5. A config fragment update and a policy update on a device started from a config file: bytes
   fetched over the link (TUF metadata + the artifact) and the time from the desired state to
   the new fragment's live section in force (the safety envelope's limit) or the new policy
   deciding, one sample per update.

All are absolute figures (no natural baseline), labelled so; rounds are medians.

    python bench/bench_ota.py [--quick] [--devices 10] [--only settings]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ota"))

import nats  # noqa: E402

from edge.ota import hub, repo as fleet, rollout  # noqa: E402
from edge.ota.layer import OtaLayer  # noqa: E402
from edge.ota.rollout import RolloutSpec  # noqa: E402
from edge.runtime import Runtime  # noqa: E402
from edge.sync.hub.fleet import provision_device  # noqa: E402
from edge.sync.hub.server import HubServer  # noqa: E402
from harness import Absolute, Row, report  # noqa: E402
from rigs.nats import server_factory  # noqa: E402
from support import TRAP_CODE, component, device_config, leaf_device_config, publish_component  # noqa: E402

TICK_HZ = 20.0


def _ota(rt: Runtime) -> OtaLayer:
    assert rt.layers is not None
    layer = [la for la in rt.layers if la.name == "ota"][0]
    assert isinstance(layer, OtaLayer)
    return layer


async def _until(pred: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.002)


async def single_device(tmp: Path, rounds: int) -> list[Row]:
    rows: list[Row] = []
    async with server_factory(tmp) as make:
        srv = await make("hub")
        nc = await nats.connect(srv.url)
        js = nc.jetstream()
        repo = tmp / "fleet"
        fleet.keygen(repo)
        src = tmp / "src"
        for i in range(rounds + 1):
            publish_component(repo, tmp, component(src, "blink", f"1.0.{i}", tick_hz=TICK_HZ))
            publish_component(repo, tmp, component(src, "blink", f"9.0.{i}", TRAP_CODE, tick_hz=TICK_HZ))
        await fleet.upload(js, repo)
        rt = Runtime(device_config(tmp, srv.url, repo / "metadata" / "1.root.json", probation_s=0.2))
        await rt.start()
        ota = _ota(rt)
        try:
            await hub.set_desired(js, "dev1", "r0", {"blink": "1.0.0"})
            await _until(lambda: ota.state.revision == "r0")
            gaps, rollbacks, update_bytes = [], [], []
            switches: list[float] = []
            for i in range(1, rounds + 1):
                # activation gap: last tick of the old version -> first tick of the new one
                # (tick start to tick start: the old loop's last_at and the new one's first_at, both
                # loop times; a period is 50 ms)
                old_tick = rt.sandbox.components["blink"].tick
                assert old_tick is not None
                before_bytes = ota.trust.bytes_in if ota.trust else 0
                await hub.set_desired(js, "dev1", f"r{i}", {"blink": f"1.0.{i}"})
                ota.wake()
                while True:
                    cur = rt.sandbox.components.get("blink")
                    tick = cur.tick if cur is not None else None
                    if tick is not None and tick is not old_tick and tick.stats.ticks > 0:
                        assert tick.first_at is not None and old_tick.last_at is not None
                        gaps.append(tick.first_at - old_tick.last_at)
                        break
                    await asyncio.sleep(0.001)
                await _until(lambda i=i: ota.state.revision == f"r{i}")
                if ota.last_switch_ms is not None:
                    switches.append(ota.last_switch_ms)
                update_bytes.append((ota.trust.bytes_in if ota.trust else 0) - before_bytes)
                # a fault on probation: back to the previous version
                n = ota.counters["rolled_back"]
                await hub.set_desired(js, "dev1", f"bad{i}", {"blink": f"9.0.{i}"})
                ota.wake()
                await _until(lambda n=n: ota.counters["rolled_back"] > n)
                assert ota.last_rollback_ms is not None
                rollbacks.append(ota.last_rollback_ms / 1000)
                await hub.set_desired(js, "dev1", f"r{i}", {"blink": f"1.0.{i}"})
        finally:
            await rt.stop()
            await nc.close()
    period = 1 / TICK_HZ
    late = statistics.median(gaps) - period
    missed = sum(g > 1.5 * period for g in gaps)
    rows.append(Absolute.of("OTA activation gap at 20 Hz: start of the old version's last tick -> start of the "
                            "new one's first (a normal interval is one period, 50 ms)", gaps,
                            note=f"{late * 1000:+.1f} ms against one period (median); {missed} of {len(gaps)} "
                                 f"updates over 1.5 periods; the swap itself (stage + promote, last_switch_ms) "
                                 f"{statistics.median(switches):.1f} ms; target: at most one period lost; max "
                                 f"{max(gaps) * 1000:.1f} ms over {len(gaps)} updates"))
    rows.append(Absolute.of("OTA fault on probation (trap) -> previous version running", rollbacks,
                            note=f"target 2 s; max {max(rollbacks) * 1000:.0f} ms over {len(rollbacks)}"))
    rows.append(Absolute(what="OTA bytes fetched per component update (TUF metadata + artifact)",
                         value=f"{statistics.median(update_bytes):,.0f} B",
                         note="payload over the link; the artifact alone is a 10 KiB tar"))
    return rows


async def model_update(tmp: Path, rounds: int) -> list[Row]:
    """Bytes fetched per model update (the demo's face model, ~230 KB, with its probe) and the
    time from the desired state to the new model serving."""
    from edge.inference.blazeface import face_model_path
    from edge.inference.config import ModelSpec
    from edge.ota.models import pack_model

    face = face_model_path().read_bytes()
    async with server_factory(tmp) as make:
        srv = await make("hub")
        nc = await nats.connect(srv.url)
        js = nc.jetstream()
        repo = tmp / "fleet"
        fleet.keygen(repo)
        art = pack_model(face)
        for i in range(rounds + 1):
            # the same weights, published as another version (another artifact: one byte differs)
            fleet.publish(repo, art + bytes(i + 1), kind="model", name="face", version=f"1.0.{i}")
        await fleet.upload(js, repo)
        first = tmp / "face.tflite"
        first.write_bytes(face)
        cfg = device_config(tmp, srv.url, repo / "metadata" / "1.root.json", probation_s=0.1)
        cfg.models.append(ModelSpec("face", path=str(first)))
        rt = Runtime(cfg)
        await rt.start()
        ota = _ota(rt)
        sizes, times = [], []
        try:
            for i in range(rounds + 1):
                before = ota.trust.bytes_in if ota.trust else 0
                t0 = time.monotonic()
                await hub.put_desired(js, "dev1", {"revision": f"m{i}", "models": {"face": f"1.0.{i}"}})
                ota.wake()
                await _until(lambda i=i: ota.state.revision == f"m{i}")
                if i:  # the first also fetched the initial metadata
                    times.append(time.monotonic() - t0)
                    sizes.append((ota.trust.bytes_in if ota.trust else 0) - before)
        finally:
            await rt.stop()
            await nc.close()
    return [Absolute(what="OTA bytes fetched per model update (face model + probe, TUF metadata)",
                     value=f"{statistics.median(sizes):,.0f} B",
                     note=f"model file {len(face):,} B; desired state -> new model serving: median "
                          f"{statistics.median(times) * 1000:.0f} ms (probe included)")]


async def settings_update(tmp: Path, rounds: int) -> list[Row]:
    """Bytes and time of config fragment and policy updates (see the module docstring, 5)."""
    from settings_rig import SettingsRig

    rows: list[Row] = []
    async with server_factory(tmp) as make:
        srv = await make("hub")
        nc = await nats.connect(srv.url)
        rig = SettingsRig(tmp, nc, srv.url, probation_s=0.1)
        for i in range(rounds + 1):
            rig.fragment("limits", f"1.0.{i}", f"[safety]\nceiling = {50.0 + i}\nmax_horizontal_speed = 4.0\n")
            rig.policy("fleet", f"1.0.{i}", f'[[rule]]\nname = "r{i}"\neffect = "allow"\n'
                                            f'principal = "caller:tester"\naction = "command"\nresource = "e1.v{i}"\n')
        await rig.upload()
        rt = await rig.start()
        ota = _ota(rt)
        policy = rig.layer("policy")
        sizes: dict[str, list[int]] = {"config": [], "policy": []}
        times: dict[str, list[float]] = {"config": [], "policy": []}
        artifact_sizes = {"config": 0, "policy": 0}
        try:
            await rig.desire("s0", {"blink": "1.0.0", "config:limits": "1.0.0", "policy:fleet": "1.0.0"})
            ota.wake()
            await _until(lambda: ota.state.revision == "s0" and ota.state.probation is None)
            for i in range(1, rounds + 1):
                for kind in ("config", "policy"):
                    # round i: the fragment goes to 1.0.i first (the policy still 1.0.{i-1}), then the policy
                    cur = {"blink": "1.0.0", "config:limits": f"1.0.{i}",
                           "policy:fleet": f"1.0.{i if kind == 'policy' else i - 1}"}
                    before = ota.trust.bytes_in if ota.trust else 0
                    t0 = time.monotonic()
                    await rig.desire(f"s{i}{kind}", cur)
                    ota.wake()
                    if kind == "config":
                        await _until(lambda i=i: rig.ceiling() == 50.0 + i)
                    else:
                        await _until(lambda i=i: (policy.artifact or {}).get("version") == f"1.0.{i}")
                    times[kind].append(time.monotonic() - t0)
                    await _until(lambda i=i, kind=kind: ota.state.revision == f"s{i}{kind}"
                                 and ota.state.probation is None)
                    sizes[kind].append((ota.trust.bytes_in if ota.trust else 0) - before)
            repo = fleet.open_repo(rig.repo).load("targets").signed.targets
            artifact_sizes = {"config": repo["config/limits/1.0.1.tar"].length,
                              "policy": repo["policy/fleet/1.0.1.tar"].length}
        finally:
            await rig.stop()
            await nc.close()
    for kind, what in (("config", "config fragment ([safety] live)"), ("policy", "policy")):
        rows.append(Absolute(what=f"OTA bytes fetched per {what} update (TUF metadata + artifact)",
                             value=f"{statistics.median(sizes[kind]):,.0f} B",
                             note=f"the artifact alone {artifact_sizes[kind]:,} B (a tar of one file); desired "
                                  f"state -> in force: median {statistics.median(times[kind]) * 1000:.0f} ms "
                                  f"(max {max(times[kind]) * 1000:.0f} ms over {len(times[kind])} updates)"))
    return rows


async def fleet_rollout(tmp: Path, devices: int) -> list[Row]:
    server = HubServer(tmp / "hub")
    await server.start(supervise=True)
    cloud = await nats.connect(server.client_url)
    js = cloud.jetstream()
    repo = tmp / "fleet"
    fleet.keygen(repo)
    for v in ("1.0.0", "2.0.0", "3.0.0"):
        publish_component(repo, tmp, component(tmp / "src", "blink", v))
    await fleet.upload(js, repo)
    names = [f"d{i:02d}" for i in range(devices)]
    rts: dict[str, Runtime] = {}
    creds = {}
    results: dict[str, float] = {}
    try:
        for d in names:
            creds[d] = await server.add_device(d)
            await provision_device(js, d)
            await rollout.set_labels(js, d, {"fleet": "bench"})
            await hub.set_desired(js, d, "base", {"blink": "1.0.0"})

        def cfg(d: str) -> Any:
            assert server.leaf_url is not None and creds[d].password is not None
            return leaf_device_config(tmp, server.leaf_url, creds[d].password, repo / "metadata" / "1.root.json",
                                      device=d, probation_s=1.0)

        for d in names:
            rts[d] = Runtime(cfg(d))
            await rts[d].start()
        await _until(lambda: all(_ota(r).state.revision == "base" for r in rts.values()), 120)
        spec = RolloutSpec("bench-1", {"fleet": "bench"}, {"blink": "2.0.0"}, canary=1, batch=3,
                           max_failure_pct=0, probation_s=1.0, device_timeout_s=120)
        t0 = time.monotonic()
        rec = await rollout.run_rollout(js, spec)
        results["all online"] = time.monotonic() - t0
        assert rec.status == "completed", rec.halt_reason
        # one device offline for the first seconds of the next rollout
        offline = names[1]  # in the first batch after the canary: the rollout waits for it
        await rts.pop(offline).stop()

        async def come_back() -> None:
            await asyncio.sleep(5.0)
            rts[offline] = Runtime(cfg(offline))
            await rts[offline].start()

        back = asyncio.create_task(come_back())
        spec2 = RolloutSpec("bench-2", {"fleet": "bench"}, {"blink": "3.0.0"}, canary=1, batch=3,
                            max_failure_pct=0, probation_s=1.0, device_timeout_s=120)
        t0 = time.monotonic()
        rec = await rollout.run_rollout(js, spec2)
        results["one offline 5 s"] = time.monotonic() - t0
        await back
        assert rec.status == "completed", rec.halt_reason
    finally:
        for r in rts.values():
            await r.stop()
        await cloud.close()
        await server.stop()
    return [Absolute(what=f"OTA rollout to {devices} devices (leaf servers + runtimes), canary 1 then batches "
                          "of 3, probation 1 s: start -> all committed",
                     value=f"{results['all online']:.1f} s",
                     note=f"one device offline for the first 5 s: {results['one offline 5 s']:.1f} s")]


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--only", choices=("all", "settings"), default="all",
                    help="settings: only the config fragment and policy updates")
    args = ap.parse_args()
    rounds = 3 if args.quick else 8
    with tempfile.TemporaryDirectory(prefix="edge-bench-ota-") as tmp:
        rows = await settings_update(Path(tmp) / "settings", rounds)
        if args.only == "settings":
            report(rows, command="bench/bench_ota.py --only settings")
            return 0
        rows += await single_device(Path(tmp) / "one", rounds)
        rows += await model_update(Path(tmp) / "model", rounds)
        rows += await fleet_rollout(Path(tmp) / "fleet", args.devices if not args.quick else min(args.devices, 5))
    report(rows, command="bench/bench_ota.py")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
