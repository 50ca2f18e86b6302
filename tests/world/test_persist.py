from __future__ import annotations

import asyncio
import json

import nats
from nats.aio.client import Client

from rigs.freeze import frozen

from edge.nats.server import NatsServer
from edge.world.persist import Persister
from edge.world.store import World


async def test_flush_and_restore_round_trip(nc: Client) -> None:
    js = nc.jetstream()
    w = World()
    w.spawn("d1", "drone", {"fleet": "a"}, {"position": {"x": 1, "y": 2, "z": 3}, "battery": {"level": 0.5}})
    w.spawn("d2", "camera", components={"flight": {"mode": "AUTO", "armed": True}})
    p = Persister(w, js, interval=60)
    await p.open()
    assert await p.flush() == 5  # 3 components + 2 metas
    kv = await js.key_value("edge-state")
    assert json.loads((await kv.get("d1.position")).value or b"") == {"x": 1.0, "y": 2.0, "z": 3.0}
    assert json.loads((await kv.get("d1._meta")).value or b"") == {"kind": "drone", "labels": {"fleet": "a"}}

    w2 = World()
    assert await Persister(w2, js).restore() == 2
    assert w2.get_all("d1") == w.get_all("d1")
    assert w2.get("d2", "flight") == {"armed": True, "mode": "AUTO", "system_status": ""}
    assert w2.meta("d1").labels == {"fleet": "a"}
    assert w2.take_changes() == ([], [], [], [])  # restoring is not a change


async def test_removed_entities_and_components_are_deleted(nc: Client) -> None:
    js = nc.jetstream()
    w = World()
    w.spawn("a", components={"position": {}, "velocity": {}})
    w.spawn("b", components={"position": {}})
    p = Persister(w, js)
    await p.flush()
    w.remove("a")
    w.unset("b", "position")
    await p.flush()
    w2 = World()
    await Persister(w2, js).restore()
    assert "a" not in w2
    assert w2.components_of("b") == []


async def test_only_changes_since_last_flush_are_written(nc: Client) -> None:
    js = nc.jetstream()
    w = World()
    for i in range(50):
        w.spawn(f"e{i}", components={"position": {"x": i}})
    p = Persister(w, js)
    assert await p.flush() == 100
    w.set("e7", "position", {"x": -1})
    assert await p.flush() == 1
    assert await p.flush() == 0


async def test_outage_keeps_changes_and_retries(tmp_path, nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        js = nc.jetstream(timeout=1)
        w = World()
        w.spawn("a", components={"position": {"x": 1}})
        p = Persister(w, js)
        await p.flush()
        await nats_server.kill()
        w.set("a", "position", {"x": 2})
        assert await p.flush() == 0
        assert p.failures == 1 and p.status()["pending"] >= 1
        await nats_server.start()
        for _ in range(50):
            if await p.flush() > 0:
                break
            await asyncio.sleep(0.2)
        w2 = World()
        await Persister(w2, js).restore()
        assert w2.get("a", "position")["x"] == 2.0
    finally:
        await nc.close()


async def test_bad_stored_values_are_skipped_not_fatal(nc: Client) -> None:
    js = nc.jetstream()
    w = World()
    w.spawn("a", components={"position": {"x": 1}})
    p = Persister(w, js)
    await p.flush()
    kv = await js.key_value("edge-state")
    await kv.put("a.velocity", b"{not json")
    await kv.put("a.warp", b'{"x": 1}')
    await kv.put("a.battery", b'{"level": "full"}')
    w2 = World()
    p2 = Persister(w2, js)
    await p2.restore()
    assert w2.get("a", "position")["x"] == 1.0
    assert p2.skipped_on_restore == 3


async def test_hostile_stored_values_are_skipped_not_fatal(nc: Client) -> None:
    """Anyone who may write the bucket can plant these; the next start restores the rest."""
    js = nc.jetstream()
    w = World()
    w.spawn("a", components={"position": {"x": 1}})
    p = Persister(w, js)
    await p.flush()
    kv = await js.key_value("edge-state")
    await kv.put("a.velocity", b"[" * 100_000 + b"]" * 100_000)  # deeper than the decoder goes
    await kv.put("a.battery", b'{"level": 1' + b"0" * 400 + b"}")  # an integer no float holds
    await kv.put("b._meta", b'{"kind": "drone", "labels": ["fleet"]}')
    await kv.put("c._meta", b'{"kind": {"drone": 1}}')
    await kv.put("d._meta", b'{"kind": "drone", "labels": {"fleet": "north"}}')
    w2 = World()
    p2 = Persister(w2, js)
    assert await p2.restore() == 2
    assert w2.get("a", "position")["x"] == 1.0 and w2.meta("d").labels == {"fleet": "north"}
    assert sorted(m.id for m in w2.entities()) == ["a", "d"]
    assert p2.skipped_on_restore == 4 and p2.status()["skipped_on_restore"] == 4


async def test_a_flush_cancelled_mid_acknowledgement_loses_nothing(nc: Client, nats_server: NatsServer) -> None:
    """A stop cancels the loop's flush while its acknowledgements are outstanding; the keys it had
    taken go back to pending and the stop's own flush writes them (they were lost before)."""
    js = nc.jetstream()
    w = World()
    w.spawn("a", components={"position": {"x": 1}})
    p = Persister(w, js, interval=60)
    await p.open()
    assert await p.flush() == 2
    w.spawn("marker", components={"position": {"x": 42}})
    with frozen(nats_server.pid):  # the server takes the publishes but cannot answer
        flushing = asyncio.create_task(p.flush())
        for _ in range(100):
            await asyncio.sleep(0.01)
            if p.status()["pending"] == 0 and not flushing.done():
                break
        await asyncio.sleep(0.1)
        assert not flushing.done()
        flushing.cancel()
        await asyncio.gather(flushing, return_exceptions=True)
        assert p.status()["pending"] == 2  # marker.position and marker._meta, not forgotten
    await p.stop()
    assert p.status()["pending"] == 0
    w2 = World()
    await Persister(w2, js).restore()
    assert w2.get("marker", "position")["x"] == 42.0
