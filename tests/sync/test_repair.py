"""Backfill of a skipped block (edge/sync/hub/repair.py): the hub's sourcing is made to skip
events the device holds (its durable consumer moved past them while the hub was away, the way a
source re-attach at the consumer's ack floor does), and one repair pass stores exactly the
missing ones, read back from the device's stream, counted by sequence on both sides."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import NatsError
from edge.nats.publisher import Publisher
from edge.sync.hub.fleet import fleet_status
from edge.sync.hub.repair import REPAIRED_HEADER, Repairer, repair_device, repair_subject
from rigs.faults import hub_source_seqs
from rigs.link import read_stream, sync_rig

pytestmark = pytest.mark.timeout(90)


async def publish(pub: Publisher, start: int, stop: int) -> None:
    for i in range(start, stop):
        await pub.publish("edge.dev1.evt.n", str(i).encode(), msg_id=f"n-{i}")
    await pub.flush(10)


async def skip_to(rig: object, seq: int) -> None:
    dev = rig.dev_nc["dev1"]  # type: ignore[attr-defined]
    reply = await dev.request("$JS.API.CONSUMER.RESET.EVT.sync-EVT-dev1", json.dumps({"seq": seq}).encode())
    assert "error" not in json.loads(reply.data)


async def test_a_skipped_block_and_a_skipped_tail_are_backfilled_once(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        dev = rig.dev_nc["dev1"]
        async with Publisher(dev) as pub:
            await publish(pub, 0, 100)
            await rig.wait_hub_count("EVT", 100)
            rep = await repair_device(rig.hub_js, "dev1")
            assert (rep.missing, rep.repaired, rep.error, rep.hub_position) == (0, 0, None, 100)
            await rig.links["dev1"].cut()
            await publish(pub, 100, 150)
            await skip_to(rig, 131)  # 101..130 acknowledged past the hub: never delivered again
            await rig.links["dev1"].restore()
            await rig.wait_hub_count("EVT", 120, timeout=30)
            # a skipped tail: nothing newer follows, the hub shows lag only
            await rig.links["dev1"].cut()
            await publish(pub, 150, 170)
            await skip_to(rig, 171)
            await rig.links["dev1"].restore()
            await rig.wait_linked("dev1")
            await asyncio.sleep(1.5)
        assert await rig.hub_count("EVT") == 120
        rep = await repair_device(rig.hub_js, "dev1")
        assert rep.error is None and rep.ack_floor == 170
        assert rep.ranges == [(101, 130), (151, 170)] and rep.missing == rep.repaired == 50
        assert rep.duplicates == rep.unavailable == 0
        msgs = await read_stream(rig.hub_js, "EVT_dev1")
        payloads = sorted(int(d) for _, d, _ in msgs)
        assert payloads == list(range(170))  # every event once
        repaired = [(s, h) for s, _, h in msgs if REPAIRED_HEADER in h]
        assert len(repaired) == 50 and {s for s, _ in repaired} == {"edge.dev1.evt.n"}  # original subject
        assert all(h["Nats-Msg-Id"].startswith("n-") for _, h in repaired)  # the original ids
        seqs = sorted(s for s, _ in await hub_source_seqs(rig.hub_js, "EVT_dev1"))
        assert seqs == list(range(1, 171))
        [st] = await fleet_status(rig.hub_js)
        assert st.evt_missing == 0 and st.lag == 0 and st.alarms == []
        # a second pass finds nothing; new events still arrive through the source
        again = await repair_device(rig.hub_js, "dev1")
        assert (again.missing, again.repaired) == (0, 0)
        async with Publisher(dev) as pub:
            await publish(pub, 170, 180)
        await rig.wait_hub_count("EVT", 180, timeout=20)


async def test_repair_of_an_unreachable_device_reports_and_changes_nothing(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        async with Publisher(rig.dev_nc["dev1"]) as pub:
            await publish(pub, 0, 10)
        await rig.wait_hub_count("EVT", 10)
        await rig.links["dev1"].cut()
        rep = await repair_device(rig.hub_js, "dev1")
        assert rep.error == "device not reachable" and rep.repaired == 0
        assert await rig.hub_count("EVT") == 10
        with pytest.raises(NatsError):
            repair_subject("dev1", "TELE")
        # `edge cloud repair` says so and exits 3
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "edge.cli.main", "cloud", "repair",
                                                       "--hub-url", rig.hub.client_url],
                                      env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 3, out.stderr
        assert json.loads(out.stdout.splitlines()[0])["error"] == "device not reachable"
        await rig.links["dev1"].restore()
        await rig.wait_linked("dev1")
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "edge.cli.main", "cloud", "repair",
                                                       "--hub-url", rig.hub.client_url, "dev1"],
                                      env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["missing"] == 0


async def test_the_running_repairer_heals_a_hole_by_itself(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        dev = rig.dev_nc["dev1"]
        repairer = Repairer(rig.hub_js, interval_s=0.3)
        repairer.start()
        try:
            async with Publisher(dev) as pub:
                await publish(pub, 0, 20)
                await rig.wait_hub_count("EVT", 20)
                await rig.links["dev1"].cut()
                await publish(pub, 20, 40)
                await skip_to(rig, 31)
                await rig.links["dev1"].restore()
                await rig.wait_hub_count("EVT", 40, timeout=30)
        finally:
            await repairer.stop()
        assert repairer.repaired == 10 and repairer.errors == 0
        assert sorted(int(d) for _, d in await hub_source_seqs(rig.hub_js, "EVT_dev1")) == list(range(40))


async def test_a_stalled_source_is_read_back_after_stall_s_and_not_doubled_when_it_resumes(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        dev = rig.dev_nc["dev1"]
        async with Publisher(dev) as pub:
            await publish(pub, 0, 10)
            await rig.wait_hub_count("EVT", 10)
            # the hub's source stops taking anything (removed), the device keeps storing
            cfg = (await rig.hub_js.stream_info("EVT_dev1")).config
            sources = cfg.sources
            cfg.sources = []
            await rig.hub_js.update_stream(cfg)
            await publish(pub, 10, 30)
        repairer = Repairer(rig.hub_js, interval_s=0.2)
        repairer.stall_s = 0.6
        first = await repairer.run_once()
        assert first[0].missing == 0  # lag alone is the source's job until it stands still
        repairer.start()
        try:
            await rig.wait_hub_count("EVT", 30, timeout=20)
        finally:
            await repairer.stop()
        assert repairer.repaired == 20
        cfg.sources = sources
        await rig.hub_js.update_stream(cfg)  # the source resumes: its copies are duplicates by id
        async with Publisher(dev) as pub:
            await publish(pub, 30, 35)
        await rig.wait_hub_count("EVT", 35, timeout=20)
        await asyncio.sleep(1.0)
        assert sorted(int(d) for _, d in await hub_source_seqs(rig.hub_js, "EVT_dev1")) == list(range(35))
