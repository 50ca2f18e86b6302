"""Loops and quotas through a real Runtime (embedded nats-server, the device streams, sandbox
workers) and the compiled ``relay`` test component: a component echoing its own ``>``
subscription does not loop, two components echoing each other stop at the hop limit (reported
as an event), and the KV quota holds across an unload and a reload from the bucket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from sandbox_support import wait_for, write_manifest

from edge.config import DeviceConfig
from edge.runtime import Runtime
from edge.sync.device.streams import stream_usage
from edge.wasm.origin import DEFAULT_MAX_HOPS
from edge.wasm.layer import COMPONENT_KV_STREAM, KV_SUBJECT_PREFIX
from edge.wasm.origin import HOPS_HEADER, ORIGIN_HEADER, origin_headers, origin_id

pytestmark = pytest.mark.timeout(120)

DEV = "lp"


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = Runtime(DeviceConfig(device=DEV, data_dir=tmp_path / "data"))
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


class Tap:
    """Every message on ``subject``, with its headers."""

    def __init__(self) -> None:
        self.msgs: list[Msg] = []

    async def on_msg(self, msg: Msg) -> None:
        self.msgs.append(msg)

    def payloads(self, data: bytes | None = None) -> list[bytes]:
        return [m.data for m in self.msgs if data is None or m.data == data]


async def tap(rt: Runtime, subject: str) -> Tap:
    t = Tap()
    await rt.sandbox.ctx.nc.subscribe(subject, cb=t.on_msg)
    return t


async def relay(rt: Runtime, tmp: Path, modules: dict[str, Path], name: str, out: str, *,
                subscribe: tuple[str, ...], **kw: object) -> None:
    kv = await rt.sandbox._bucket()
    await kv.put(f"{name}.out", out.encode())
    path = write_manifest(tmp, name, modules["relay"], subscribe=subscribe,
                          publish=(f"edge.{DEV}.evt.>",), **kw)  # type: ignore[arg-type]
    await rt.load_component(str(path))


async def stored(kv: KeyValue, key: str) -> KeyValue.Entry:
    """The bucket's entry of ``key`` once the effects lane has written it."""
    for _ in range(100):
        try:
            return await kv.get(key)
        except KeyNotFoundError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{key} was never written")


def status(rt: Runtime, name: str) -> dict[str, object]:
    return next(s for s in rt.components_status() if s["name"] == name)


async def test_a_component_echoing_its_own_wildcard_subscription_does_not_loop(
        runtime: Runtime, tmp_path: Path, modules: dict[str, Path]) -> None:
    out = f"edge.{DEV}.evt.relay"
    echoes = await tap(runtime, out)
    await relay(runtime, tmp_path, modules, "relay", out, subscribe=(">",))
    nc = runtime.sandbox.ctx.nc
    for _ in range(3):
        await nc.publish(f"edge.{DEV}.cmd.hello", b"hi")
    await wait_for(lambda: len(echoes.payloads(b"hi")) >= 3)
    await asyncio.sleep(2.0)  # an echo loop would run as fast as the sandbox does meanwhile
    assert echoes.payloads(b"hi") == [b"hi"] * 3  # each heard once, its own echo not at all
    assert all(m.headers and m.headers[ORIGIN_HEADER] == f"relay@{DEV}" for m in echoes.msgs)
    inbox = status(runtime, "relay")["inbox"]
    assert inbox["own"] >= 3  # type: ignore[index]  # it was sent its echoes and dropped them
    # the runtime's JetStream traffic (API requests, acks of the stream consumers, replies) matches
    # `>` but is never delivered: echoing it looped through the consumers that read the echoes
    assert inbox["internal"] >= 1  # type: ignore[index]
    # it echoes every other message it hears once (JetStream API traffic, events), no more
    assert len(echoes.msgs) < 500, len(echoes.msgs)
    usage = await stream_usage(runtime.sandbox.ctx.js, "EVT")
    assert usage.fill < 0.01, usage


async def test_receive_own_opts_in_and_the_hop_limit_still_ends_the_loop(
        runtime: Runtime, tmp_path: Path, modules: dict[str, Path]) -> None:
    out = f"edge.{DEV}.evt.self"
    echoes = await tap(runtime, out)
    await relay(runtime, tmp_path, modules, "self", out, receive_own=True,
                subscribe=(out, f"edge.{DEV}.cmd.self"))
    await runtime.sandbox.ctx.nc.publish(f"edge.{DEV}.cmd.self", b"once")
    await wait_for(lambda: status(runtime, "self")["counters"]["loop_dropped"] == 1)  # type: ignore[index]
    await asyncio.sleep(0.3)
    assert echoes.payloads() == [b"once"] * DEFAULT_MAX_HOPS
    assert [int(m.headers[HOPS_HEADER]) for m in echoes.msgs if m.headers] == list(
        range(1, DEFAULT_MAX_HOPS + 1))


