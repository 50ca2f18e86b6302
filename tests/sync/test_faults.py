"""Fault tests with real hub and leaf nats-server processes.

Each test counts messages on both sides: nothing acked on the device is lost, nothing arrives
twice, and order per subject holds. Timings are scaled down (small stores, seconds).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from edge.nats import subjects as naming
from edge.nats.publisher import Publisher
from edge.sync.device.streams import DeviceStreamConfig, DropMonitor, ensure_device_streams, stream_usage
from rigs.link import SyncRig, read_stream, sync_rig

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


async def publish_range(pub: Publisher, subject: str, start: int, stop: int, prefix: str = "") -> None:
    for i in range(start, stop):
        await pub.publish(subject, str(i).encode(), msg_id=f"{prefix}{subject}-{i}")


async def hub_payloads(rig: SyncRig, kind: str, device: str = "dev1") -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for subject, data, _ in await read_stream(rig.hub_js, naming.hub_stream(kind, device)):
        out.setdefault(subject, []).append(int(data))
    return out


async def test_hub_down_and_back(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        async with Publisher(rig.dev_nc["dev1"]) as pub:
            await publish_range(pub, "edge.dev1.tele.a", 0, 100)
            await publish_range(pub, "edge.dev1.evt.b", 0, 100)
            await pub.flush(10)
            await rig.wait_hub_count("EVT", 100)
            await rig.hub.stop()
            await publish_range(pub, "edge.dev1.tele.a", 100, 400)
            await publish_range(pub, "edge.dev1.evt.b", 100, 400)
            await pub.flush(10)  # the device acks everything while the hub is down
            await rig.hub.start()
            t0 = time.monotonic()
            await rig.wait_hub_count("EVT", 400, timeout=30)
            await rig.wait_hub_count("TELE", 400, timeout=30)
            catch_up = time.monotonic() - t0
        assert await hub_payloads(rig, "TELE") == {"edge.dev1.tele.a": list(range(400))}
        assert await hub_payloads(rig, "EVT") == {"edge.dev1.evt.b": list(range(400))}
        assert catch_up < 15, f"catch-up after hub restart took {catch_up:.1f} s"


async def test_leaf_server_kill9_and_restart(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        srv = rig.devices["dev1"]
        await srv.supervise()
        async with Publisher(rig.dev_nc["dev1"], ack_timeout_s=0.5, max_attempts=1000) as pub:

            async def killer() -> None:
                await asyncio.sleep(0.3)
                assert srv.pid is not None
                os.kill(srv.pid, signal.SIGKILL)

            task = asyncio.create_task(killer())
            for i in range(600):
                await publish_range(pub, "edge.dev1.evt.k", i, i + 1)
                await publish_range(pub, "edge.dev1.tele.k", i, i + 1)
                if i % 20 == 0:
                    await asyncio.sleep(0.02)
            await task
            await pub.flush(30)
        assert srv.restarts >= 1
        dev = await read_stream(rig.dev_js(), "EVT")
        assert [int(d) for _, d, _ in dev] == list(range(600))
        await rig.wait_hub_count("EVT", 600, timeout=30)
        await rig.wait_hub_count("TELE", 600, timeout=30)
        await asyncio.sleep(0.5)
        assert await hub_payloads(rig, "EVT") == {"edge.dev1.evt.k": list(range(600))}
        assert await hub_payloads(rig, "TELE") == {"edge.dev1.tele.k": list(range(600))}


CHILD = r"""
import asyncio, sys
import nats
from edge.nats.publisher import Publisher
async def main(url, n):
    nc = await nats.connect(url)
    async with Publisher(nc, max_in_flight=64) as pub:
        for i in range(n):
            await pub.publish("edge.dev1.evt.p", str(i).encode(), msg_id=f"p-{i}")
            if i % 50 == 0:
                await asyncio.sleep(0.005)
        await pub.flush(30)
    await nc.close()
    print("done", flush=True)
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def _run_child(url: str, n: int) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        url,
        str(n),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_publisher_killed_mid_publish(tmp_path: Path) -> None:
    n = 3000
    async with sync_rig(tmp_path) as rig:
        url = rig.devices["dev1"].url
        child = await _run_child(url, n)
        js = rig.dev_js()
        while (await js.stream_info("EVT")).state.messages < 500:
            await asyncio.sleep(0.01)
        child.kill()  # SIGKILL mid-publish
        await child.wait()
        stored = (await js.stream_info("EVT")).state.messages
        assert 500 <= stored < n
        # The publisher restarts and publishes everything again with the same ids.
        child = await _run_child(url, n)
        out, err = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == 0, err.decode()[-2000:]
        dev = await read_stream(js, "EVT")
        assert [int(d) for _, d, _ in dev] == list(range(n))
        await rig.wait_hub_count("EVT", n, timeout=30)
        await asyncio.sleep(0.3)
        assert await hub_payloads(rig, "EVT") == {"edge.dev1.evt.p": list(range(n))}


