"""Agents and tools: detection event -> FollowAgent velocity command latency, and edge-tools round
trips (``python bench/bench_agents.py [--quick]``). Real nats-server, real World, no runtime."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.agents import AgentSpec, FollowAgent, FollowParams  # noqa: E402
from edge.agents.host import AgentHost  # noqa: E402
from rigs.nats import running_server  # noqa: E402
from edge.agents.tools.service import ToolsService  # noqa: E402
from edge.world.store import World  # noqa: E402

DEVICE = "bench"


@dataclass
class View:
    device: str
    world: World
    nc: Client | None


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) * 1e3


async def follow_latency(nc: Client, n: int) -> list[float]:
    """Time from publishing a detection set to receiving the agent's velocity command."""
    got: asyncio.Queue[float] = asyncio.Queue()

    async def on_cmd(msg: Msg) -> None:
        got.put_nowait(time.perf_counter())

    await nc.subscribe(f"edge.{DEVICE}.cmd.drone-1.velocity", cb=on_cmd)
    await nc.flush()
    boxes = ([0.7, 0.1, 0.9, 0.3], [0.1, 0.7, 0.3, 0.9])  # alternate so every set changes the command
    out = []
    for i in range(n):
        body = json.dumps({"items": [{"label": "face", "score": 0.9, "box": boxes[i % 2]}]}).encode()
        t0 = time.perf_counter()
        await nc.publish(f"edge.{DEVICE}.evt.drone-1.detections", body)
        t1 = await asyncio.wait_for(got.get(), 5)
        out.append(t1 - t0)
    return out


async def tool_latency(nc: Client, tool: str, body: dict[str, Any], n: int) -> list[float]:
    out = []
    data = json.dumps(body).encode()
    for _ in range(n):
        t0 = time.perf_counter()
        reply = await nc.request(f"edge.{DEVICE}.tools.{tool}", data, timeout=5)
        out.append(time.perf_counter() - t0)
        assert json.loads(reply.data)["ok"], reply.data
    return out


async def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_server(Path(tmp)) as srv:
            nc = await nats.connect(srv.url)
            client = await nats.connect(srv.url)
            world = World()
            world.spawn("drone-1", "drone", components={"battery": {"level": 0.9},
                                                        "velocity": {"x": 0.0, "y": 0.0, "z": 0.0}})
            view = View(DEVICE, world, nc)
            params = FollowParams(acquire_frames=1, min_delta=0.0, refresh_s=3600.0, lost_timeout=60.0)
            host = AgentHost([AgentSpec.of(lambda: FollowAgent("drone-1", params, interval=1.0))])
            tools = ToolsService()
            await host.start(view)
            await tools.start(view)
            try:
                lat = await follow_latency(client, n)
                print("detection event -> FollowAgent -> velocity command (the decision record is stored after the command)")
                print(f"    n={n}  p50 {_pct(lat, 50):.3f} ms  p99 {_pct(lat, 99):.3f} ms")
                for tool, body in (("list_entities", {}), ("read_sensor", {"entity": "drone-1", "sensor": "battery"})):
                    lat = await tool_latency(client, tool, body, n)
                    print(f"edge-tools {tool:<14} n={n}  p50 {_pct(lat, 50):.3f} ms  p99 {_pct(lat, 99):.3f} ms")
            finally:
                await tools.stop()
                await host.stop()
                await client.close()
                await nc.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    asyncio.run(run(200 if args.quick else 2000))


if __name__ == "__main__":
    main()
