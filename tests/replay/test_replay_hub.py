"""On the hub: a device with ``[sync] record = true`` syncs its REC stream over the leaf link into
the hub's ``REC_<dev>`` (edge.replay.hub), and ``edge replay --stream REC_<dev> --domain hub``
runs there after the device's server is gone."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.config.table import Table
from edge.errors import ConfigError
from edge.nats import subjects as naming
from edge.replay.hub import hub_rec_config, provision_rec
from edge.replay.records import REC_STREAM
from edge.runtime import Runtime
from edge.sync.device.config import SyncConfig, read_sync
from edge.sync.device.streams import DeviceStreamConfig, ensure_device_streams
from replay_support import DEVICE, ROOT, fleet_config
from rigs.link import sync_rig
from rigs.nats import running_server


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edge.cli.main", "replay", *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_the_sync_record_key_is_off_by_default_and_checked(tmp_path: Path) -> None:
    assert SyncConfig().record is False
    f = str(tmp_path / "edge.toml")
    assert read_sync(Table({}, key="sync", file=f)).record is False
    assert read_sync(Table({"record": True}, key="sync", file=f)).record is True
    with pytest.raises(ConfigError, match="sync.record") as err:
        read_sync(Table({"record": "yes"}, key="sync", file=f))
    assert "edge.toml" in str(err.value)
    assert SyncConfig(record=True).streams("d1", bucket=naming.STATE_BUCKET, hub=True).record
    with pytest.raises(ValueError, match="positive limits"):
        hub_rec_config("d1", max_bytes=0)


async def test_rec_syncs_only_when_asked(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        import nats

        nc = await nats.connect(srv.url)
        try:
            js = nc.jetstream()
            await ensure_device_streams(js, DeviceStreamConfig("d1"))
            names = {s.config.name for s in await js.streams_info()}
            assert REC_STREAM not in names  # off by default: no REC, no consumer for the hub
            await ensure_device_streams(js, DeviceStreamConfig("d1", record=True))
            info = await js.stream_info(REC_STREAM)
            assert info.config.max_bytes == 256 * 2**20 and info.config.max_age == 3600.0
            consumer = await js.consumer_info(REC_STREAM, naming.sync_consumer_name(REC_STREAM, "d1"))
            assert consumer.config.deliver_subject == naming.sync_deliver_subject("d1", "rec")
            await ensure_device_streams(js, DeviceStreamConfig("d1", record=True))  # idempotent
        finally:
            await nc.close()


async def test_a_hub_replays_a_synced_rec_without_the_device(tmp_path: Path) -> None:
    async with sync_rig(tmp_path / "rig", (DEVICE,), stream_cfg={"record": True}) as rig:
        await provision_rec(rig.hub_js, DEVICE)
        await provision_rec(rig.hub_js, DEVICE)  # idempotent
        cfg = fleet_config(tmp_path / "dev", rig.devices[DEVICE].url)
        cfg.sync = dataclasses.replace(cfg.sync, record=True)
        rt = Runtime(cfg)
        await rt.start()
        try:
            t0 = time.time()
            await asyncio.sleep(2.0)
        finally:
            await rt.stop()
        t1 = time.time()
        on_device = (await rig.dev_js(DEVICE).stream_info(REC_STREAM)).state.messages
        assert on_device > 20
        await rig.wait_hub_count(REC_STREAM, on_device, DEVICE)
        await rig.devices[DEVICE].stop()  # the device is gone: only the hub's copy is left
        base = ["--url", rig.hub.client_url, "--device", DEVICE, "--stream",
                naming.hub_stream(REC_STREAM, DEVICE), "--domain", rig.hub.domain]
        res = await asyncio.to_thread(_cli, *base, "--from", repr(t0 + 0.5), "--to", repr(t1),
                                      "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        out = json.loads(res.stdout)
        assert out["identical"] is True and out["components"]["physics"]["ticks"] > 10
        res = await asyncio.to_thread(_cli, "--url", rig.hub.client_url, "--device", DEVICE,
                                      "--domain", rig.hub.domain, "--from", repr(t0))
        assert res.returncode == 1 and "no stream REC" in res.stderr  # the hub has no plain REC
