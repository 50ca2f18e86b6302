"""The concrete promises of docs/replay.md, checked from the doc alone: the `edge replay` CLI
(windows by time and by sequence, one system, what-if, exit codes and the one-sentence errors),
the records and their subjects, the stream's limits and the report at a divergence."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

import edge.replay.source as source
from edge.replay.records import REC_STREAM, ReplayError
from edge.replay.replayer import replay
from edge.replay.source import Window
from replay_support import DEVICE, ROOT, all_records, fleet_config, physics_variant, run_for


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edge.cli.main", "replay", *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_cli, *args)


def one_sentence_error(res: subprocess.CompletedProcess[str]) -> str:
    """Exit 1 and one sentence on stderr (no traceback)."""
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert err and "\n" not in err and "Traceback" not in err, res.stderr
    return err


def iso(t: float, *, zone: bool = True) -> str:
    stamp = dt.datetime.fromtimestamp(t, dt.UTC).replace(tzinfo=None)
    text = stamp.isoformat(timespec="milliseconds")
    return text + "Z" if zone else text


async def test_records_their_subjects_fields_and_the_stream_limits(tmp_path: Path, nats_url: str,
                                                                   js_nc: Client) -> None:
    await run_for(fleet_config(tmp_path / "dev", nats_url), 2.0)
    js = js_nc.jetstream()
    info = await js.stream_info(REC_STREAM)
    assert info.config.subjects == [f"edge.{DEVICE}.rec.>"]
    assert info.config.max_age == 3600.0
    assert info.config.max_bytes == 256 * 2**20
    records = await all_records(js)
    kinds = [r["k"] for _, r in records.items]
    assert kinds[0] == "start"
    run = records.items[0][1]["run"]
    assert all(r.get("run") == run for _, r in records.items)  # every record carries it
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for _, r in records.items:
        by_kind.setdefault(r["k"], []).append(r)
    # the policy in use right after start (reload: false)
    policy = by_kind["policy"][0]
    assert policy["reload"] is False
    assert {"enforcing", "file", "sha256", "generation", "rules", "limits"} <= set(policy)
    assert kinds.index("policy") < kinds.index("load")
    load = next(r for r in by_kind["load"] if r["c"] == "physics")
    assert {"version", "sha256", "manifest"} <= set(load)
    assert not load.get("checkpoint")
    tick = next(r for r in by_kind["tick"] if r["c"] == "physics")
    assert {"step", "dt", "ids", "in", "out", "ok"} <= set(tick)
    assert "clock" not in tick  # physics reads no clock
    assert by_kind["snap"]  # every entity's kind, labels and components
    assert by_kind["agent"][0]["c"] == "follow-drone-0"
    # subjects: rec.<kind>.<component> for a component's records, rec.<kind> for the device's
    sub = await js.subscribe(f"edge.{DEVICE}.rec.>", stream=REC_STREAM, ordered_consumer=True)
    seen: set[str] = set()
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                break
            seen.add(msg.subject)
    finally:
        await sub.unsubscribe()
    p = f"edge.{DEVICE}.rec."
    assert {p + "start", p + "policy", p + "snap", p + "load.physics", p + "tick.physics",
            p + "load.patrol", p + "agent.follow-drone-0"} <= seen


async def test_cli_windows_by_time_and_sequence_and_one_system(tmp_path: Path, nats_url: str,
                                                               js_nc: Client) -> None:
    t0 = time.time()
    await run_for(fleet_config(tmp_path / "dev", nats_url), 3.0)
    t1 = time.time()
    base = ["--url", nats_url, "--device", DEVICE]
    # relative to now: the last minute, every recorded system
    res = await cli(*base, "--from", "-60s", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert {"identical", "first_divergence", "components", "speed", "tools", "policies"} <= set(out)
    assert out["identical"] is True and out["first_divergence"] is None
    assert {"physics", "patrol", "battery", "follow-drone-0"} <= set(out["components"])
    assert out["policies"], "the policy in use over the window is reported"
    physics = out["components"]["physics"]
    assert physics["versions"][0]["version"] == "1.0.0"
    assert len(physics["versions"][0]["sha256"]) == 64
    # ISO 8601 with a zone and without one (UTC), one system only
    for start in (iso(t0 + 0.5), iso(t0 + 0.5, zone=False)):
        res = await cli(*base, "--from", start, "--to", iso(t1), "--system", "patrol", "--json")
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert set(out["components"]) == {"patrol"}
        assert out["components"]["patrol"]["ticks"] > 5
    # the two spellings name the same instant: the same number of ticks compared
    a = json.loads((await cli(*base, "--from", iso(t0 + 1.0), "--to", iso(t1 - 0.5),
                              "--system", "physics", "--json")).stdout)
    b = json.loads((await cli(*base, "--from", iso(t0 + 1.0, zone=False), "--to",
                              iso(t1 - 0.5, zone=False), "--system", "physics", "--json")).stdout)
    assert a["components"]["physics"]["ticks"] == b["components"]["physics"]["ticks"] > 0
    # unix seconds: a shorter window compares fewer ticks
    c = json.loads((await cli(*base, "--from", repr(t0 + 1.0), "--to", repr(t0 + 1.5),
                              "--system", "physics", "--json")).stdout)
    assert 0 < c["components"]["physics"]["ticks"] < a["components"]["physics"]["ticks"]
    # by stream sequence, either side empty
    records = await all_records(js_nc.jetstream())
    last = records.last_seq
    mid = last // 2
    for seq in (f"{mid}:", f":{mid}", f"{mid // 2}:{mid}"):
        res = await cli(*base, "--seq", seq, "--json")
        assert res.returncode == 0, (seq, res.stderr)
        out = json.loads(res.stdout)
        assert out["identical"] is True
    res = await cli(*base, "--seq", f"{mid}:{mid + 200}", "--system", "physics", "--json")
    assert res.returncode == 0, res.stderr
    n = sum(1 for s, r in records.items
            if r["k"] == "tick" and r["c"] == "physics" and mid <= s <= mid + 200)
    assert json.loads(res.stdout)["components"]["physics"]["ticks"] == n > 0


async def test_cli_what_if_reports_the_first_divergence(tmp_path: Path, nats_url: str,
                                                       js_nc: Client) -> None:
    t0 = time.time()
    await run_for(fleet_config(tmp_path / "dev", nats_url), 2.5)
    manifest = physics_variant(tmp_path / "cand", "        px[i] += 2.0 * vx[i] * dt;")
    wasm = manifest.parent / "physics.wasm"
    base = ["--url", nats_url, "--device", DEVICE, "--from", repr(t0 + 0.5)]
    # a .wasm module (with the recorded manifest), JSON
    res = await cli(*base, "--system", "physics", "--with", f"physics={wasm}", "--json")
    assert res.returncode == 3, res.stderr
    out = json.loads(res.stdout)
    assert out["identical"] is False
    first = out["first_divergence"]
    assert first["component"] == "physics" and first["what"] == "columns"
    assert first["field"].startswith("position.") and first["entity"].startswith("drone-")
    assert first["recorded"] != first["replayed"]
    assert first["seq"] > 0 and first["t"] >= t0 and first["step"] >= 0
    ctx = first["context"]
    assert isinstance(ctx["dt"], float) and ctx["dt"] > 0
    assert 0 < len(ctx["entities"]) <= 8
    assert "position.x" in ctx["inputs"] and len(ctx["inputs"]["position.x"]) == len(ctx["entities"])
    comp = out["components"]["physics"]
    assert comp["ticks_differing"] > 0 and comp["ticks_differing"] <= comp["ticks"]
    assert comp["versions"][-1]["what_if"] is True
    records = await all_records(js_nc.jetstream())
    rec = dict(records.items)[first["seq"]]
    assert rec["k"] == "tick" and rec["c"] == "physics" and rec["step"] == first["step"]
    assert abs(rec["t"] - first["t"]) < 1e-6
    # a manifest file, text: names the component, step, stream sequence, field, entity, dt
    res = await cli(*base, "--system", "physics", "--with", f"physics={manifest}")
    assert res.returncode == 3, res.stderr
    assert (f"first divergence: physics step {first['step']} (stream seq {first['seq']}"
            in res.stdout)
    assert f"{first['field']} of {first['entity']}" in res.stdout
    assert "DIVERGES:" in res.stdout and "(what-if)" in res.stdout
    assert "    dt: " in res.stdout and "    inputs: " in res.stdout
    # the recorded version itself, as a candidate, replays identically
    res = await cli(*base, "--system", "physics", "--with",
                    f"physics={ROOT / 'components' / 'physics' / 'manifest.toml'}")
    assert res.returncode == 0, res.stdout + res.stderr


async def test_cli_errors_are_one_sentence_and_exit_1(tmp_path: Path, nats_url: str) -> None:
    base = ["--url", nats_url, "--device", DEVICE]
    # no such stream (nothing recorded yet)
    err = one_sentence_error(await cli(*base, "--from", "-60s"))
    assert "no stream REC" in err
    t0 = time.time()
    await run_for(fleet_config(tmp_path / "dev", nats_url), 1.5)
    err = one_sentence_error(await cli(*base, "--stream", "REC_nowhere"))
    assert "no stream REC_nowhere" in err
    # no record in the window
    err = one_sentence_error(await cli(*base, "--from", repr(t0 - 100), "--to", repr(t0 - 50)))
    assert "no record falls in the window" in err
    err = one_sentence_error(await cli(*base, "--seq", "900000:900100"))
    assert "no record falls in the window" in err
    # an unknown system
    err = one_sentence_error(await cli(*base, "--system", "nosuch"))
    assert "nosuch" in err
    # a candidate that is not a file, or that queries other columns
    err = one_sentence_error(await cli(*base, "--with", f"physics={tmp_path / 'missing.wasm'}"))
    assert "is not a file" in err
    patrol = ROOT / "components" / "patrol" / "manifest.toml"
    err = one_sentence_error(await cli(*base, "--with", f"physics={patrol}"))
    assert "the recorded inputs do not fit it" in err
    # a bad time, a bad sequence range, a window that ends before it starts
    err = one_sentence_error(await cli(*base, "--from", "yesterday"))
    assert "'yesterday' is not a time" in err
    err = one_sentence_error(await cli(*base, "--to", "2026-13-45"))
    assert "is not a time" in err
    err = one_sentence_error(await cli(*base, "--seq", "12"))
    assert "FROM:TO" in err
    err = one_sentence_error(await cli(*base, "--from", repr(t0), "--to", repr(t0 - 10)))
    assert "ends" in err
    # relative times in minutes and hours are times too
    for rel in ("-5m", "-1h"):
        res = await cli(*base, "--from", rel, "--system", "physics", "--json")
        assert res.returncode == 0, (rel, res.stderr)


async def test_a_window_of_more_records_than_the_limit_is_refused(
        tmp_path: Path, nats_url: str, js_nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most MAX_RECORDS are read (2,000,000 in the doc); more is refused as ``too-long``."""
    assert source.MAX_RECORDS == 2_000_000
    await run_for(fleet_config(tmp_path / "dev", nats_url), 1.5)
    js = js_nc.jetstream()
    monkeypatch.setattr(source, "MAX_RECORDS", 20)  # the same check, reached with a short run
    with pytest.raises(ReplayError, match="replay a shorter one") as info:
        await replay(js, DEVICE, Window())
    assert info.value.fields["reason"] == "too-long"