async def test_two_echoing_components_stop_at_the_hop_limit_and_raise_an_event(
        runtime: Runtime, tmp_path: Path, modules: dict[str, Path]) -> None:
    a_out, b_out = f"edge.{DEV}.evt.a", f"edge.{DEV}.evt.b"
    both = await tap(runtime, f"edge.{DEV}.evt.*")
    limits = await tap(runtime, f"edge.{DEV}.evt.runtime.limit")
    await relay(runtime, tmp_path, modules, "a", a_out, subscribe=(f"edge.{DEV}.cmd.a", b_out))
    await relay(runtime, tmp_path, modules, "b", b_out, subscribe=(a_out,))
    await runtime.sandbox.ctx.nc.publish(f"edge.{DEV}.cmd.a", b"ping")
    await wait_for(lambda: limits.msgs)
    await asyncio.sleep(0.3)
    chain = [(m.subject, m.headers[ORIGIN_HEADER], int(m.headers[HOPS_HEADER]))
             for m in both.msgs if m.data == b"ping" and m.headers]
    assert chain == [(a_out if h % 2 else b_out, f"a@{DEV}" if h % 2 else f"b@{DEV}", h)
                     for h in range(1, DEFAULT_MAX_HOPS + 1)]
    event = json.loads(limits.msgs[0].data)
    assert event == {"component": "a", "limit": "hops", "dropped": 1}  # its 9th hop: refused
    assert status(runtime, "a")["counters"]["loop_dropped"] == 1  # type: ignore[index]
    assert status(runtime, "b")["counters"]["loop_dropped"] == 0  # type: ignore[index]


async def test_the_kv_quota_holds_across_an_unload_and_a_reload_from_the_bucket(
        runtime: Runtime, tmp_path: Path, modules: dict[str, Path]) -> None:
    out = f"edge.{DEV}.evt.store"
    answers = await tap(runtime, out)
    limits = await tap(runtime, f"edge.{DEV}.evt.runtime.limit")
    nc = runtime.sandbox.ctx.nc
    kv = await runtime.sandbox._bucket()
    put = f"edge.{DEV}.cmd.store.put"

    async def load() -> None:
        await relay(runtime, tmp_path, modules, "store", out, subscribe=(put,),
                    limits={"kv_keys": 3, "kv_bytes": 4096})

    await load()
    for item in (b"a=1", b"b=2", b"c=3"):
        await nc.publish(put, item)
    await wait_for(lambda: len(answers.msgs) == 3)
    assert answers.payloads() == [b"rc=0", b"rc=0", b"rc=-2"]  # out, a, b: 3 keys
    await wait_for(lambda: status(runtime, "store")["counters"]["kv_refused"] == 1)  # type: ignore[index]
    await wait_for(lambda: limits.msgs)
    assert json.loads(limits.msgs[0].data) == {"component": "store", "limit": "kv_quota",
                                               "dropped": 1}
    assert (await stored(kv, "store.b")).value == b"2"
    raw = await runtime.sandbox.ctx.js.get_last_msg(COMPONENT_KV_STREAM,
                                                    f"{KV_SUBJECT_PREFIX}store.b")
    assert raw.headers and raw.headers[ORIGIN_HEADER] == f"store@{DEV}"  # its own writes: not heard

    await runtime.unload_component("store")
    await load()  # the snapshot comes back from the bucket: 3 keys stored
    assert status(runtime, "store")["kv"]["keys"] == 3  # type: ignore[index]
    for item in (b"c=3", b"a=9"):
        await nc.publish(put, item)
    await wait_for(lambda: len(answers.msgs) == 5)
    assert answers.payloads()[3:] == [b"rc=-2", b"rc=0"]


async def test_a_component_subscribed_to_its_own_kv_subjects_does_not_hear_its_writes(
        runtime: Runtime, tmp_path: Path, modules: dict[str, Path]) -> None:
    out = f"edge.{DEV}.evt.kvself"
    answers = await tap(runtime, out)
    put = f"edge.{DEV}.cmd.kvself.put"
    await relay(runtime, tmp_path, modules, "kvself", out,
                subscribe=(f"{KV_SUBJECT_PREFIX}>", put))
    await runtime.sandbox.ctx.nc.publish(put, b"a=1")
    await stored(await runtime.sandbox._bucket(), "kvself.a")
    await wait_for(lambda: status(runtime, "kvself")["inbox"]["internal"] >= 1)  # type: ignore[index]
    await asyncio.sleep(0.3)
    # its write came back on $KV.edge-components.kvself.a: the components' private bucket is
    # never delivered (its own keys or another's), so it is dropped, not echoed
    assert answers.payloads() == [b"rc=0"]


async def test_the_same_component_on_another_device_is_not_its_own_origin(
        runtime: Runtime, tmp_path: Path, modules: dict[str, Path]) -> None:
    out = f"edge.{DEV}.evt.twin"
    answers = await tap(runtime, out)
    await relay(runtime, tmp_path, modules, "twin", out, subscribe=("edge.*.evt.twin-in",))
    nc = runtime.sandbox.ctx.nc
    # what "twin" on another device published (e.g. across the hub) is heard; its own is not
    await nc.publish("edge.other.evt.twin-in", b"from other",
                     headers=origin_headers(origin_id("twin", "other"), 1))
    await nc.publish(f"edge.{DEV}.evt.twin-in", b"from me",
                     headers=origin_headers(origin_id("twin", DEV), 1))
    await wait_for(lambda: answers.msgs)
    await asyncio.sleep(0.3)
    assert answers.payloads() == [b"from other"]
    assert int(answers.msgs[0].headers[HOPS_HEADER]) == 2  # type: ignore[index]
    assert status(runtime, "twin")["inbox"]["own"] == 1  # type: ignore[index]
