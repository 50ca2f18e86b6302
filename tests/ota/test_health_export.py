"""Probation and the edge_health export: not OK on probation rolls back, after commit it is
reported and counted (docs/ota.md, docs/abi.md)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from edge.cli.status import component_table
from edge.ota import hub, repo as fleet
from edge.runtime import Runtime
from edge.wasm.inbox import COMPONENT_KV_BUCKET

from support import component, device_config, ota_status, publish_component, versions, wait_for

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[2]
HEALTH = "\n[health]\ninterval_s = 0.1\ngas = 1000000\n"


def _health_module(out: Path) -> bytes:
    """tests/wasm/components/health.c compiled with components/build.py."""
    spec = importlib.util.spec_from_file_location("edge_components_build",
                                                  ROOT / "components" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    src = ROOT / "tests" / "wasm" / "components" / "health.c"
    return Path(build.compile_wasm([src], out / "health.wasm")).read_bytes()


@pytest.fixture
async def device(tmp_path: Path, nc: Client, nats_url: str) -> AsyncIterator[Runtime]:
    repo = tmp_path / "fleet"
    fleet.keygen(repo)
    src = tmp_path / "src"
    module = _health_module(tmp_path)
    publish_component(repo, tmp_path, component(src, "probe", "1.0.0"))
    publish_component(repo, tmp_path, component(src, "probe", "2.0.0", module=module,
                                                extra=HEALTH))
    await fleet.upload(nc.jetstream(), repo)
    await hub.set_desired(nc.jetstream(), "dev1", "r1", {"probe": "1.0.0"})
    rt = Runtime(device_config(tmp_path, nats_url, repo / "metadata" / "1.root.json",
                               probation_s=2.0))
    await rt.start()
    await wait_for(lambda: ota_status(rt)["revision"] == "r1")
    try:
        yield rt
    finally:
        await rt.stop()


async def _mode(nc: Client, mode: str) -> None:
    """The test component's KV key ``mode``, read when the new version loads."""
    kv = await nc.jetstream().key_value(COMPONENT_KV_BUCKET)
    await kv.put("probe.mode", mode.encode())


def _entry(rt: Runtime) -> dict[str, Any]:
    return next(c for c in rt.components_status() if c["name"] == "probe")


async def test_not_ok_on_probation_rolls_back(device: Runtime, nc: Client) -> None:
    events: list[dict[str, Any]] = []

    async def on_event(msg: Any) -> None:
        events.append(json.loads(msg.data))

    sub = await nc.subscribe("edge.dev1.evt.ota.rolled_back", cb=on_event)
    await _mode(nc, "bad")
    await hub.set_desired(nc.jetstream(), "dev1", "r2", {"probe": "2.0.0"})
    await wait_for(lambda: ota_status(device)["rolled_back"] == 1
                   and versions(device) == {"probe": "1.0.0"})
    st = ota_status(device)
    assert st["revision"] == "r1"
    assert st["bad"]["probe@2.0.0"] == "health: probe reported 3 [sensor stuck]"
    await wait_for(lambda: events)
    assert "health: probe reported 3 [sensor stuck]" in json.dumps(events[0])
    await sub.unsubscribe()
    assert _entry(device)["health"] is None  # 1.0.0 has no edge_health export


async def test_gas_out_on_probation_rolls_back(device: Runtime, nc: Client) -> None:
    await _mode(nc, "spin")
    await hub.set_desired(nc.jetstream(), "dev1", "r2", {"probe": "2.0.0"})
    await wait_for(lambda: ota_status(device)["rolled_back"] == 1)
    assert ota_status(device)["bad"]["probe@2.0.0"].startswith("health: probe reported out_of_gas")


async def test_ok_commits_and_later_not_ok_is_reported(device: Runtime, nc: Client) -> None:
    events: list[dict[str, Any]] = []

    async def on_event(msg: Any) -> None:
        events.append(json.loads(msg.data))

    sub = await nc.subscribe("edge.dev1.evt.runtime.health", cb=on_event)
    await _mode(nc, "after40")  # healthy for 40 calls (4 s at 0.1 s): past the 2 s probation
    await hub.set_desired(nc.jetstream(), "dev1", "r2", {"probe": "2.0.0"})
    await wait_for(lambda: ota_status(device)["revision"] == "r2")
    assert ota_status(device)["rolled_back"] == 0
    assert _entry(device)["health"]["last"]["ok"] is True
    assert "ok" in component_table([_entry(device)])
    await wait_for(lambda: len(events) >= 2)
    assert events[0]["message"] == "health: probe reported 4 [tired]"
    assert events[1]["not_ok"] == events[0]["not_ok"] + 1  # counted
    await sub.unsubscribe()
    entry = _entry(device)
    assert entry["version"] == "2.0.0" and ota_status(device)["rolled_back"] == 0
    assert entry["health"]["last"]["ok"] is False and entry["health"]["not_ok"] >= 2
    assert "not ok 4: tired" in component_table([entry])
