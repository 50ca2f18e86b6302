"""Replay end to end: a recorded demo window re-run in an isolated sandbox, what-if candidates,
windows across a restart and a component update, and the fault paths."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from nats.aio.client import Client

from edge.replay.records import REC_STREAM, ReplayError, unpack_columns
from edge.replay.replayer import Replayer, replay
from edge.replay.source import Window, parse_seq, parse_time
from edge.runtime import Runtime
from edge.wasm.protocol import CLOCK_REPORT_MAX
from replay_support import (DEVICE, ROOT, all_records, fleet_config, physics_variant, publish_garbage,
                     run_for, ticks_of)


async def test_recorded_window_replays_identically(tmp_path: Path, nats_url: str,
                                                   js_nc: Client) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    t0 = time.time()
    await run_for(cfg, 3.0)
    js = js_nc.jetstream()
    records = await all_records(js)
    kinds = {r["k"] for _, r in records.items}
    assert {"start", "load", "tick", "snap"} <= kinds
    # the window starts 1 s after the last component load (a slow start-up takes longer than
    # that), so each component has ticks before it to warm up on
    loaded = max(r["t"] for _, r in records.items if r["k"] == "load")
    assert loaded >= t0
    window = Window(loaded + 1.0, time.time())
    report = await replay(js, DEVICE, window)
    assert report.identical, report.render()
    assert set(report.components) == {"physics", "patrol", "battery", "follow-drone-0"}
    assert report.components["follow-drone-0"].kind == "agent"
    in_window = [r for s, r in ticks_of(records, "physics") if window.contains(s, r["t"])]
    assert report.components["physics"].ticks == len(in_window) > 20
    assert report.components["physics"].warmup_ticks > 0  # from the load, before the window
    assert report.components["patrol"].ticks > 10
    # the recorded outputs are the component values the world got: physics moved drone-1
    first, last = in_window[0], in_window[-1]
    ncols = 3
    a = unpack_columns(first["out"], ncols, len(first["ids"]), "out")
    b = unpack_columns(last["out"], ncols, len(last["ids"]), "out")
    assert not np.array_equal(a, b)
    assert "every output is identical" in report.render()


async def test_changed_version_diverges_at_the_right_tick(tmp_path: Path, nats_url: str,
                                                          js_nc: Client) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    t0 = time.time()
    await run_for(cfg, 3.0)
    js = js_nc.jetstream()
    records = await all_records(js)
    window = Window(t0 + 0.5, time.time())
    ticks = [(s, r) for s, r in ticks_of(records, "physics") if window.contains(s, r["t"])]
    # a candidate that moves twice as far once position.x passes a limit seen in the window
    tops = sorted(float(np.max(unpack_columns(r["in"], 6, len(r["ids"]), "in")[0]))
                  for _, r in ticks)
    limit = tops[len(tops) * 3 // 5]
    manifest = physics_variant(tmp_path / "cand",
                               f"        px[i] += vx[i] * dt * (px[i] > {limit!r} ? 2.0 : 1.0);")
    expected = None
    for seq, r in ticks:  # the first tick where the candidate computes something else
        cols = unpack_columns(r["in"], 6, len(r["ids"]), "in")
        hit = np.nonzero((cols[0] > limit) & (cols[3] != 0.0))[0]
        if len(hit):
            expected = (seq, r["step"], r["ids"][int(hit[0])])
            break
    assert expected is not None
    report = await replay(js, DEVICE, window, systems=["physics"],
                          what_if={"physics": manifest})
    assert not report.identical
    first = report.first
    assert first is not None
    assert (first.seq, first.step, first.entity) == expected
    assert first.component == "physics" and first.what == "columns"
    assert first.field == "position.x"
    assert first.replayed != first.recorded
    assert first.context["inputs"]["position.x"]
    assert set(report.components) == {"physics"}
    assert report.components["physics"].versions[-1]["what_if"] is True
    text = report.render()
    assert f"physics step {expected[1]} (stream seq {expected[0]}" in text
    assert "position.x of " + expected[2] in text
    # the same candidate as a bare module (the recorded manifest, this module)
    wasm = manifest.parent / "physics.wasm"
    again = await replay(js, DEVICE, window, systems=["physics"], what_if={"physics": wasm})
    assert again.first is not None and again.first.seq == expected[0]


async def test_window_across_a_restart_and_a_component_update(tmp_path: Path, nats_url: str,
                                                              js_nc: Client) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    t0 = time.time()
    await run_for(cfg, 1.5)
    rt = Runtime(cfg)  # the same device again: a new run of the runtime
    await rt.start()
    try:
        await asyncio.sleep(1.0)
        manifest = physics_variant(tmp_path / "v2", "        px[i] += 1.5 * vx[i] * dt;")
        await rt.unload_component("physics")
        await rt.load_component(str(manifest))
        await asyncio.sleep(1.5)
    finally:
        await rt.stop()
    js = js_nc.jetstream()
    records = await all_records(js)
    assert len({r["run"] for _, r in records.items}) == 2
    report = await replay(js, DEVICE, Window(t0, time.time()))
    assert report.identical, report.render()
    versions = [(v["version"], v["what_if"]) for v in report.components["physics"].versions]
    assert versions == [("1.0.0", False), ("1.0.0", False), ("2.0.0", False)]
    shas = [v["sha256"] for v in report.components["physics"].versions]
    assert shas[0] == shas[1] != shas[2]


async def test_replays_a_copy_of_the_stream_without_the_device(tmp_path: Path, nats_url: str,
                                                               js_nc: Client) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    t0 = time.time()
    await run_for(cfg, 2.0)
    js = js_nc.jetstream()
    # a copy under another name, as a hub keeps a device's synced streams (the device is gone)
    from nats.js.api import StreamConfig, StreamSource

    await js.add_stream(StreamConfig(name="REC_demo", sources=[StreamSource(name=REC_STREAM)]))
    info = await js.stream_info(REC_STREAM)
    for _ in range(100):
        if (await js.stream_info("REC_demo")).state.messages >= info.state.messages:
            break
        await asyncio.sleep(0.05)
    await js.delete_stream(REC_STREAM)
    report = await replay(js, DEVICE, Window(t0 + 0.5, time.time()), stream="REC_demo")
    assert report.identical, report.render()
    assert report.components["physics"].ticks > 10
    with pytest.raises(ReplayError, match="no stream REC"):
        await replay(js, DEVICE, Window())


async def test_malformed_records_are_counted_and_skipped(tmp_path: Path, nats_url: str,
                                                         js_nc: Client) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    t0 = time.time()
    await run_for(cfg, 1.5)
    js = js_nc.jetstream()
    await publish_garbage(js)
    report = await replay(js, DEVICE, Window(t0 + 0.5))
    assert report.malformed == 2
    assert report.identical, report.render()


async def test_refusals(tmp_path: Path, nats_url: str, js_nc: Client) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    t0 = time.time()
    await run_for(cfg, 1.5)
    js = js_nc.jetstream()
    with pytest.raises(ReplayError, match="no record falls in the window"):
        await replay(js, DEVICE, Window(t0 - 100, t0 - 50))
    with pytest.raises(ReplayError, match="nothing of system 'nosuch'"):
        await replay(js, DEVICE, Window(t0), systems=["nosuch"])
    with pytest.raises(ReplayError, match="is not a file"):
        await replay(js, DEVICE, Window(t0), what_if={"physics": tmp_path / "missing.wasm"})
    # a candidate whose query differs cannot take the recorded inputs
    patrol = ROOT / "components" / "patrol" / "manifest.toml"
    with pytest.raises(ReplayError, match="the recorded inputs do not fit it"):
        await replay(js, DEVICE, Window(t0), what_if={"physics": patrol})
    # a record that decodes but lacks its fields names its stream sequence
    records = await all_records(js)
    seq, rec = ticks_of(records, "physics")[5]
    del rec["in"]
    with pytest.raises(ReplayError, match=f"record at stream seq {seq}"):
        await Replayer(DEVICE, records, Window()).run()
    with pytest.raises(ReplayError, match="is not a time"):
        parse_time("yesterday")
    with pytest.raises(ReplayError, match="FROM:TO"):
        parse_seq("12")
    with pytest.raises(ReplayError, match="ends"):
        Window(10.0, 5.0)
    assert parse_seq("5:") == (5, 2**63)
    assert abs(parse_time("-30s", now=100.0) - 70.0) < 1e-9
    assert parse_time("2026-12-02T02:10:00Z") == 1796177400.0


async def test_recording_off_records_nothing(tmp_path: Path, nats_url: str,
                                             js_nc: Client) -> None:
    await run_for(fleet_config(tmp_path / "dev", nats_url), 1.0, record=False)
    js = js_nc.jetstream()
    with pytest.raises(ReplayError, match="nothing was recorded"):
        await replay(js, DEVICE, Window())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edge.cli.main", "replay", *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


async def test_cli(tmp_path: Path, nats_url: str, js_nc: Client) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    t0 = time.time()
    await run_for(cfg, 2.0)
    base = ["--url", nats_url, "--device", DEVICE, "--from", repr(t0 + 0.5)]
    res = await asyncio.to_thread(_cli, *base, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["identical"] is True and out["components"]["physics"]["ticks"] > 10
    manifest = physics_variant(tmp_path / "cand", "        px[i] += 2.0 * vx[i] * dt;")
    res = await asyncio.to_thread(_cli, *base, "--system", "physics", "--with",
                                  f"physics={manifest}")
    assert res.returncode == 3, res.stderr
    assert "first divergence: physics step" in res.stdout
    res = await asyncio.to_thread(_cli, *base, "--with", "physics")
    assert res.returncode == 1 and "is not NAME=PATH" in res.stderr
    res = await asyncio.to_thread(_cli, "--url", nats_url, "--device", DEVICE, "--seq", "1:40")
    assert res.returncode == 0, res.stdout + res.stderr


async def test_a_tick_too_large_to_record_is_marked_and_refused_in_replay() -> None:
    from edge.replay.recorder import MAX_TICK_BYTES, RecorderLayer
    from edge.replay.source import Records
    from edge.wasm.manifest import load_manifest, read_module

    manifest = load_manifest(ROOT / "components" / "physics" / "manifest.toml", DEVICE)
    rec = RecorderLayer()
    rec.on_load(manifest, read_module(manifest), {})
    n = MAX_TICK_BYTES // (8 * len(manifest.columns)) + 1
    cols = [np.zeros(n) for _ in manifest.columns]
    rec.on_tick("physics", 0.05, [f"e{i}" for i in range(n)], cols, cols, True)
    rec.on_tick("physics", 0.05, ["e0"], [c[:1] for c in cols], [c[:1] for c in cols], True)
    items = [(i + 1, body) for i, (_, _, body) in enumerate(rec._queue)]
    assert items[1][1]["too_large"] > MAX_TICK_BYTES and "in" not in items[1][1]
    assert "in" in items[2][1]  # a small tick is recorded in full again
    with pytest.raises(ReplayError, match="too large to record"):
        await Replayer(DEVICE, Records(items), Window()).run()


async def test_a_message_system_replays_its_messages_and_publishes(tmp_path: Path, nats_url: str,
                                                                   js_nc: Client) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    cfg.components = [ROOT / "components" / "echo" / "manifest.toml"]
    rt = Runtime(cfg)
    await rt.start()
    try:
        def heard() -> int:
            return int(rt.components_status()[0]["inbox"]["received"])

        while heard() == 0:  # until the component's subscription hears (a probe, not compared)
            await js_nc.publish(f"edge.{DEVICE}.cmd.echo", b"probe")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        t0 = time.time()
        for i in range(20):
            await js_nc.publish(f"edge.{DEVICE}.cmd.echo", f"hello {i}".encode())
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
    finally:
        await rt.stop()
    js = js_nc.jetstream()
    records = await all_records(js)
    pubs = [p for _, r in records.items if r["k"] == "pub" and r.get("c") == "echo"
            and r["t"] >= t0 for p in r["pubs"]]
    assert len(pubs) == 20
    report = await replay(js, DEVICE, Window(t0))
    assert report.identical, report.render()
    echo = report.components["echo"]
    assert echo.publishes == 20 and echo.messages >= 1
    # what-if: a module that publishes nothing diverges at the first recorded publish
    report2 = await replay(js, DEVICE, Window(t0), what_if={"echo": changed_echo(tmp_path)})
    assert not report2.identical
    first = report2.first
    assert first is not None and first.what == "publish" and first.component == "echo"
    # the divergence names the call that made the publish: its msg record
    step = min(r["step"] for _, r in records.items if r["k"] == "pub" and r["t"] >= t0)
    assert first.step == step
    assert first.seq == min(s for s, r in records.items
                            if r["k"] == "msg" and r.get("step") == step and r["t"] >= t0)
    assert first.recorded.endswith("hello 0") and first.replayed is None
    assert report2.components["echo"].publishes_differing == 20


def changed_echo(tmp: Path) -> Path:
    """An echo that publishes nothing."""
    root = ROOT
    src = (root / "components" / "echo" / "echo.c").read_text()
    out = tmp / "echo2"
    out.mkdir()
    c = out / "echo.c"
    needle = "    return edge_publish(out_subject, out_len, data, data_len) == EDGE_OK ? 0 : 1;"
    assert needle in src
    c.write_text(src.replace(needle, "    (void)out_len; (void)data; (void)data_len;\n    return 0;"))
    import importlib.util

    spec = importlib.util.spec_from_file_location("edge_components_build",
                                                  root / "components" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return Path(build.compile_wasm([c], out / "echo.wasm"))


async def test_a_native_agent_replays_its_decisions_and_a_what_if_table_diverges(
        tmp_path: Path, nats_url: str, js_nc: Client) -> None:
    from edge.agents.config import parse_agents

    cfg = fleet_config(tmp_path / "dev", nats_url)
    cfg.components = []
    cfg.agents = parse_agents([{"kind": "follow", "entity": "drone-1", "name": "follower",
                                "interval": 0.1}])
    rt = Runtime(cfg)
    await rt.start()
    t0 = time.time()
    try:
        for i in range(30):  # a face drifting right, then gone
            x = 0.3 + 0.02 * i
            body = {"items": [{"label": "face", "score": 0.9, "box": [x, 0.4, x + 0.1, 0.5]}]
                    if i < 20 else []}
            await js_nc.publish(f"edge.{DEVICE}.evt.drone-1.detections", json.dumps(body).encode())
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)  # lost_timeout 1.5 s: the agent holds
    finally:
        await rt.stop()
    js = js_nc.jetstream()
    records = await all_records(js)
    decided = [d for _, r in records.items if r["k"] == "decide" for d in r["decisions"]]
    assert {"follow", "hold"} <= {d["decision"] for d in decided}, decided
    report = await replay(js, DEVICE, Window(t0 - 1.0))
    assert report.identical, report.render()
    follower = report.components["follower"]
    assert follower.kind == "agent" and follower.decisions == len(decided) > 2
    # what-if: the same agent with another gain commands other velocities
    table = tmp_path / "follower.toml"
    table.write_text('kind = "follow"\nentity = "drone-1"\nname = "follower"\ninterval = 0.1\n'
                     "gain = 8.0\n")
    report2 = await replay(js, DEVICE, Window(t0 - 1.0), what_if={"follower": table})
    assert not report2.identical
    first = report2.first
    assert first is not None and first.what == "decision" and first.component == "follower"
    first_cmd = min(s for s, r in records.items if r["k"] == "decide"
                    and any(d.get("command") for d in r["decisions"]))
    assert first.seq == first_cmd
    assert "follow -> velocity" in first.recorded and first.recorded != first.replayed
    assert report2.components["follower"].versions[-1]["what_if"] is True


async def test_a_component_that_reads_the_clock_is_flagged(tmp_path: Path, nats_url: str,
                                                            js_nc: Client) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    t0 = time.time()
    await run_for(cfg, 1.5)
    js = js_nc.jetstream()
    report = await replay(js, DEVICE, Window(t0 + 0.5))
    assert not any(c.reads_clock for c in report.components.values())  # the demo's do not
    clocked = physics_variant(tmp_path / "clk", "        px[i] += vx[i] * dt + 0.0 * (double)edge_clock_ms();")
    report2 = await replay(js, DEVICE, Window(t0 + 0.5), systems=["physics"],
                           what_if={"physics": clocked})
    assert report2.components["physics"].reads_clock
    assert "reads the clock" in report2.render()


async def test_clock_reads_are_recorded_and_replayed_from_the_record(
        tmp_path: Path, nats_url: str, js_nc: Client) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    clocked = physics_variant(tmp_path / "clk", "        px[i] += vx[i] * dt + "
                              "(double)(edge_clock_ms() % 100000000) * 1e-3 + "
                              "(double)(edge_monotonic_ns() % 1000);", version="1.1.0")
    rt = Runtime(cfg)
    await rt.start()
    try:
        await rt.unload_component("physics")
        await rt.load_component(str(clocked))
        t0 = time.time()
        await asyncio.sleep(1.5)
    finally:
        await rt.stop()
    js = js_nc.jetstream()
    records = await all_records(js)
    window = Window(t0 + 0.3, time.time())
    clocked_ticks = [(s, r) for s, r in ticks_of(records, "physics") if r.get("clock")]
    assert len(clocked_ticks) > 10
    seq0, tick0 = next((s, r) for s, r in clocked_ticks if window.contains(s, r["t"]))
    # two reads per entity, in call order: clock_ms (kind 0) then monotonic_ns (kind 1)
    assert [k for k, _ in tick0["clock"]] == [0, 1] * len(tick0["ids"])
    ms = tick0["clock"][0][1]
    assert abs(ms / 1000 - tick0["t"]) < 5.0  # a wall clock reading, in milliseconds
    report = await Replayer(DEVICE, records, window, systems=["physics"]).run()
    assert report.identical, report.render()
    phys = report.components["physics"]
    assert phys.reads_clock and phys.ticks > 10
    assert "reads the clock" in report.render()

    # the record's clock values altered at one tick: the replay answers them, and the column
    # derived from them diverges there
    altered = copy.deepcopy(records)
    for s, r in altered.items:
        if s == seq0:
            r["clock"][0][1] += 7000
    report2 = await Replayer(DEVICE, altered, window, systems=["physics"]).run()
    first = report2.first
    assert first is not None and first.seq == seq0, report2.render()
    assert first.what == "columns" and first.field == "position.x"
    assert first.replayed - first.recorded == pytest.approx(7.0, abs=0.01)
    assert report2.components["physics"].ticks_differing >= 1

    # a record with fewer clock values than the component reads: a clock divergence there
    short = copy.deepcopy(records)
    for s, r in short.items:
        if s == seq0:
            r["clock"] = r["clock"][:1]
    report3 = await Replayer(DEVICE, short, window, systems=["physics"]).run()
    assert report3.first is not None and report3.first.what == "clock"
    assert report3.first.seq == seq0 and report3.first.context["call"] == "edge_tick"

    # a malformed clock field stops the replay with its stream sequence
    bad = copy.deepcopy(records)
    for s, r in bad.items:
        if s == seq0:
            r["clock"] = [["x", 1]]
    with pytest.raises(ReplayError, match=f"stream seq {seq0}.*malformed clock"):
        await Replayer(DEVICE, bad, window, systems=["physics"]).run()


async def test_a_tick_reading_the_clock_too_often_is_marked_and_refused_in_replay(
        tmp_path: Path, nats_url: str, js_nc: Client) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    chatty = physics_variant(tmp_path / "chatty", "        for (int k = 0; k < 400; k++) "
                             "px[i] += 0.0 * (double)edge_clock_ms();\n"
                             "        px[i] += vx[i] * dt;", version="1.2.0")
    rt = Runtime(cfg)
    await rt.start()
    try:
        await rt.unload_component("physics")
        await rt.load_component(str(chatty))
        t0 = time.time()
        await asyncio.sleep(0.8)
    finally:
        await rt.stop()
    js = js_nc.jetstream()
    records = await all_records(js)
    cut = [(s, r) for s, r in ticks_of(records, "physics") if r.get("clock_cut")]
    assert cut, "3 entities x 400 reads: past the 1024 a record keeps"
    seq, tick = cut[0]
    assert len(tick["clock"]) == CLOCK_REPORT_MAX
    assert tick["clock_cut"] == 400 * len(tick["ids"]) - CLOCK_REPORT_MAX
    with pytest.raises(ReplayError, match=f"stream seq {seq}.*read the clock"):
        await Replayer(DEVICE, records, Window(t0), systems=["physics"]).run()


async def test_infer_answers_are_recorded_and_replayed_without_the_model(
        tmp_path: Path, nats_url: str, js_nc: Client) -> None:
    import importlib.util
    import struct

    from edge.inference.config import ModelSpec

    spec = importlib.util.spec_from_file_location(
        "edge_test_tflite_modelgen", ROOT / "tests" / "inference" / "tflite_modelgen.py")
    assert spec is not None and spec.loader is not None
    modelgen = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = modelgen  # its dataclasses look their module up
    spec.loader.exec_module(modelgen)
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    model = tmp_path / "fc.tflite"
    model.write_bytes(modelgen.float_fc(w, b))
    bspec = importlib.util.spec_from_file_location("edge_components_build",
                                                   ROOT / "components" / "build.py")
    assert bspec is not None and bspec.loader is not None
    build = importlib.util.module_from_spec(bspec)
    bspec.loader.exec_module(build)
    module = build.compile_wasm([ROOT / "tests" / "wasm" / "components" / "infer.c"],
                                tmp_path / "infer.wasm")
    manifest = tmp_path / "inf.toml"
    manifest.write_text(f'name = "inf"\nversion = "1.0.0"\ncontract = 1\nmodule = "{module}"\n'
                        f'[run]\nsubscribe = ["edge.{DEVICE}.cmd.inf"]\npublish = ["t.out"]\n'
                        'models = ["fc"]\n')
    cfg = fleet_config(tmp_path / "dev", nats_url)
    cfg.components = [manifest]
    cfg.models = [ModelSpec(name="fc", path=str(model))]

    def command(x: np.ndarray) -> bytes:
        return struct.pack("<iiii", 1, -1, 12, 2) + b"fc" + x.astype(np.float32).tobytes()

    rt = Runtime(cfg)
    await rt.start()
    try:
        while int(rt.components_status()[0]["inbox"]["received"]) == 0:
            await js_nc.publish(f"edge.{DEVICE}.cmd.inf", command(np.zeros(4)))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        t0 = time.time()
        for _ in range(10):
            await js_nc.publish(f"edge.{DEVICE}.cmd.inf", command(rng.normal(size=4)))
            await asyncio.sleep(0.03)
        await asyncio.sleep(0.5)
    finally:
        await rt.stop()
    js = js_nc.jetstream()
    records = await all_records(js)
    infers = [r for _, r in records.items if r["k"] == "infer" and r["t"] >= t0]
    assert len(infers) == 10 and all("out" in r for r in infers)
    import hashlib

    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert {r["model_sha"] for r in infers} == {sha}  # the model that answered
    # the replay has no model at all: the outputs it publishes are the recorded answers
    report = await replay(js, DEVICE, Window(t0))
    assert report.identical, report.render()
    assert report.components["inf"].publishes == 10
    assert report.components["inf"].models == {"fc": [sha]}
    assert f"model fc: {sha[:12]}" in report.render()
    # an answer missing from the record is a divergence at that call
    last_seq = max(s for s, r in records.items if r["k"] == "infer")
    records.items = [(s, r) for s, r in records.items if s != last_seq]
    report2 = await Replayer(DEVICE, records, Window(t0)).run()
    assert report2.first is not None and report2.first.what == "infer"


async def test_a_window_whose_load_aged_out_starts_from_a_checkpoint(
        tmp_path: Path, nats_url: str, js_nc: Client) -> None:
    cfg = fleet_config(tmp_path / "dev", nats_url)
    rt = Runtime(cfg)
    await rt.start()
    try:
        await asyncio.sleep(1.0)
        status = rt.status()["recorder"]
        assert status["records"] > 0 and status["dropped"] == 0 and status["stream"] == "REC"
        await asyncio.sleep(1.0)
    finally:
        await rt.stop()
    js = js_nc.jetstream()
    records = await all_records(js)
    ticks = ticks_of(records, "physics")
    # as if the load had aged out and only a checkpoint taken mid-run were left
    mid_seq, mid = ticks[len(ticks) // 2]
    load = next(r for _, r in records.items if r["k"] == "load" and r["c"] == "physics")
    ckpt = {**load, "checkpoint": True, "t": mid["t"]}
    items = [(s, r) for s, r in records.items if r is not load]
    at = next(i for i, (s, _) in enumerate(items) if s == mid_seq)
    items.insert(at, (mid_seq, ckpt))
    records.items = items
    window = Window(mid["t"])
    report = await Replayer(DEVICE, records, window, systems=["physics"]).run()
    physics = report.components["physics"]
    assert physics.exact_start is False and physics.warmup_ticks == 0
    assert physics.ticks > 5
    assert report.identical, report.render()  # physics keeps no state between calls
    assert "(started from a checkpoint)" in report.render()


async def test_a_batch_too_large_to_record_keeps_the_shared_mode(tmp_path: Path, nats_url: str,
                                                                 js_nc: Client) -> None:
    from edge.config import EntitySpec
    from edge.replay.recorder import MAX_TICK_BYTES

    cfg = fleet_config(tmp_path / "dev", nats_url)
    cfg.components = [ROOT / "components" / "physics" / "manifest.toml"]
    n = MAX_TICK_BYTES // (6 * 8) + 100
    cfg.entities = [EntitySpec(f"p{i}", "point", {}, {"position": {"x": 0.0},
                                                       "velocity": {"x": 1.0}})
                    for i in range(n)]
    rt = Runtime(cfg)
    await rt.start()
    try:
        await asyncio.sleep(1.0)
        loop = rt.sandbox.components["physics"].tick
        assert loop is not None and loop.mode == "shared" and loop.stats.ticks > 3
        assert loop._shared is not None  # never fell back to copies
        assert rt.world.get("p7", "position")["x"] > 0.1
    finally:
        await rt.stop()
    js = js_nc.jetstream()
    ticks = ticks_of(await all_records(js), "physics")
    assert ticks and all(r["too_large"] >= n * 48 and "in" not in r for _, r in ticks)
    with pytest.raises(ReplayError, match="too large to record"):
        await replay(js, DEVICE, Window())