async def test_outage_hits_store_limits(tmp_path: Path) -> None:
    cfg = {"tele_max_bytes": 60_000, "evt_max_bytes": 400_000}
    async with sync_rig(tmp_path, stream_cfg=cfg) as rig:
        js = rig.dev_js()
        drops = DropMonitor(js)
        async with Publisher(rig.dev_nc["dev1"]) as pub:
            await publish_range(pub, "edge.dev1.tele.imu", 0, 100)
            await pub.flush(10)
            await rig.wait_hub_count("TELE", 100)
            await rig.links["dev1"].cut()
            alarms = []
            for i in range(100, 3100):
                await publish_range(pub, "edge.dev1.tele.imu", i, i + 1)
                if i % 15 == 0:
                    alarms.append(i)
                    await publish_range(pub, "edge.dev1.evt.alarm", i, i + 1)
            await pub.flush(10)
            assert pub.stats.rejected == 0
        n_evt = len(alarms)
        tele = await stream_usage(js, "TELE")
        assert tele.removed > 0  # telemetry was evicted during the outage ...
        assert (await drops.poll()).get("TELE") == tele.removed  # ... and counted
        assert (await stream_usage(js, "EVT")).removed == 0  # events were not
        await rig.links["dev1"].restore()
        first_kept = tele.first_seq  # the oldest telemetry still on the device
        expected_tele = list(range(100)) + list(range(max(first_kept - 1, 100), 3100))
        await rig.wait_hub_count("EVT", n_evt, timeout=30)
        await rig.wait_hub_count("TELE", len(expected_tele), timeout=30)
        await asyncio.sleep(0.3)
        assert await hub_payloads(rig, "EVT") == {"edge.dev1.evt.alarm": alarms}
        assert await hub_payloads(rig, "TELE") == {"edge.dev1.tele.imu": expected_tele}


async def test_flapping_link(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        link = rig.links["dev1"]
        stop = asyncio.Event()

        async def flap() -> None:
            k = 0
            while not stop.is_set():
                await asyncio.sleep(0.15 + 0.1 * (k % 3))
                await (link.restore() if not link.is_up else link.cut())
                k += 1

        flapper = asyncio.create_task(flap())
        async with Publisher(rig.dev_nc["dev1"]) as pub:
            for i in range(0, 1200, 10):
                await publish_range(pub, "edge.dev1.evt.f", i, i + 10)
                await publish_range(pub, "edge.dev1.tele.f", i, i + 10)
                await asyncio.sleep(0.03)
            await pub.flush(10)
        stop.set()
        await flapper
        await link.restore()
        await rig.wait_hub_count("EVT", 1200, timeout=40)
        await rig.wait_hub_count("TELE", 1200, timeout=40)
        await asyncio.sleep(0.3)
        assert await hub_payloads(rig, "EVT") == {"edge.dev1.evt.f": list(range(1200))}
        assert await hub_payloads(rig, "TELE") == {"edge.dev1.tele.f": list(range(1200))}


async def test_upstream_7530_offline_from_boot_and_restart_while_offline(tmp_path: Path) -> None:
    """nats-server #7530: messages stored on a leaf while offline never reached the hub.
    Here the device boots offline, is restarted (kill -9) while still offline, then links."""
    async with sync_rig(tmp_path, ()) as rig:
        await rig.add_device("dev1", link_up=False)
        async with Publisher(rig.dev_nc["dev1"]) as pub:
            await publish_range(pub, "edge.dev1.evt.o", 0, 150)
            await pub.flush(10)
        await rig.restart_device_server("dev1", kill=True)
        async with Publisher(rig.dev_nc["dev1"], ack_timeout_s=0.5) as pub:
            await publish_range(pub, "edge.dev1.evt.o", 150, 300)
            await pub.flush(20)
        await asyncio.sleep(1.0)
        assert await rig.hub_count("EVT") == 0
        await rig.links["dev1"].restore()
        took = await rig.wait_hub_count("EVT", 300, timeout=40)
        await asyncio.sleep(0.3)
        assert await hub_payloads(rig, "EVT") == {"edge.dev1.evt.o": list(range(300))}
        assert took < 20, f"first sync took {took:.1f} s"


async def test_upstream_6206_device_stream_recreated(tmp_path: Path) -> None:
    """nats-server #6206: a source stalls after the sourced stream is re-created (here: the
    device's EVT stream is deleted, e.g. storage wiped, and created again)."""
    async with sync_rig(tmp_path) as rig:
        js = rig.dev_js()
        async with Publisher(rig.dev_nc["dev1"]) as pub:
            await publish_range(pub, "edge.dev1.evt.r", 0, 50)
            await pub.flush(10)
            await rig.wait_hub_count("EVT", 50)
            await js.delete_stream("EVT")
            await ensure_device_streams(js, DeviceStreamConfig("dev1", hub_domain="hub"))
            await publish_range(pub, "edge.dev1.evt.r", 50, 80, prefix="new-")
            await pub.flush(10)
        assert (await js.stream_info("EVT")).state.last_seq == 30
        took = await rig.wait_hub_count("EVT", 80, timeout=40)
        await asyncio.sleep(0.3)
        assert await hub_payloads(rig, "EVT") == {"edge.dev1.evt.r": list(range(80))}
        assert took < 20, f"re-sync took {took:.1f} s"
