"""OTA activation with the warm-standby swap: a real nats-server, a real runtime, real wasm
(docs/ota.md, *Store and activation*)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client

from edge.ota import hub, repo as fleet
from edge.runtime import Runtime

from support import (TRAP_CODE, component, device_config, init_fail_module, ota_status,
                     publish_component, versions, wait_for)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def device(tmp_path: Path, nats_url: str, nc: Client) -> Runtime:
    repo = tmp_path / "fleet"
    fleet.keygen(repo)
    src = tmp_path / "src"
    for v in ("1.0.0", "2.0.0"):
        publish_component(repo, tmp_path, component(src, "blink", v))
    publish_component(repo, tmp_path, component(src, "blink", "3.0.0", TRAP_CODE))
    publish_component(repo, tmp_path, component(src, "blink", "4.0.0", module=init_fail_module()))
    await fleet.upload(nc.jetstream(), repo)
    rt = Runtime(device_config(tmp_path, nats_url, repo / "metadata" / "1.root.json",
                               probation_s=0.3))
    await rt.start()
    return rt


async def test_the_old_ticks_until_the_promotion_and_the_new_takes_the_next_tick(
        device: Runtime, nc: Client) -> None:
    js = nc.jetstream()
    try:
        await hub.set_desired(js, "dev1", "r1", {"blink": "1.0.0"})
        await wait_for(lambda: ota_status(device)["revision"] == "r1")
        old = device.sandbox.components["blink"]
        old_tick = old.tick
        assert old_tick is not None
        await wait_for(lambda: old_tick.stats.ticks >= 3)
        await hub.set_desired(js, "dev1", "r2", {"blink": "2.0.0"})
        await wait_for(lambda: versions(device) == {"blink": "2.0.0"})
        loaded = device.sandbox.components["blink"]
        assert loaded is old  # the same inbox and subscriptions: only the instance changed
        new_tick = loaded.tick
        assert new_tick is not None and new_tick is not old_tick
        stopped_at, stopped_ticks = old_tick.last_at, old_tick.stats.ticks
        assert stopped_at is not None
        await wait_for(lambda: new_tick.stats.ticks >= 3)
        assert old_tick.stats.ticks == stopped_ticks  # never ticked after the promotion
        assert old_tick.last_at == stopped_at
        assert new_tick.stats.skipped == 0  # its first tick found the new instance running
        await wait_for(lambda: ota_status(device)["revision"] == "r2")
    finally:
        await device.stop()


async def test_a_failing_staged_init_leaves_the_old_ticking_and_is_rolled_back(
        device: Runtime, nc: Client) -> None:
    js = nc.jetstream()
    try:
        await hub.set_desired(js, "dev1", "r1", {"blink": "1.0.0"})
        await wait_for(lambda: ota_status(device)["revision"] == "r1")
        tick = device.sandbox.components["blink"].tick
        assert tick is not None
        await hub.set_desired(js, "dev1", "r4", {"blink": "4.0.0"})
        await wait_for(lambda: "blink@4.0.0" in ota_status(device)["bad"])
        reason = ota_status(device)["bad"]["blink@4.0.0"]
        assert "edge_init returned 1" in reason and "the running version is kept" in reason
        assert versions(device) == {"blink": "1.0.0"}
        assert device.sandbox.components["blink"].tick is tick  # never stopped
        before = tick.stats.ticks
        await wait_for(lambda: tick.stats.ticks > before + 2)
    finally:
        await device.stop()


async def test_a_probation_trap_rolls_back_through_the_same_swap(device: Runtime, nc: Client) -> None:
    js = nc.jetstream()
    try:
        await hub.set_desired(js, "dev1", "r1", {"blink": "1.0.0"})
        await wait_for(lambda: ota_status(device)["revision"] == "r1")
        await hub.set_desired(js, "dev1", "r3", {"blink": "3.0.0"})
        await wait_for(lambda: "blink@3.0.0" in ota_status(device)["bad"])
        await wait_for(lambda: versions(device) == {"blink": "1.0.0"})
        tick = device.sandbox.components["blink"].tick
        assert tick is not None
        await wait_for(lambda: tick.stats.ticks > 2)
        st = next(c for c in device.components_status() if c["name"] == "blink")
        assert st["state"] == "running"
    finally:
        await device.stop()
