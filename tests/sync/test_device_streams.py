"""Device streams, the batched-ack publisher, dedupe, limits and the downsampler."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from edge.errors import ConfigError, NatsError
from rigs.nats import running_server
from edge.nats import subjects as naming
from edge.nats.publisher import Downsampler, Publisher, PublishRejected
from edge.sync.device.streams import (
    DeviceStreamConfig,
    DropMonitor,
    ensure_device_streams,
    stream_usage,
)

pytestmark = pytest.mark.timeout(30)


async def test_streams_are_idempotent_and_updated(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        nc = await nats.connect(srv.url)
        js = nc.jetstream()
        cfg = DeviceStreamConfig("dev1", tele_max_bytes=100_000, evt_max_bytes=50_000)
        infos = await ensure_device_streams(js, cfg)
        assert [i.config.name for i in infos] == ["TELE", "EVT"]
        await ensure_device_streams(js, cfg)  # same config: no error
        cfg.tele_max_bytes = 200_000
        await ensure_device_streams(js, cfg)  # changed: updated in place
        assert (await js.stream_info("TELE")).config.max_bytes == 200_000
        info = await js.stream_info("EVT")
        assert set(info.config.subjects or []) == {"edge.dev1.evt.>", "edge.dev1.ack.>"}
        await nc.close()


def test_bad_device_id() -> None:
    with pytest.raises(ConfigError, match="Device id"):
        naming.device_prefix("a.b")


async def test_budgets_that_do_not_fit_fail_loudly(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_store_bytes=1_000_000) as srv:
        nc = await nats.connect(srv.url)
        cfg = DeviceStreamConfig("dev1", tele_max_bytes=900_000, evt_max_bytes=900_000)
        with pytest.raises(NatsError, match="Could not create stream EVT"):
            await ensure_device_streams(nc.jetstream(), cfg)
        await nc.close()


async def test_batched_publish_dedupes_same_msg_id(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        nc = await nats.connect(srv.url)
        js = nc.jetstream()
        await ensure_device_streams(js, DeviceStreamConfig("dev1"))
        async with Publisher(nc, max_in_flight=64) as pub:
            futs = [
                await pub.publish(f"edge.dev1.tele.t{i % 3}", b"x" * 10, msg_id=f"m{i}") for i in range(500)
            ]
            await pub.flush(timeout=10)
            acks = [f.result() for f in futs]
            assert [a.seq for a in acks] == list(range(1, 501))
            # Republish the same ids: all reported duplicates, nothing stored twice.
            for i in range(500):
                await pub.publish(f"edge.dev1.tele.t{i % 3}", b"x" * 10, msg_id=f"m{i}")
            await pub.flush(timeout=10)
            assert pub.stats.duplicates == 500 and pub.stats.acked == 1000
        assert (await js.stream_info("TELE")).state.messages == 500
        await nc.close()


async def test_telemetry_evicted_and_counted_events_refused_not_evicted(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        nc = await nats.connect(srv.url)
        js = nc.jetstream()
        await ensure_device_streams(
            js, DeviceStreamConfig("dev1", tele_max_bytes=20_000, evt_max_bytes=10_000)
        )
        drops = DropMonitor(js)
        assert await drops.poll() == {}
        async with Publisher(nc) as pub:
            for i in range(20):
                await pub.publish("edge.dev1.evt.alarm", b"e" * 100, msg_id=f"e{i}")
            for _ in range(1000):
                await pub.publish("edge.dev1.tele.imu", b"t" * 100)
            await pub.flush(timeout=10)
            assert pub.stats.rejected == 0
            # Events are still all there: telemetry never evicts them.
            assert (await js.stream_info("EVT")).state.messages == 20
            tele = await stream_usage(js, "TELE")
            assert tele.removed > 0 and tele.removed + tele.messages == 1000
            new = await drops.poll()
            assert new == {"TELE": tele.removed}
            # Fill EVT: the server refuses new events; the publisher surfaces it.
            rejected = 0
            for i in range(200):
                fut = await pub.publish("edge.dev1.evt.alarm", b"e" * 100, msg_id=f"f{i}")
                try:
                    await fut
                except PublishRejected as exc:
                    rejected += 1
                    assert "maximum bytes" in (exc.description or "")
            assert rejected > 0 and pub.stats.rejected == rejected
        evt = await stream_usage(js, "EVT")
        assert evt.removed == 0 and evt.messages == 220 - rejected
        assert await drops.poll() == {}
        await nc.close()


async def test_retry_after_server_restart_keeps_exactly_once(tmp_path: Path) -> None:
    async with running_server(tmp_path, sync_interval="always") as srv:
        nc = await nats.connect(srv.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
        js = nc.jetstream()
        await ensure_device_streams(js, DeviceStreamConfig("dev1"))
        async with Publisher(nc, ack_timeout_s=0.3, max_attempts=100) as pub:
            futs = []
            for i in range(300):
                futs.append(await pub.publish("edge.dev1.evt.n", str(i).encode(), msg_id=f"n{i}"))
                if i == 150:
                    await srv.kill()
                    await srv.start()
            await pub.flush(timeout=20)
            assert all(not f.exception() for f in futs)
        msgs = await _read_all(js, "EVT", "edge.dev1.evt.n")
        assert msgs == [str(i).encode() for i in range(300)]
        await nc.close()


async def _read_all(js: nats.js.JetStreamContext, stream: str, subject: str) -> list[bytes]:
    """Every message of ``subject`` in ``stream``: fetched until the stream's count is read (a
    slow fetch on a loaded machine must not end the read early)."""
    state = (await js.stream_info(stream, subjects_filter=subject)).state
    total = (state.subjects or {}).get(subject, state.messages)
    sub = await js.pull_subscribe(subject, stream=stream)
    out: list[bytes] = []
    while len(out) < total:
        try:
            batch = await sub.fetch(500, timeout=5)
        except nats.errors.TimeoutError:
            break
        out += [m.data for m in batch]
    await sub.unsubscribe()
    return out


async def test_publish_without_stream_times_out_clearly(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        nc = await nats.connect(srv.url)
        async with Publisher(nc, ack_timeout_s=0.1, max_attempts=3) as pub:
            fut = await pub.publish("nowhere.x", b"1")
            with pytest.raises(NatsError, match="No ack for nowhere.x after 3 attempts"):
                await asyncio.wait_for(fut, 5)
            assert pub.stats.timed_out == 1 and pub.in_flight == 0
        await nc.close()


def test_downsampler_limits_rate_per_subject() -> None:
    ds = Downsampler(10.0)
    t = 100.0
    kept = {"a": 0, "b": 0}
    for _ in range(1000):  # 1000 msg/s for one second on two subjects
        t += 0.001
        for s in kept:
            kept[s] += ds.allow(s, now=t)
    assert 9 <= kept["a"] <= 11 and 9 <= kept["b"] <= 11
    assert ds.dropped["a"] == 1000 - kept["a"]


async def test_publish_telemetry_downsampled(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        nc = await nats.connect(srv.url)
        js = nc.jetstream()
        await ensure_device_streams(js, DeviceStreamConfig("dev1"))
        async with Publisher(nc, downsampler=Downsampler(5.0)) as pub:
            sent = [await pub.publish_telemetry("edge.dev1.tele.gps", b"p") for _ in range(50)]
            await pub.flush(timeout=5)
            assert sum(f is not None for f in sent) == 1
            assert pub.stats.downsampled == 49
        await nc.close()
