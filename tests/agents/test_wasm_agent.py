"""A wasm agent: components/follow_agent (compiled C) loaded by a real Runtime, next to the
AgentHost, which lists it and keeps its decision records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_support import Collector, wait_until

from edge.agents.host import AgentHost
from edge.config import DeviceConfig, NatsConfig
from edge.runtime import Runtime

pytestmark = pytest.mark.timeout(60)


async def test_wasm_follow_agent(tmp_path: Path, nats_url: str, components_dir: Path) -> None:
    cfg = DeviceConfig(device="wdev", data_dir=tmp_path / "wdev", nats=NatsConfig(url=nats_url),
                       components=[components_dir / "follow_agent" / "manifest.toml"])
    rt = Runtime(cfg)
    await rt.start()
    assert rt.layers is not None
    host = next(layer for layer in rt.layers if isinstance(layer, AgentHost))  # the runtime's own
    try:
        assert rt.nc is not None
        seen = Collector()
        await rt.nc.subscribe("edge.wdev.>", cb=seen.on_msg)
        await rt.nc.flush()
        assert rt.status()["agents"]["wasm"] == ["follow_agent"]
        items = [{"label": "face", "score": 0.9, "box": [0.7, 0.1, 0.9, 0.3]},
                 {"label": "face", "score": 0.6, "box": [0.0, 0.0, 0.1, 0.1]}]
        await rt.nc.publish("edge.wdev.evt.drone-7.detections", json.dumps({"items": items}).encode())
        await rt.nc.publish("edge.wdev.evt.drone-7.detections", b'{"items": []}')  # no target: ignored
        await seen.wait_for(lambda: len(seen.on("edge.wdev.cmd.drone-7.velocity")) == 1, timeout=10)
        assert seen.on("edge.wdev.cmd.drone-7.velocity")[0] == {"x": 1.2, "y": 1.2, "z": 0}
        await wait_until(lambda: host.decisions.ingested == 1, timeout=5)
        rec = host.decisions.query(entity="drone-7")[-1]
        assert rec["agent"] == "follow_agent" and rec["decision"] == "follow"
        assert rec["inputs"]["box"] == [0.7, 0.1, 0.9, 0.3]
        assert len(seen.on("edge.wdev.cmd.drone-7.velocity")) == 1
    finally:
        await rt.stop()
