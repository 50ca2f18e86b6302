"""The source watch (edge/sync/hub/reattach.py): a hub source whose attach went out while the
device was unreachable is re-attached as soon as the device answers, instead of after
nats-server's 5 s wait plus back-off; a flowing source is left alone; nothing lost or doubled."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edge.nats.publisher import Publisher
from edge.sync.hub.reattach import SourceWatch, reattach_stalled
from rigs.faults import hub_source_seqs
from rigs.link import sync_rig

pytestmark = pytest.mark.timeout(90)


async def publish(pub: Publisher, start: int, stop: int) -> None:
    for i in range(start, stop):
        await pub.publish("edge.dev1.evt.n", str(i).encode(), msg_id=f"n-{i}")
    await pub.flush(10)


async def until_attached(js: object, timeout: float = 15.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        infos = [await js.stream_info(s) for s in ("TELE_dev1", "EVT_dev1")]  # type: ignore[attr-defined]
        if all(i.sources[0].active is not None and 0 <= i.sources[0].active < 1e9 for i in infos):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the hub's sources did not attach")


async def test_a_source_that_missed_the_device_is_reattached_within_a_second(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        dev = rig.dev_nc["dev1"]
        async with Publisher(dev) as pub:
            await publish(pub, 0, 50)
            await rig.wait_hub_count("EVT", 50)
            await until_attached(rig.hub_js)
            assert await reattach_stalled(rig.hub_js, "dev1") == []  # flowing: left alone
            await rig.links["dev1"].cut()
            await rig.hub.kill()
            await rig.hub.start()  # its first attach goes out while the device is unreachable
            await asyncio.sleep(1.0)
            watch = SourceWatch(rig.hub_js, interval_s=0.1)
            watch.start()
            try:
                await rig.links["dev1"].restore()
                await rig.wait_linked("dev1")
                t0 = time.monotonic()
                await publish(pub, 50, 60)
                await rig.wait_hub_count("EVT", 60, timeout=20)
                took = time.monotonic() - t0
            finally:
                await watch.stop()
        assert took < 2.0, f"data flowed again only after {took:.2f} s"
        assert watch.reattached >= 1 and watch.errors == 0
        seqs = [s for s, _ in await hub_source_seqs(rig.hub_js, "EVT_dev1")]
        assert seqs == list(range(1, 61))  # the re-attach resumes at the hub's own position
