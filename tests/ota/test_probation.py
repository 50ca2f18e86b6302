"""Probation: what rolls a new version back by itself, and what lets it commit (docs/ota.md)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path


import pytest
from nats.aio.client import Client

from edge.ota import hub, repo as fleet
from edge.runtime import Runtime

from support import component, device_config, init_fail_module, ota_status, publish_component, versions, wait_for

pytestmark = pytest.mark.timeout(90)
BEAT = '\n[health]\npublishes = [{ subject = "edge.{device}.evt.blink.beat", every_s = 0.6 }]\n'


@pytest.fixture
async def device(tmp_path: Path, nc: Client, nats_url: str) -> AsyncIterator[Runtime]:
    repo = tmp_path / "fleet"
    fleet.keygen(repo)
    src = tmp_path / "src"
    publish_component(repo, tmp_path, component(src, "blink", "1.0.0"))
    publish_component(repo, tmp_path, component(src, "blink", "2.0.0", extra=BEAT))
    publish_component(repo, tmp_path, component(src, "blink", "3.0.0",
                                                extra="\n[health]\nmax_tick_ms = 0.000001\n"))
    publish_component(repo, tmp_path, component(src, "blink", "4.0.0", module=init_fail_module()))
    await fleet.upload(nc.jetstream(), repo)
    await hub.set_desired(nc.jetstream(), "dev1", "r1", {"blink": "1.0.0"})
    rt = Runtime(device_config(tmp_path, nats_url, repo / "metadata" / "1.root.json", probation_s=2.0))
    await rt.start()
    await wait_for(lambda: ota_status(rt)["revision"] == "r1")
    try:
        yield rt
    finally:
        await rt.stop()


async def _rolled_back(rt: Runtime, nc: Client, version: str) -> str:
    await hub.set_desired(nc.jetstream(), "dev1", f"r-{version}", {"blink": version})
    await wait_for(lambda: ota_status(rt)["rolled_back"] == 1 and versions(rt) == {"blink": "1.0.0"})
    st = ota_status(rt)
    assert st["revision"] == "r1"
    return str(st["bad"][f"blink@{version}"])


async def test_missing_heartbeat_rolls_back(device: Runtime, nc: Client) -> None:
    reason = await _rolled_back(device, nc, "2.0.0")
    assert reason.startswith("health:") and "edge.dev1.evt.blink.beat" in reason


async def test_heartbeat_present_commits(device: Runtime, nc: Client) -> None:
    async def beat() -> None:
        while True:
            await nc.publish("edge.dev1.evt.blink.beat", b"{}")
            await asyncio.sleep(0.1)

    task = asyncio.create_task(beat())
    try:
        await hub.set_desired(nc.jetstream(), "dev1", "r2", {"blink": "2.0.0"})
        await wait_for(lambda: ota_status(device)["revision"] == "r2")
        assert versions(device) == {"blink": "2.0.0"} and ota_status(device)["rolled_back"] == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_tick_over_budget_rolls_back(device: Runtime, nc: Client) -> None:
    reason = await _rolled_back(device, nc, "3.0.0")
    assert reason.startswith("budget:")


async def test_failed_init_rolls_back(device: Runtime, nc: Client) -> None:
    reason = await _rolled_back(device, nc, "4.0.0")
    assert "init" in reason or "start" in reason, reason


