"""Effects (edge.wasm.effects, edge.wasm.grants): denials in the worker, and the runtime's own
check of what a worker reports."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from rigs.freeze import frozen
from sandbox_support import DEVICE, Recorder, demo, entry, manifest

from nats.aio.client import Client

from edge.layer import DeviceContext
from edge.nats.commands import CommandRouter
from edge.nats.outbox import EventPublisher
from edge.nats.server import NatsServer
from edge.wasm.abi import KV_MAX_VALUE, PUBLISH_MAX_BYTES
from edge.wasm.component import Component
from edge.wasm.effects import Effects, check
from edge.nats.subjects import subject_matches
from edge.wasm.grants import PublishGrant, kv_put_allowed
from edge.wasm.layer import SandboxLayer, SandboxSettings
from edge.wasm.pool import SandboxPool
from edge.wasm.protocol import CallResult
from edge.world.store import World

pytestmark = pytest.mark.timeout(60)


async def test_publish_outside_grants_is_denied_counted_and_logged(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, modules: dict[str, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.wasm")
    await pool.load(manifest(tmp_path, "forbidden", modules["forbidden"], read=("a.b",),
                             tick_hz=1, publish=("edge.{device}.evt.forbidden.>",)))
    pool.batch("forbidden", 1)
    for _ in range(3):
        assert await pool.tick("forbidden", 1, 0.1)
    await pool.flush()
    assert [s for _, s, _ in rec.published] == ["edge.dev1.evt.forbidden.ok"] * 3
    counters = entry(pool, "forbidden")["counters"]
    assert counters["denied"] == 3 and counters["published"] == 3  # type: ignore[index]
    assert any("denied publishing to edge.dev1.cmd.motors.arm" in r.message
               for r in caplog.records)
    # the component saw 0 (ok), -1 (denied), -2 (wildcard subject is invalid)
    assert any(r.message == "[forbidden] 0 -1 -2" for r in caplog.records)



def component(tmp_path: Path, name: str = "c", **kw: object) -> Component:
    m = manifest(tmp_path, name, demo("physics").module, read=("position.x",),
                 write=("position.x", "position.y"), **kw)
    return Component(manifest=m, wasm=b"", info=None, kv={})  # type: ignore[arg-type]


def test_an_intact_reply_passes(tmp_path: Path) -> None:
    comp = component(tmp_path, publish=(f"edge.{DEVICE}.evt.>",), publish_per_call=2)
    res = CallResult(publishes=[(f"edge.{DEVICE}.evt.a", b"x")] * 2, kv_puts=[("k.1", b"v")],
                     written=0b11)
    assert check(comp, res, calls=1, messages=0, shared=True) is None
    assert check(comp, CallResult(messages=3, dropped=1), calls=6, messages=3) is None


@pytest.mark.parametrize(("res", "why"), [
    (CallResult(publishes=[("edge.other.cmd.arm", b"x")]), "the grants refuse"),
    (CallResult(publishes=[(f"edge.{DEVICE}.evt.*", b"x")]), "the grants refuse"),
    (CallResult(publishes=[(f"edge.{DEVICE}.evt.a", b"x" * (PUBLISH_MAX_BYTES + 1))]),
     "the grants refuse"),
    (CallResult(publishes=[(f"edge.{DEVICE}.evt.a", b"")] * 3), "3 publishes, at most 2"),
    (CallResult(kv_puts=[("../x", b"")]), "outside the limits"),
    (CallResult(kv_puts=[("k", b"v" * (KV_MAX_VALUE + 1))]), "outside the limits"),
    (CallResult(messages=1), "1 messages handled"),
    (CallResult(written=0b100), "outside the write set"),
])
def test_a_reply_no_intact_worker_sends_is_refused(tmp_path: Path, res: CallResult,
                                                   why: str) -> None:
    comp = component(tmp_path, publish=(f"edge.{DEVICE}.evt.>",), publish_per_call=2)
    got = check(comp, res, calls=1, messages=0, shared=True)
    assert got is not None and why in got


def test_write_bits_only_for_shared_ticks(tmp_path: Path) -> None:
    comp = component(tmp_path)
    assert check(comp, CallResult(written=1), calls=1, messages=0) is not None


def test_grants_rules() -> None:
    assert subject_matches("a.*.c", "a.b.c") and not subject_matches("a.*", "a.b.c")
    assert subject_matches("a.>", "a.b.c") and not subject_matches("a.>", "a")
    g = PublishGrant(("edge.d.evt.>",))
    assert g.allows("edge.d.evt.x") and not g.allows("edge.d.cmd.x")
    assert not g.allows("edge.d.evt.>") and not g.allows("edge.d.evt..x")
    assert not g.allows_message("edge.d.evt.x", bytes(PUBLISH_MAX_BYTES + 1))
    assert kv_put_allowed("a-b_c.1", b"") and not kv_put_allowed("a/b", b"")
    assert not kv_put_allowed("k" * 129, b"")


# -- fairness: one component's flood never holds back another's effects -------------------------


class SlowHost:
    """A host whose KV writes take a millisecond (an acknowledged store) and whose publishes
    are recorded with the time they were handed over."""

    def __init__(self) -> None:
        self.kv_puts: list[tuple[str, str, bytes]] = []
        self.published: list[tuple[str, str, float]] = []

    async def publish(self, component: str, subject: str, data: bytes,
                      hops: int = 1) -> None:
        self.published.append((component, subject, time.monotonic()))

    async def kv_put(self, component: str, key: str, value: bytes, hops: int = 1) -> None:
        await asyncio.sleep(0.001)
        self.kv_puts.append((component, key, value))

    def on_limit(self, component: str, limit: str, dropped: int) -> None:
        pass

    def on_fault(self, component: str, fault: object) -> None:
        pass


async def test_a_kv_flood_is_coalesced_and_never_delays_another_components_publish(tmp_path: Path) -> None:
    host = SlowHost()
    effects = Effects(host)  # type: ignore[arg-type]
    task = asyncio.create_task(effects.run())
    try:
        flood, quiet = component(tmp_path, "flood"), component(tmp_path, "quiet")
        for i in range(100):  # 100 replies of 1,000 puts to one key and 100 publishes each
            effects.apply(flood, CallResult(kv_puts=[("k.1", b"%d" % j) for j in range(i * 1000, (i + 1) * 1000)],
                                            publishes=[(f"edge.{DEVICE}.evt.flood", b"x")] * 100))
        sent = time.monotonic()
        effects.apply(quiet, CallResult(publishes=[(f"edge.{DEVICE}.evt.quiet", b"q")]))
        await asyncio.wait_for(effects.join(), 30)
        quiet_at = next(t for c, _, t in host.published if c == "quiet")
        flood_pubs = [t for c, _, t in host.published if c == "flood"]
        assert quiet_at - sent < 0.5  # its turn came within a round of the flood's bursts
        assert sum(1 for t in flood_pubs if t > quiet_at) > 0  # ... not after the whole flood
        assert len(host.kv_puts) < 100  # 100,000 puts to one key coalesced into a few writes
        assert host.kv_puts[-1] == ("flood", "k.1", b"99999")  # the newest value wins
        assert flood.kv["k.1"] == b"99999"
    finally:
        task.cancel()


async def test_a_components_queue_is_bounded_and_the_drop_counted(tmp_path: Path) -> None:
    host = SlowHost()
    effects = Effects(host, lane_bytes=10_000)  # type: ignore[arg-type]
    comp = component(tmp_path, "big")
    effects.apply(comp, CallResult(publishes=[(f"edge.{DEVICE}.evt.big", b"x" * 1000)] * 50))
    kept = 10_000 // (1000 + len(f"edge.{DEVICE}.evt.big"))
    assert comp.counters["effects_dropped"] == 50 - kept and effects.dropped == 50 - kept
    task = asyncio.create_task(effects.run())
    try:
        await asyncio.wait_for(effects.join(), 10)
        assert len(host.published) == kept
    finally:
        task.cancel()


# -- KV writes the store did not take are kept, not lost -----------------------------------------


async def _sandbox(nc: Client, tmp_path: Path) -> SandboxLayer:
    """A started sandbox layer whose JetStream calls time out after 1 s (5 s by default)."""
    events = EventPublisher(nc, device=DEVICE)
    ctx = DeviceContext(device=DEVICE, nc=nc, js=nc.jetstream(timeout=1.0), world=World(),
                        data_dir=tmp_path, events=events, commands=CommandRouter(nc, DEVICE, events))
    layer = SandboxLayer([], SandboxSettings(deadline_s=5.0, recycle_after=10_000, workers=1))
    await layer.start(ctx)
    await layer._bucket()
    return layer


async def test_kv_writes_the_store_did_not_acknowledge_are_retried_not_lost(
        nc: Client, nats_server: NatsServer, tmp_path: Path, modules: dict[str, Path]) -> None:
    """A write that times out (the server stalled) and the rest of its batch go back to the
    lane and are written once the server answers again (the batch was dropped before: the
    component's own view had the values, the bucket never got them)."""
    layer = await _sandbox(nc, tmp_path)
    try:
        assert layer.pool is not None
        effects = layer.pool.effects
        comp = component(tmp_path, "keeper")
        with frozen(nats_server.pid):
            effects.apply(comp, CallResult(kv_puts=[("k.a", b"1"), ("k.b", b"2"), ("k.c", b"3")]))
            for _ in range(200):  # until the first write has timed out
                if effects.kv_failures:
                    break
                await asyncio.sleep(0.05)
        await asyncio.wait_for(effects.join(), 10)
        kv = await layer._bucket()
        assert {k: (await kv.get(f"keeper.{k}")).value for k in ("k.a", "k.b", "k.c")} == {
            "k.a": b"1", "k.b": b"2", "k.c": b"3"}
        assert comp.counters["effects_dropped"] == 0 and effects.kv_failures >= 1
        assert comp.counters["kv_failures"] == effects.kv_failures
    finally:
        await layer.stop()


async def test_kv_writes_left_when_the_sandbox_stops_are_counted_as_dropped(
        nc: Client, nats_server: NatsServer, tmp_path: Path, modules: dict[str, Path]) -> None:
    """The stop gives the KV writer 2 s; what the stalled server never took is counted
    (``effects_dropped``), also the batch the stop cancelled in the middle of its writes."""
    layer = await _sandbox(nc, tmp_path)
    assert layer.pool is not None
    effects = layer.pool.effects
    comp = component(tmp_path, "keeper")
    with frozen(nats_server.pid):
        effects.apply(comp, CallResult(kv_puts=[("k.a", b"1"), ("k.b", b"2"), ("k.c", b"3")],
                                       publishes=[(f"edge.{DEVICE}.evt.x", b"p")]))
        await layer.stop()
    assert comp.counters["effects_dropped"] == 3  # the publish went out; no KV write was confirmed
    assert effects.dropped == 3
