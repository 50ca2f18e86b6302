"""Replay on the hub: provisioning creates REC_<dev> with the device's other streams, fleet
status shows its lag, and a rollout is checked first by replaying the device's records with the
published candidates (edge.replay.check, ``edge rollout start --replay-check``)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest

from edge.nats import subjects as naming
from edge.ota import repo as fleet
from edge.ota import rollout
from edge.ota.bundle import pack
from edge.replay.check import fetch_target, parse_check, replay_check, rollout_check
from edge.replay.records import REC_STREAM, ReplayError
from edge.runtime import Runtime
from edge.sync.hub.fleet import ProvisionOptions, deprovision_device, fleet_status
from replay_support import DEVICE, ROOT, fleet_config, physics_variant
from rigs.link import sync_rig


def _rollout_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edge.cli.main", "rollout", "start", *args],
                          capture_output=True, text=True, env=env, timeout=180, check=False)


def _publish(repo: Path, manifest: Path, version: str) -> None:
    data, meta = pack(manifest, version=version)
    fleet.publish(repo, data, kind="component", name=str(meta["name"]), version=version,
                  custom={"contract": meta["contract"]})


def test_check_specs_are_parsed_and_refused_with_a_sentence() -> None:
    device, window = parse_check("drone7:100..200")
    assert (device, window.t_from, window.t_to) == ("drone7", 100.0, 200.0)
    device, window = parse_check("drone7")
    assert device == "drone7" and time.time() - window.t_from == pytest.approx(600, abs=5)
    with pytest.raises(ReplayError, match="not a device id"):
        parse_check("bad device:-5m")
    with pytest.raises(ReplayError, match="--replay-check 'drone7:soon'.*not a time"):
        parse_check("drone7:soon")


async def test_hub_rec_copy_status_and_a_rollout_checked_by_replay(tmp_path: Path) -> None:
    opts = ProvisionOptions(record=True, rec_max_bytes=64 * 2**20, rec_max_age_s=7200.0)
    async with sync_rig(tmp_path / "rig", (DEVICE,), stream_cfg={"record": True},
                        provision=opts) as rig:
        copy = naming.hub_stream(REC_STREAM, DEVICE)
        info = await rig.hub_js.stream_info(copy)  # provisioned with the other device streams
        assert info.config.max_bytes == 64 * 2**20 and info.config.max_age == 7200.0
        cfg = fleet_config(tmp_path / "dev", rig.devices[DEVICE].url)
        cfg.sync = dataclasses.replace(cfg.sync, record=True)
        rt = Runtime(cfg)
        await rt.start()
        try:
            t0 = time.time()
            await asyncio.sleep(2.5)
        finally:
            await rt.stop()
        t1 = time.time()
        dev = (await rig.dev_js(DEVICE).stream_info(REC_STREAM)).state
        await rig.wait_hub_count(REC_STREAM, dev.messages, DEVICE)
        (status,) = await fleet_status(rig.hub_js, [DEVICE])
        assert status.rec_messages == dev.messages and status.rec_lag == 0
        assert status.rec_bytes is not None and status.rec_bytes > 0
        assert status.device_seq[REC_STREAM] == dev.last_seq
        assert status.hub_seq[REC_STREAM] == dev.last_seq
        assert not status.alarms, status.alarms

        # the fleet's OTA repository: physics 2.0.0 moves differently, 1.0.1 is the same module
        repo = tmp_path / "fleet"
        fleet.keygen(repo)
        changed = physics_variant(tmp_path / "cand", "        px[i] += 2.0 * vx[i] * dt;")
        _publish(repo, changed, "2.0.0")
        _publish(repo, ROOT / "components" / "physics" / "manifest.toml", "1.0.1")
        _publish(repo, changed, "3.0.0")
        await fleet.upload(rig.hub_js, repo)
        obs = await rig.hub_js.object_store("edge-ota")
        (bad,) = [i.name for i in await obs.list() if i.name.endswith(".3.0.0.tar")]
        await obs.put(bad, b"not the artifact the metadata names")  # tampered on the hub
        hub_nc = await nats.connect(rig.hub.client_url)
        try:
            got = await fetch_target(hub_nc.jetstream(), "physics", "2.0.0", tmp_path / "t")
            assert got.name == "manifest.toml" and (got.parent / "module.wasm").is_file()
            with pytest.raises(ReplayError, match="no published OTA target component/physics/9.9.9"):
                await fetch_target(hub_nc.jetstream(), "physics", "9.9.9", tmp_path / "t9")
            with pytest.raises(ReplayError, match="does not match its metadata"):
                await fetch_target(hub_nc.jetstream(), "physics", "3.0.0", tmp_path / "t3")
            spec = f"{DEVICE}:{t0 + 0.5!r}..{t1!r}"
            verdict = await rollout_check(hub_nc, spec, {"physics": "2.0.0"})
            assert not verdict.identical and verdict.stream == copy
            first = verdict.first
            assert first is not None and (first.component, first.what) == ("physics", "columns")
            assert verdict.differing["physics"]["ticks"] > 0
            assert "DIVERGES" in verdict.sentence() and "2.0.0 (OTA target)" in verdict.sentence()
            same = await rollout_check(hub_nc, spec, {"physics": "1.0.1"})
            assert same.identical, same.report.render()
            assert same.report.components["physics"].ticks > 10
            with pytest.raises(ReplayError, match="'battery2' ran nowhere in the window"):
                await replay_check(hub_nc, DEVICE, parse_check(spec)[1],
                                   {"battery2": got.parent / "module.wasm"})
        finally:
            await hub_nc.close()

        # the rollout hook: a diverging candidate is refused before anything starts
        base = ["--hub", rig.hub.client_url, "--replay-check", spec]
        res = await asyncio.to_thread(_rollout_cli, "r2", "physics=2.0.0", *base)
        assert res.returncode == 3, res.stdout + res.stderr
        assert "DIVERGES" in res.stdout and "rollout r2 not started" in res.stdout
        assert await rollout.get_record(rig.hub_js, "r2") is None
        # an identical one passes the check and the rollout starts (here: no device is labelled)
        res = await asyncio.to_thread(_rollout_cli, "r1", "physics=1.0.1", *base)
        assert "every output identical" in res.stdout, res.stdout + res.stderr
        assert res.returncode == 1 and "no device matches the selector" in res.stderr
        # --allow-divergence starts it despite the divergence
        res = await asyncio.to_thread(_rollout_cli, "r3", "physics=2.0.0", *base,
                                      "--allow-divergence")
        assert "DIVERGES" in res.stdout and "no device matches the selector" in res.stderr

        await deprovision_device(rig.hub_js, DEVICE)
        names = {s.config.name for s in await rig.hub_js.streams_info()}
        assert copy not in names
        # without the hub's copy the check says where records would be; on a client of the
        # device itself it reads the device's own REC
        candidate = physics_variant(tmp_path / "cand4", "        px[i] += 3.0 * vx[i] * dt;")
        for url in (rig.hub.client_url, rig.devices[DEVICE].url):
            client = await nats.connect(url)
            try:
                if url == rig.hub.client_url:
                    with pytest.raises(ReplayError, match=f"no records of {DEVICE} here.*"
                                       f"provision --record {DEVICE}"):
                        await replay_check(client, DEVICE, parse_check(spec)[1],
                                           {"physics": candidate})
                    continue
                verdict = await replay_check(client, DEVICE, parse_check(spec)[1],
                                             {"physics": candidate})
                assert verdict.stream == REC_STREAM and not verdict.identical
            finally:
                await client.close()


async def test_a_device_without_record_sync_has_no_rec_copy(tmp_path: Path) -> None:
    async with sync_rig(tmp_path / "rig", (DEVICE,)) as rig:
        names = {s.config.name for s in await rig.hub_js.streams_info()}
        assert naming.hub_stream(REC_STREAM, DEVICE) not in names  # off by default
        (status,) = await fleet_status(rig.hub_js, [DEVICE])
        assert (status.rec_messages, status.rec_bytes, status.rec_lag) == (None, None, None)
        assert REC_STREAM not in status.device_seq
        with pytest.raises(ReplayError, match="no OTA targets are published"):
            await fetch_target(rig.hub_js, "physics", "1.0.0", tmp_path / "t")
        # `edge cloud provision --record` adds the copy to a provisioned device
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        res = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "edge.cli.main", "cloud", "provision",
                             "--hub-url", rig.hub.client_url, "--record", DEVICE],
            capture_output=True, text=True, env=env, timeout=60, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert naming.hub_stream(REC_STREAM, DEVICE) in res.stdout
        info = await rig.hub_js.stream_info(naming.hub_stream(REC_STREAM, DEVICE))
        assert info.config.max_bytes == 1024 * 2**20 and info.config.max_age == 24 * 3600.0
