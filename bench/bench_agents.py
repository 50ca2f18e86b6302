"""Agents and tools: detection event -> FollowAgent velocity command latency, and edge-tools round
trips (``python bench/bench_agents.py [--quick]``). Real nats-server, real World, no runtime.

Baseline, interleaved round by round (bench/harness.py): a raw nats-py request to a responder that
replies with the request's bytes, on the same server and connections, the floor of any round trip
through NATS. A round is K messages one at a time per side; its sample is their median latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test rigs (tests/rigs/)

from edge.agents import AgentSpec, FollowAgent, FollowParams  # noqa: E402
from edge.agents.host import AgentHost  # noqa: E402
from rigs.nats import running_server  # noqa: E402
from edge.agents.tools.service import ToolsService  # noqa: E402
from edge.layer import DeviceContext  # noqa: E402
from edge.nats.commands import CommandRouter  # noqa: E402
from edge.nats.events import DeviceEvents  # noqa: E402
from edge.world.store import World  # noqa: E402
from harness import Comparison, Row, ainterleave, pct, report  # noqa: E402

DEVICE = "bench"


def device_context(nc: Client, world: World, data_dir: Path) -> DeviceContext:
    """What the runtime hands its layers: here over a bench server, events through the real publisher."""
    events = DeviceEvents(nc, DEVICE)
    # the router is not started: the bench's own subscriber answers the agent's commands (below)
    return DeviceContext(device=DEVICE, nc=nc, js=nc.jetstream(), world=world, data_dir=data_dir,
                         events=events, commands=CommandRouter(nc, DEVICE, events))


async def follow_round(nc: Client, k: int) -> Any:
    """A callable timing K detection sets -> agent velocity commands; returns their median."""
    got: asyncio.Queue[float] = asyncio.Queue()

    async def on_cmd(msg: Msg) -> None:
        got.put_nowait(time.perf_counter())
        if msg.reply:  # stand in for the actuator: the agent's command is a request
            await msg.respond(b'{"ok":true}')

    await nc.subscribe(f"edge.{DEVICE}.cmd.drone-1.velocity", cb=on_cmd)
    await nc.flush()
    boxes = ([0.7, 0.1, 0.9, 0.3], [0.1, 0.7, 0.3, 0.9])  # alternate so every set changes the command
    sent = 0

    async def one_round() -> list[float]:
        nonlocal sent
        out = []
        for _ in range(k):
            body = json.dumps({"items": [{"label": "face", "score": 0.9, "box": boxes[sent % 2]}]}).encode()
            sent += 1
            t0 = time.perf_counter()
            await nc.publish(f"edge.{DEVICE}.evt.drone-1.detections", body)
            t1 = await asyncio.wait_for(got.get(), 5)
            out.append(t1 - t0)
        return out

    return one_round


def request_round(nc: Client, subject: str, body: dict[str, Any], k: int, *, check: bool) -> Any:
    data = json.dumps(body).encode()

    async def one_round() -> list[float]:
        out = []
        for _ in range(k):
            t0 = time.perf_counter()
            reply = await nc.request(subject, data, timeout=5)
            out.append(time.perf_counter() - t0)
            if check:
                assert json.loads(reply.data)["ok"], reply.data
        return out

    return one_round


async def run(rounds: int, k: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_server(Path(tmp)) as srv:
            nc = await nats.connect(srv.url)
            client = await nats.connect(srv.url)
            world = World()
            world.spawn("drone-1", "drone", components={"battery": {"level": 0.9},
                                                        "velocity": {"x": 0.0, "y": 0.0, "z": 0.0}})
            view = device_context(nc, world, Path(tmp))
            params = FollowParams(acquire_frames=1, min_delta=0.0, refresh_s=3600.0, lost_timeout=60.0)
            host = AgentHost([AgentSpec.of(lambda: FollowAgent("drone-1", params, interval=1.0))])
            tools = ToolsService()
            await host.start(view)
            await tools.start(view)

            async def echo(msg: Msg) -> None:
                await msg.respond(msg.data)

            await nc.subscribe("bench.echo", cb=echo)  # the responder on the agents' connection
            await nc.flush()
            try:
                rounds_of = {
                    "follow agent": await follow_round(client, k),
                    "tools list_entities": request_round(
                        client, f"edge.{DEVICE}.tools.list_entities", {}, k, check=True),
                    "tools read_sensor": request_round(
                        client, f"edge.{DEVICE}.tools.read_sensor",
                        {"entity": "drone-1", "sensor": "battery"}, k, check=True),
                    "raw nats request/reply": request_round(client, "bench.echo", {}, k, check=False),
                }
                every: dict[str, list[float]] = {name: [] for name in rounds_of}

                def side(name: str) -> Any:
                    async def run_round() -> float:
                        lat = await rounds_of[name]()
                        every[name].extend(lat)
                        return statistics.median(lat)
                    return run_round

                s = await ainterleave({name: side(name) for name in rounds_of}, rounds=rounds,
                                      measure="value")
            finally:
                await tools.stop()
                await host.stop()
                await client.close()
                await nc.close()
    base = "raw nats request/reply"
    labels = {"follow agent": "detection event → FollowAgent → velocity command, p50",
              "tools list_entities": "edge-tools list_entities round trip, p50",
              "tools read_sensor": "edge-tools read_sensor round trip, p50"}
    return [Comparison.of(what, s, name, base,
                          note=f"p99 {pct(every[name], 99) * 1e3:.2f} ms vs "
                               f"{pct(every[base], 99) * 1e3:.2f} ms; {k} msgs a round")
            for name, what in labels.items()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rows = asyncio.run(run(10 if args.quick else 40, 20 if args.quick else 50))
    report(rows, command="bench/bench_agents.py")


if __name__ == "__main__":
    main()
