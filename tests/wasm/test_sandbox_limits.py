"""Limits against a hostile set of components (docs/sandbox.md, *Loops, floods and quotas*):
the hop limit, the publish rate (token bucket) and the per-component KV quota, in a real pool
running the compiled ``relay`` test component; the inbox's origin filter and the runtime's
re-check of the KV quota on their own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sandbox_support import DEVICE, Recorder, entry, manifest, wait_for

from edge.errors import ComponentLoadError
from edge.wasm.component import Component
from edge.wasm.effects import Effects, check
from edge.wasm.origin import DEFAULT_MAX_HOPS
from edge.wasm.inbox import ComponentInbox
from edge.wasm.manifest import DEFAULT_KV_BYTES, DEFAULT_KV_KEYS, Manifest
from edge.wasm.origin import HOPS_HEADER, ORIGIN_HEADER, origin_headers, origin_id, read_origin
from edge.wasm.pool import SandboxPool
from edge.wasm.protocol import CallResult
from edge.wasm.quotas import KvUsage, TokenBucket

OUT = f"edge.{DEVICE}.evt.relay"


def relay(tmp: Path, modules: dict[str, Path], name: str = "relay", *,
          subscribe: tuple[str, ...] = (f"edge.{DEVICE}.cmd.>",),
          publish: tuple[str, ...] = (f"edge.{DEVICE}.evt.>",), **kw: object) -> Manifest:
    return manifest(tmp, name, modules["relay"], subscribe=subscribe, publish=publish, **kw)


def kv_of(rec: Recorder, name: str) -> dict[str, bytes]:
    return {k: v for (c, k), v in rec.kv.items() if c == name}


def results(rec: Recorder, name: str) -> list[bytes]:
    return [d for c, _, d in rec.published if c == name]


# -- hop limit ------------------------------------------------------------------------------------


async def test_publishes_carry_one_more_hop_and_stop_at_the_hop_limit(
        pool: SandboxPool, rec: Recorder, modules: dict[str, Path], tmp_path: Path) -> None:
    await pool.load(relay(tmp_path, modules), {"out": OUT.encode()})
    for hops in range(DEFAULT_MAX_HOPS + 2):
        await pool.deliver("relay", [(f"edge.{DEVICE}.cmd.x", b"%d" % hops)], hops=hops)
    await pool.flush()
    # a message that passed h handlers makes a publish of h + 1 hops; past the limit: refused
    assert [d for _, _, d in rec.published] == [b"%d" % h for h in range(DEFAULT_MAX_HOPS)]
    assert rec.hops == list(range(1, DEFAULT_MAX_HOPS + 1))
    counters = entry(pool, "relay")["counters"]
    assert counters["loop_dropped"] == 2  # type: ignore[index]
    assert counters["published"] == DEFAULT_MAX_HOPS + 2  # type: ignore[index]
    assert [(c, lim) for c, lim, _ in rec.limits] == [("relay", "hops")]  # one report per 5 s
    assert entry(pool, "relay")["state"] == "running"


async def test_the_hop_limit_is_a_pool_setting(rec: Recorder, modules: dict[str, Path],
                                               tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_hops"):
        SandboxPool(DEVICE, rec, max_hops=0)
    async with SandboxPool(DEVICE, rec, workers=1, max_hops=2) as p:
        await p.load(relay(tmp_path, modules), {"out": OUT.encode()})
        for hops in (0, 1, 2):
            await p.deliver("relay", [(f"edge.{DEVICE}.cmd.x", b"%d" % hops)], hops=hops)
        await p.flush()
        assert [d for _, _, d in rec.published] == [b"0", b"1"]
        with pytest.raises(ValueError, match="hops"):
            await p.deliver("relay", [(f"edge.{DEVICE}.cmd.x", b"")], hops=-1)


# -- publish rate ---------------------------------------------------------------------------------


async def test_a_flooding_component_is_cut_to_its_rate_while_a_neighbour_flows(
        pool: SandboxPool, rec: Recorder, modules: dict[str, Path], tmp_path: Path) -> None:
    rate, burst = 200.0, 100
    await pool.load(relay(tmp_path, modules, "flood", limits={"publish_rate": rate,
                                                             "publish_burst": burst}),
                    {"out": f"edge.{DEVICE}.evt.flood".encode(), "reps": b"100"})
    await pool.load(relay(tmp_path, modules, "quiet"),
                    {"out": f"edge.{DEVICE}.evt.quiet".encode()})
    t0 = time.monotonic()
    for i in range(20):  # 20 x 100 publishes attempted within ~1 s, far above 200/s
        await pool.deliver("flood", [(f"edge.{DEVICE}.cmd.f", b"f")])
        await pool.deliver("quiet", [(f"edge.{DEVICE}.cmd.q", b"%d" % i)])
        await asyncio.sleep(0.05)
    await pool.flush()
    elapsed = time.monotonic() - t0
    flood = len(results(rec, "flood"))
    assert flood <= burst + rate * elapsed + 1, (flood, elapsed)
    assert flood >= burst  # the burst itself goes out
    assert results(rec, "quiet") == [b"%d" % i for i in range(20)]  # the neighbour is untouched
    counters = entry(pool, "flood")["counters"]
    assert counters["published"] == 2000  # type: ignore[index]
    assert counters["rate_limited"] == 2000 - flood  # type: ignore[index]
    assert entry(pool, "quiet")["counters"]["rate_limited"] == 0  # type: ignore[index]
    reports = [(c, lim, n) for c, lim, n in rec.limits]
    assert len(reports) == 1 and reports[0][:2] == ("flood", "publish_rate")  # rate-limited too
    assert reports[0][2] >= 1


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    b = TokenBucket(rate=10.0, burst=5, now=0.0)
    assert b.take(8, 0.0) == 5  # starts full
    assert b.take(1, 0.05) == 0  # half a token
    assert b.take(3, 0.3) == 3  # 0.3 s -> 3 tokens
    assert b.take(100, 100.0) == 5  # never more than the burst


def test_publish_rate_and_burst_are_bounded_in_the_manifest(
        tmp_path: Path, modules: dict[str, Path]) -> None:
    m = relay(tmp_path, modules)
    assert (m.limits.publish_rate, m.limits.publish_burst) == (1000.0, 5000)
    assert (m.limits.kv_keys, m.limits.kv_bytes) == (DEFAULT_KV_KEYS, DEFAULT_KV_BYTES)
    assert m.receive_own is False
    for key, value in (("publish_rate", 0), ("publish_rate", 1e6), ("publish_rate", "nan"),
                       ("publish_burst", 0),
                       ("publish_burst", 2_000_000), ("kv_keys", -1), ("kv_keys", 100_001),
                       ("kv_bytes", 2**27)):
        with pytest.raises(ComponentLoadError, match=f"must be within.*key 'limits.{key}'"):
            relay(tmp_path, modules, limits={key: value})


# -- KV quota -------------------------------------------------------------------------------------


async def test_kv_puts_past_the_quota_fail_with_minus_2_and_the_accounting_survives_a_reload(
        pool: SandboxPool, rec: Recorder, modules: dict[str, Path], tmp_path: Path) -> None:
    m = relay(tmp_path, modules, limits={"kv_keys": 4, "kv_bytes": 64})
    start = {"out": OUT.encode()}  # 1 key, 3 + 19 = 22 bytes

    async def put(*items: bytes) -> list[bytes]:
        before = len(rec.published)
        await pool.deliver("relay", [(f"edge.{DEVICE}.cmd.put", i) for i in items])
        await pool.flush()
        return [d for _, _, d in rec.published[before:]]

    await pool.load(m, start)
    # keys a, b, c fit (4 keys with "out"); d is one key too many; overwriting a is fine
    assert await put(b"a=1", b"b=2", b"c=3", b"d=4", b"a=11") == [b"rc=0"] * 3 + [b"rc=-2",
                                                                                 b"rc=0"]
    assert entry(pool, "relay")["kv"] == {"keys": 4, "bytes": 22 + 2 + 2 + 2 + 1, "max_keys": 4,
                                          "max_bytes": 64}
    # bytes: growing a past 64 bytes in total is refused, shrinking it is not
    assert await put(b"a=" + b"x" * 40, b"a=" + b"x" * 20, b"a=1") == [b"rc=-2", b"rc=0",
                                                                       b"rc=0"]
    assert entry(pool, "relay")["counters"]["kv_refused"] == 2  # type: ignore[index]
    assert [lim for _, lim, _ in rec.limits] == ["kv_quota"]
    assert kv_of(rec, "relay") == {"a": b"1", "b": b"2", "c": b"3"}  # d was never written

    await pool.unload("relay")
    await pool.load(m, start | kv_of(rec, "relay"))  # the store's state, as a device reloads it
    assert entry(pool, "relay")["kv"]["keys"] == 4  # type: ignore[index]
    assert await put(b"d=4", b"c=9") == [b"rc=-2", b"rc=0"]
    assert "d" not in kv_of(rec, "relay")


async def test_a_store_already_past_a_lowered_quota_loads_and_can_only_shrink(
        pool: SandboxPool, rec: Recorder, modules: dict[str, Path], tmp_path: Path) -> None:
    m = relay(tmp_path, modules, limits={"kv_keys": 2, "kv_bytes": 1000})
    await pool.load(m, {"out": OUT.encode(), "a": b"1", "b": b"22"})  # 3 keys, quota 2
    await pool.deliver("relay", [(f"edge.{DEVICE}.cmd.put", i) for i in (b"c=1", b"b=2",
                                                                           b"b=333")])
    await pool.flush()
    assert [d for _, _, d in rec.published] == [b"rc=-2", b"rc=0", b"rc=0"]  # grows: no key added


def test_the_runtime_refuses_a_reply_past_the_kv_quota(tmp_path: Path,
                                                       modules: dict[str, Path]) -> None:
    m = relay(tmp_path, modules, limits={"kv_keys": 2, "kv_bytes": 10})
    comp = Component(manifest=m, wasm=b"", info=None, kv={"a": b"1"})  # type: ignore[arg-type]
    assert check(comp, CallResult(kv_puts=[("b", b"1234567")]), calls=1, messages=0) is None
    why = check(comp, CallResult(kv_puts=[("b", b"1"), ("c", b"1")]), calls=1, messages=0)
    assert why is not None and "quota" in why
    assert check(comp, CallResult(kv_puts=[("a", b"123456789")]), calls=1, messages=0) is None
    assert check(comp, CallResult(kv_puts=[("a", b"1234567890")]), calls=1, messages=0)
    assert check(comp, CallResult(kv_puts=[("b", b"1"), ("b", b"2")]), calls=1,
                 messages=0) is None  # one new key, overwritten in the same reply


def test_kv_usage_counts_names_and_values() -> None:
    u = KvUsage.of({"ab": b"123"}, max_keys=2, max_bytes=10)
    assert (u.keys, u.bytes) == (1, 5)
    assert u.allows("c", b"1234", None)  # 5 + 5 = 10
    assert not u.allows("c", b"12345", None)
    assert u.allows("ab", b"12345678", b"123")  # 5 + 5 = 10
    assert not u.allows("ab", b"123456789", b"123")
    u.put("c", b"1", None)
    assert not u.allows("d", b"", None)  # a third key
    assert u.check_all({"ab": b"123", "c": b"1"}, [("c", b"")]) is True


# -- the inbox: own messages, malformed headers, batches of one hop count ----------------------


async def test_the_inbox_drops_own_messages_unless_asked_and_counts_malformed_hops() -> None:
    got: list[tuple[list[tuple[str, bytes]], int]] = []

    async def deliver(batch: list[tuple[str, bytes]], hops: int) -> None:
        got.append((batch, hops))

    inbox = ComponentInbox("me", deliver, origin=origin_id("me", "d1"))
    inbox.put("s.1", b"a")  # no headers: hop 0
    inbox.put("s.2", b"b", origin_headers(origin_id("me", "d1"), 1))  # its own: dropped
    inbox.put("s.3", b"c", origin_headers(origin_id("other", "d1"), 3))
    inbox.put("s.4", b"d", origin_headers(origin_id("me", "d2"), 3))  # "me" of another device
    inbox.put("s.5", b"e", {HOPS_HEADER: "-1"})  # malformed: dropped
    inbox.put("s.6", b"f", {HOPS_HEADER: "9" * 7})
    inbox.put("s.7", b"g", {ORIGIN_HEADER: "other"})
    for internal in ("$JS.ACK.EVT.c.1.2.3.4.0", "$JS.API.STREAM.INFO.EVT", "_INBOX.x.1",
                     "$KV.edge-components.other.secret", "$O.models.M.x", "$SYS.REQ.SERVER.PING"):
        inbox.put(internal, b"x")  # NATS's plumbing and others' private KV: never delivered
    inbox.put("$KV.edge-state.drone1.position", b"h")  # entity state is the device's public world
    inbox.start()
    try:
        await wait_for(lambda: inbox.delivered == 5)
    finally:
        await inbox.stop()
    assert got == [([("s.1", b"a")], 0), ([("s.3", b"c"), ("s.4", b"d")], 3),
                   ([("s.7", b"g"), ("$KV.edge-state.drone1.position", b"h")], 0)]
    assert inbox.to_dict() | {"queued": 0} == {
        "received": 14, "delivered": 5, "dropped": 0, "own": 1, "malformed": 2, "internal": 6,
        "errors": 0, "undelivered": 0, "queued": 0, "in_flight": 0}

    mine = ComponentInbox("me", deliver, origin=origin_id("me", "d1"), receive_own=True)
    mine.put("s.2", b"b", origin_headers(origin_id("me", "d1"), 1))
    assert (mine.own, mine.to_dict()["queued"]) == (0, 1)


def test_origin_headers_round_trip() -> None:
    assert read_origin(origin_headers(origin_id("a", "d1"), 7)) == ("a@d1", 7)
    assert read_origin(None) == (None, 0)
    assert read_origin({}) == (None, 0)


async def test_effects_refuse_the_hop_limit_outside_the_range() -> None:
    with pytest.raises(ValueError, match="max_hops"):
        Effects(Recorder(), max_hops=65)


async def test_the_inbox_counts_overflow_and_failed_deliveries_and_keeps_serving() -> None:
    calls: list[int] = []

    async def deliver(batch: list[tuple[str, bytes]], hops: int) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("the pool is gone")

    inbox = ComponentInbox("me", deliver, limit=2, max_batch=1)
    for i in range(3):
        inbox.put("s", b"%d" % i)  # the third does not fit
    inbox.start()
    try:
        await wait_for(lambda: inbox.delivered == 1)
    finally:
        await inbox.stop()
    assert calls == [1, 1]
    assert (inbox.dropped, inbox.errors, inbox.delivered, inbox.undelivered) == (1, 1, 1, 1)


def _accounted(counts: dict[str, int]) -> int:
    return sum(counts[k] for k in ("delivered", "dropped", "own", "malformed", "internal",
                                   "undelivered", "queued", "in_flight"))


async def test_every_message_the_inbox_received_is_counted_once_across_failures_and_a_stop() -> None:
    """received == delivered + dropped + own + malformed + internal + undelivered + queued +
    in_flight, at every moment: with failing deliveries (a batch of several), overflow, and a
    stop that cuts a delivery short (those were counted nowhere)."""
    release = asyncio.Event()
    calls = 0

    async def deliver(batch: list[tuple[str, bytes]], hops: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the worker went away")
        if calls == 3:
            await release.wait()  # never set: the stop cuts this one short

    inbox = ComponentInbox("me", deliver, origin=origin_id("me", "d1"), limit=20, max_batch=4)
    for i in range(25):  # 5 over the limit
        inbox.put(f"s.{i}", b"x", origin_headers(origin_id("other", "d1"), i // 8))
    inbox.put("s.own", b"x", origin_headers(origin_id("me", "d1"), 0))
    inbox.put("s.bad", b"x", {HOPS_HEADER: "x"})
    assert _accounted(inbox.to_dict()) == inbox.received == 27
    inbox.start()
    await wait_for(lambda: inbox.to_dict()["in_flight"] > 0 and calls == 3)
    counts = inbox.to_dict()
    assert _accounted(counts) == counts["received"] and counts["errors"] == 1
    await inbox.stop()
    counts = inbox.to_dict()
    assert _accounted(counts) == counts["received"] == 27
    assert counts["in_flight"] == 0 and counts["undelivered"] == counts["errors"] * 4 + 4


class FailingLimits(Recorder):
    def on_limit(self, component: str, limit: str, dropped: int) -> None:
        raise RuntimeError("the event publisher is gone")


async def test_a_failing_on_limit_callback_is_logged_and_changes_nothing(
        modules: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    host = FailingLimits()
    async with SandboxPool(DEVICE, host, workers=1, max_hops=1) as p:
        await p.load(relay(tmp_path, modules), {"out": OUT.encode()})
        await p.deliver("relay", [(f"edge.{DEVICE}.cmd.x", b"late")], hops=1)
        await p.deliver("relay", [(f"edge.{DEVICE}.cmd.x", b"fresh")])
        await p.flush()
        assert [d for _, _, d in host.published] == [b"fresh"]
        assert entry(p, "relay")["counters"]["loop_dropped"] == 1  # type: ignore[index]
        assert entry(p, "relay")["state"] == "running"
    assert "on_limit callback failed for component 'relay'" in caplog.text