async def test_a_what_if_for_a_system_not_in_the_window_is_an_error(tmp_path: Path, nats_url: str,
                                                                   js_nc: Client) -> None:
    """``--with NAME=PATH`` for a name that ran nowhere in the window is an unknown system (it
    was ignored, and the replay said identical, exit 0)."""
    t0 = time.time()
    await run_for(fleet_config(tmp_path / "dev", nats_url), 1.5)
    wasm = ROOT / "components" / "build" / "physics.wasm"
    assert wasm.is_file()
    base = ["--url", nats_url, "--device", DEVICE, "--from", repr(t0 + 0.5)]
    err = one_sentence_error(await cli(*base, "--with", f"phyzics={wasm}"))
    assert "'phyzics' ran nowhere in the window" in err
    err = one_sentence_error(await cli(*base, "--system", "patrol", "--with", f"physics={wasm}"))
    assert "'physics'" in err
    with pytest.raises(ReplayError, match="ran nowhere") as info:
        await replay(js_nc.jetstream(), DEVICE, Window(t0 + 0.5), what_if={"phyzics": wasm})
    assert info.value.fields["reason"] == "unknown"



async def test_record_enabled_false_runs_without_the_recorder(tmp_path: Path, nats_url: str,
                                                              js_nc: Client) -> None:
    from edge.config.device import parse_config

    assert parse_config({"record": {"enabled": False}}).record is False
    assert parse_config({}).record is True
    cfg = fleet_config(tmp_path / "dev", nats_url)
    cfg.record = False  # what [record] enabled = false gives
    await run_for(cfg, 1.0)  # Runtime(cfg): record=True unless the config says otherwise
    with pytest.raises(ReplayError, match="no stream REC"):
        await replay(js_nc.jetstream(), DEVICE, Window())
