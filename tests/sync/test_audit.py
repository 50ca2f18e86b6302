"""Fleet status counts by sequence on both sides: a block the hub skipped shows as missing events
and an alarm, never as 'lag 0'; with the device unreachable the lag comes from the sources."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.nats.publisher import Publisher
from edge.sync.hub.audit import audit_device, source_sequence
from edge.sync.hub.fleet import fleet_status
from rigs.link import sync_rig

pytestmark = pytest.mark.timeout(60)


async def publish(pub: Publisher, start: int, stop: int) -> None:
    for i in range(start, stop):
        await pub.publish("edge.dev1.evt.n", str(i).encode(), msg_id=f"n-{i}")
    await pub.flush(10)


def test_source_header_parsing() -> None:
    hdr = {"Nats-Stream-Source": "EVT:abc:C=x 42 edge.d.evt.> edge.d.evt.> edge.d.evt.a id"}
    assert source_sequence(hdr) == (42, "EVT:abc:C=x")
    assert source_sequence({"Nats-Stream-Source": "EVT x"}) is None
    assert source_sequence(None) is None


async def test_a_skipped_block_is_an_alarm_not_lag_0(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        dev = rig.dev_nc["dev1"]
        async with Publisher(dev) as pub:
            await publish(pub, 0, 100)
            await rig.wait_hub_count("EVT", 100)
            [st] = await fleet_status(rig.hub_js)
            assert (st.lag, st.evt_missing, st.alarms, st.lag_from) == (0, 0, [], "sequences")
            assert st.device_seq["EVT"] == st.hub_seq["EVT"] == 100
            await rig.links["dev1"].cut()
            await publish(pub, 100, 150)
            # The fault being modelled: the sourcing consumer's position moves past messages the
            # hub never stored (here by resetting it to sequence 131 while the hub is away).
            reply = await dev.request("$JS.API.CONSUMER.RESET.EVT.sync-EVT-dev1", json.dumps({"seq": 131}).encode())
            assert "error" not in json.loads(reply.data)
            await rig.links["dev1"].restore()
            await rig.wait_hub_count("EVT", 120, timeout=30)
            await publish(pub, 150, 160)
            await rig.wait_hub_count("EVT", 130, timeout=30)
        await asyncio.sleep(0.3)
        [st] = await fleet_status(rig.hub_js)
        assert st.evt_missing == 30 and st.lag == 0 and st.device_seq["EVT"] == 160
        assert len(st.alarms) == 1 and "30 events" in st.alarms[0] and "1..160" in st.alarms[0]
        audit = (await audit_device(rig.hub_js, "dev1"))["EVT"]
        assert (audit.hub_oldest, audit.hub_position, audit.hub_messages, audit.holes) == (1, 160, 130, 30)
        # `edge fleet status` prints the alarm and exits 3
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "edge.cli.main", "fleet", "status",
                                                       "--hub-url", rig.hub.client_url],
                                      env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 3, out.stderr
        assert "ALARM dev1: 30 events" in out.stdout and "EVT_MISSING" in out.stdout


async def test_lag_by_sequence_while_the_hub_is_behind_and_from_sources_when_unreachable(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        dev = rig.dev_nc["dev1"]
        async with Publisher(dev) as pub:
            await publish(pub, 0, 10)
            await rig.wait_hub_count("EVT", 10)
            # The hub's copy stops taking messages (full, discard new): the device keeps storing.
            cfg = (await rig.hub_js.stream_info("EVT_dev1")).config
            cfg.max_msgs, cfg.discard = 10, "new"
            await rig.hub_js.update_stream(cfg)
            await publish(pub, 10, 35)
            await asyncio.sleep(1.0)
            [st] = await fleet_status(rig.hub_js)
            assert st.lag_from == "sequences" and st.lag == 25 and st.hub_seq["EVT"] == 10
            await rig.links["dev1"].cut()
            [st] = await fleet_status(rig.hub_js)
            assert st.lag_from == "source" and st.device_seq == {"TELE": None, "EVT": None}
