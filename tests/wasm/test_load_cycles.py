"""No leaks per load: 2,000 load/unload cycles through a real Runtime (embedded nats-server,
sandbox workers) leave no JetStream consumer, NATS subscription, task or runtime memory behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from edge.config import DeviceConfig
from edge.runtime import Runtime
from edge.wasm.layer import COMPONENT_KV_STREAM

pytestmark = pytest.mark.timeout(120)

MIB = 2**20
CYCLES = 2_000
#: cycles run before the baselines are taken (imports, caches, the first worker recycles)
WARMUP = 100


@pytest.fixture
async def runtime(tmp_path: Path, components_dir: Path) -> AsyncIterator[Runtime]:
    # the language layer loads its model in the background and then subscribes: its own
    # subscription appearing mid-run is not a component's (it has its own tests)
    from edge.language.config import LanguageConfig

    rt = Runtime(DeviceConfig(device="cyc", data_dir=tmp_path / "data", language=LanguageConfig(enabled=False)))
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


async def consumers(rt: Runtime) -> int:
    info = await rt.sandbox.ctx.js.stream_info(COMPONENT_KV_STREAM)
    return info.state.consumer_count


def subjects(rt: Runtime) -> list[str]:
    """The connection's subscriptions (no public list in nats-py), without nats-py's one shared
    request-reply inbox, which it creates lazily on the connection's first request (whichever
    layer makes one first, whenever)."""
    nc = rt.sandbox.ctx.nc
    mux = nc._resp_sub_prefix.decode() + "*" if nc._resp_sub_prefix else None
    return sorted(s.subject for s in nc._subs.values() if s.subject != mux)


def subscriptions(rt: Runtime) -> int:
    return len(subjects(rt))


async def test_component_state_is_read_without_a_consumer(runtime: Runtime) -> None:
    layer = runtime.sandbox
    kv = await layer._bucket()
    await kv.put("echo.a", b"1")
    await kv.put("echo.b.c", b"2")
    await kv.put("echo.gone", b"3")
    await kv.delete("echo.gone")
    await kv.put("echo2.a", b"other component")
    before = await consumers(runtime)
    assert await layer._component_state("echo") == {"a": b"1", "b.c": b"2"}
    assert await layer._component_state("nothing") == {}
    assert await consumers(runtime) == before


async def test_2000_load_unload_cycles_leave_nothing_behind(
        runtime: Runtime, components_dir: Path) -> None:
    echo = str(components_dir / "echo" / "manifest.toml")  # subscription + message pump
    battery = str(components_dir / "battery" / "manifest.toml")  # tick loop
    kv = await runtime.sandbox._bucket()
    await kv.put("echo.seen", b"1")  # so every load of echo reads a snapshot
    # the event publisher subscribes to its ack inbox on its first event, whenever that comes:
    # one first event now, so that one-time subscription is in the baseline
    runtime.events.emit("edge.cyc.evt.cycles.start", b"{}")
    deadline = asyncio.get_running_loop().time() + 5.0
    while runtime.events.status()["acked"] < 1 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    me = psutil.Process()
    base: tuple[int, int, int, int] | None = None
    for i in range(CYCLES):
        if i == WARMUP:
            base = (await consumers(runtime), subscriptions(runtime), len(asyncio.all_tasks()),
                    me.memory_info().rss)
            base_subjects = subjects(runtime)
        manifest, name = (echo, "echo") if i % 2 == 0 else (battery, "battery")
        await runtime.load_component(manifest)
        await runtime.unload_component(name)
    assert base is not None
    b_consumers, b_subs, b_tasks, b_rss = base
    assert await consumers(runtime) == b_consumers == 0
    assert subscriptions(runtime) == b_subs, sorted(set(subjects(runtime)) ^ set(base_subjects))
    deadline = asyncio.get_running_loop().time() + 5.0  # a runtime task may be mid-flight
    while len(asyncio.all_tasks()) > b_tasks and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) <= b_tasks, [t.get_name() for t in asyncio.all_tasks()]
    assert me.memory_info().rss - b_rss < 16 * MIB, (me.memory_info().rss - b_rss) / MIB
    assert runtime.components_status() == []
