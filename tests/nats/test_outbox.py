"""The device's acknowledged event outbox and best-effort telemetry, against a real nats-server.

Every count is checked twice: by the stream's own sequence numbers (no gaps, nothing extra) and by
the payloads, which number the events in emit order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StreamConfig

from edge.nats.server import NatsServer
from rigs.nats import ServerFactory
from edge.nats.outbox import EventPublisher, TelemetryPublisher
from edge.nats.publisher import NO_STREAM_REASON

pytestmark = pytest.mark.timeout(90)

EVT = StreamConfig(
    name="EVT",
    subjects=["edge.dev1.evt.>", "edge.dev1.ack.>"],
    discard=DiscardPolicy.NEW,
    duplicate_window=120.0,
)
TELE = StreamConfig(name="TELE", subjects=["edge.dev1.tele.>"], duplicate_window=120.0)


async def connect(url: str) -> Client:
    return await nats.connect(url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)


@pytest.fixture
async def device(nats_servers: ServerFactory) -> AsyncIterator[tuple[NatsServer, Client]]:
    srv = await nats_servers("edge")
    nc = await connect(srv.url)
    await nc.jetstream().add_stream(EVT)
    try:
        yield srv, nc
    finally:
        await nc.close()


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


async def stored(js: JetStreamContext, stream: str = "EVT") -> list[tuple[int, str, bytes]]:
    """(stream sequence, subject, payload) of every message in ``stream``, in order."""
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        m = await js.get_msg(stream, seq)
        out.append((m.seq or 0, m.subject or "", m.data or b""))
    return out


async def assert_exactly_once(
    js: JetStreamContext, n: int, subject: str = "edge.dev1.evt.n", *, ordered: bool = True
) -> None:
    msgs = await stored(js)
    assert [seq for seq, _, _ in msgs] == list(range(1, n + 1))  # no gaps, nothing extra
    got = [int(d) for _, s, d in msgs if s == subject]
    assert (got if ordered else sorted(got)) == list(range(n))  # each event once


async def test_full_speed_all_land_exactly_once(device: tuple[NatsServer, Client]) -> None:
    srv, nc = device
    n = 5000
    async with EventPublisher(nc, device="dev1") as pub:
        for i in range(n):
            pub.emit("edge.dev1.evt.n", str(i).encode())
            if i % 500 == 0:
                await asyncio.sleep(0)
        assert await pub.flush(30)
        st = pub.status()
    assert st["acked"] == n and st["emitted"] == n
    assert st["dropped"] == st["rejected"] == st["duplicates"] == 0
    assert st["queued"] == st["in_flight"] == st["pending_bytes"] == 0
    await assert_exactly_once(nc.jetstream(), n)


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
async def test_jetstream_stopped_under_load_every_event_once(
    device: tuple[NatsServer, Client], how: str
) -> None:
    """Emit 6000 events at full speed; the server goes away after ~1500 (SIGTERM or kill -9) and
    comes back on the same port and store after ~3000 more were emitted into the outage."""
    srv, nc = device
    n, before, during = 6000, 1500, 3000
    emitted = 0
    restarted = asyncio.Event()
    async with EventPublisher(nc, device="dev1", ack_timeout_s=0.5) as pub:

        async def load() -> None:
            nonlocal emitted
            for i in range(n):
                if i == before + during:
                    await restarted.wait()  # the last part is emitted once the server is back
                pub.emit("edge.dev1.evt.n", str(i).encode())
                emitted += 1
                if i % 10 == 0:
                    await asyncio.sleep(0)

        task = asyncio.create_task(load())
        await until(lambda: emitted >= before and pub.status()["acked"] > 0, 20, "load running")
        if how == "sigterm":
            await srv.stop()
        else:
            await srv.kill()
        await until(lambda: emitted >= before + during, 20, "events emitted into the outage")
        assert not srv.running and pub.status()["acked"] < n
        await srv.start()  # same port, same store directory
        restarted.set()
        await asyncio.wait_for(task, 20)
        assert await pub.flush(40), pub.status()
        st = pub.status()
    assert st["dropped"] == st["rejected"] == 0
    assert st["acked"] == n  # retried may be 0 after a graceful stop that acked all in flight
    assert nc.stats["reconnects"] >= 1
    # Each event exactly once, no gaps in the stream. Order may differ around the disconnect:
    # nats-py replays its unwritten buffer on the new connection before the resends.
    await assert_exactly_once(nc.jetstream(), n, ordered=False)


async def test_outbox_bound_drops_exactly_the_excess(device: tuple[NatsServer, Client]) -> None:
    srv, nc = device
    bound, n = 100, 250
    async with EventPublisher(nc, device="dev1", max_pending=bound) as pub:
        pub.emit("edge.dev1.evt.n", b"0")
        assert await pub.flush(10)
        await srv.stop()
        await until(lambda: not nc.is_connected, 10, "client sees the server gone")
        for i in range(1, n):
            pub.emit("edge.dev1.evt.n", str(i).encode())
        st = pub.status()
        assert st["dropped"] == n - 1 - bound and st["queued"] + st["in_flight"] == bound
        await srv.start()
        assert await pub.flush(30), pub.status()
        st = pub.status()
    assert st["acked"] == 1 + bound and st["dropped"] == n - 1 - bound and st["rejected"] == 0
    await assert_exactly_once(nc.jetstream(), 1 + bound)  # the oldest kept, the newest dropped


async def test_outbox_byte_bound(device: tuple[NatsServer, Client]) -> None:
    _, nc = device
    pub = EventPublisher(nc, device="dev1", max_pending_bytes=10_000)
    for _ in range(25):  # not started yet: everything stays in the outbox
        pub.emit("edge.dev1.evt.big", b"x" * 1000)
    assert pub.status()["dropped"] == 15 and pub.status()["pending_bytes"] == 10_000
    await pub.start()
    assert await pub.flush(10)
    await pub.stop(1.0)
    assert pub.status()["acked"] == 10
    pub.emit("edge.dev1.evt.big", b"late")  # after stop: counted, not raised
    assert pub.status()["dropped"] == 16


async def test_rejected_subjects_are_counted_not_retried(device: tuple[NatsServer, Client]) -> None:
    _, nc = device
    await nc.jetstream().add_stream(
        StreamConfig(name="SMALL", subjects=["small.>"], max_msgs=5, discard=DiscardPolicy.NEW)
    )
    async with EventPublisher(nc, device="dev1") as pub:
        pub.emit("nowhere.x", b"1")  # no stream captures it
        for i in range(10):
            pub.emit("small.s", str(i).encode())  # 5 stored, then discard=new refuses
        pub.emit("edge.dev1.evt.n", b"0")
        assert await pub.flush(10), pub.status()
        st = pub.status()
        assert st["rejected"] == 6 and st["acked"] == 6 and st["queued"] == st["in_flight"] == 0
        assert pub.rejections[NO_STREAM_REASON] == 1
        [(reason, k)] = [(r, k) for r, k in pub.rejections.items() if r != NO_STREAM_REASON]
        assert k == 5 and "maximum messages" in reason
    assert (await nc.jetstream().stream_info("SMALL")).state.messages == 5


async def test_caller_ids_dedupe_and_are_counted(device: tuple[NatsServer, Client]) -> None:
    _, nc = device
    async with EventPublisher(nc, device="dev1") as pub:
        pub.emit("edge.dev1.ack.c1", b"ok", msg_id="result-c1")
        assert await pub.flush(5)
        pub.emit("edge.dev1.ack.c1", b"ok", msg_id="result-c1", headers={"X-Try": "2"})
        assert await pub.flush(5)
        assert pub.status()["duplicates"] == 1 and pub.status()["acked"] == 2
    assert (await nc.jetstream().stream_info("EVT")).state.messages == 1
    with pytest.raises(ValueError, match="subject"):
        pub.emit("bad subject", b"")


async def test_stop_counts_what_is_left(device: tuple[NatsServer, Client]) -> None:
    srv, nc = device
    pub = EventPublisher(nc, device="dev1")
    await pub.start()
    await srv.stop()
    await until(lambda: not nc.is_connected, 10, "client sees the server gone")
    for i in range(7):
        pub.emit("edge.dev1.evt.n", str(i).encode())
    t0 = time.monotonic()
    await pub.stop(timeout=0.2)
    assert time.monotonic() - t0 < 5
    st = pub.status()
    assert st["dropped"] == 7 and st["queued"] == st["in_flight"] == 0


async def test_telemetry_drops_are_counted(device: tuple[NatsServer, Client]) -> None:
    srv, nc = device
    js = nc.jetstream()
    await js.add_stream(TELE)
    tele = TelemetryPublisher(nc)
    for i in range(100):
        assert await tele.publish("edge.dev1.tele.imu", str(i).encode())
    await nc.flush()
    deadline = time.monotonic() + 10
    while (await js.stream_info("TELE")).state.messages < 100:
        assert time.monotonic() < deadline, "telemetry did not reach TELE"
        await asyncio.sleep(0.01)
    # Over the buffer bound: nothing written yet (no await yields to the flusher in between).
    tight = TelemetryPublisher(nc, max_buffer_bytes=0)
    results = [await tight.publish("edge.dev1.tele.imu", b"x" * 100) for _ in range(10)]
    assert results[0] and tight.status()["dropped_backlog"] == results.count(False) >= 1
    await srv.stop()
    await until(lambda: not nc.is_connected, 10, "client sees the server gone")
    for _ in range(50):
        assert not await tele.publish("edge.dev1.tele.imu", b"lost")
    st = tele.status()
    assert st["sent"] == 100 and st["dropped_disconnected"] == 50 and st["dropped"] == 50
