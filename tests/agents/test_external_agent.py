"""examples/external_agent.py against a runtime-less device (tools service + simulated actuator on a
real nats-server with a World), and the SimActuator that acknowledges the demo's commands."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agent_support import DEVICE, Collector, device_context
from nats.aio.client import Client

from edge.demo.actuator import SimActuator
from edge.agents.tools.service import ToolsService, parse_tools_config
from edge.nats.commands import CommandClient
from edge.world.store import World

pytestmark = pytest.mark.timeout(60)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "external_agent.py"


@pytest.fixture
async def device(nc: Client, world: World) -> AsyncIterator[Any]:
    parts: list[Any] = []

    async def start(tools_config: Any = None) -> None:
        rt = await device_context(DEVICE, world, nc)
        for part in (SimActuator(), ToolsService(parse_tools_config(tools_config))):
            await part.start(rt)
            parts.append(part)

    yield start
    for part in reversed(parts):
        await part.stop()


async def run_example(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_example_round_trip_orders_rtl(nats_url: str, device: Any, world: World) -> None:
    world.set("drone-2", "battery", {"level": 0.12})
    world.set("drone-2", "position", {"x": 30.0, "y": 40.0, "z": 10.0})
    await device()
    code, out, err = await run_example("--url", nats_url, "--device", DEVICE, "--caller", "planner")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"device {DEVICE}: 7 tools for caller planner: list_entities,")
    assert lines[1] == '-> list_entities {"kind": "drone"}'
    assert lines[2].startswith("<- ok in ") and lines[2].endswith("2 entities: drone-1, drone-2")
    assert '-> read_sensor {"entity": "drone-1", "sensor": "battery"}' in lines
    assert any("battery level 0.12 (from world)" in line for line in lines)
    assert '-> send_command {"entity": "drone-2", "verb": "rtl", "args": {}, "timeout_s": 2.0}' in lines
    ack_line = next(line for line in lines if line.startswith("<- ok") and "ack" in line)
    assert '"ok": true' in ack_line
    assert lines[-1] == "done: 4 tool calls, 0 failed"
    # the command really reached the (simulated) flight controller
    assert world.get("drone-2", "flight")["mode"] == "RTL"
    v = world.get("drone-2", "velocity")
    assert v["x"] == pytest.approx(-1.8) and v["y"] == pytest.approx(-2.4)  # 3 m/s toward the origin


async def test_example_hold_when_batteries_are_fine_and_permissions_apply(nats_url: str, device: Any) -> None:
    await device({"callers": {"viewer": ["list_entities", "read_sensor"], "planner": ["*"]}})
    code, out, _ = await run_example("--url", nats_url, "--device", DEVICE, "--caller", "viewer")
    assert code == 0
    assert "2 tools for caller viewer" in out and "send_command" not in out  # the planner never sees it
    assert out.splitlines()[-1] == "done: 3 tool calls, 0 failed"
    code, out, _ = await run_example("--url", nats_url, "--device", DEVICE, "--caller", "planner")
    assert '"verb": "hold"' in out  # both above the 0.3 threshold: hold the lowest


async def test_example_reports_an_unreachable_device() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = await run_example("--url", f"nats://127.0.0.1:{port}", "--device", DEVICE)
    assert code == 2 and f"cannot talk to device {DEVICE}" in err


# -- SimActuator ------------------------------------------------------------------------------


async def test_sim_actuator_applies_and_acks(nc: Client, world: World, collector: Collector) -> None:
    world.spawn("drone-3", "drone", components={"patrol": {"cx": 0, "cy": 0, "half": 5, "speed": 1, "leg": 0}})
    world.spawn("lamp", "light")
    act = SimActuator()
    await act.start(await device_context(DEVICE, world, nc))
    try:
        client = CommandClient(nc, DEVICE)

        async def send(entity: str, verb: str, args: Any) -> Any:
            subject = f"edge.{DEVICE}.ack.{entity}.{verb}"
            n = len(collector.on(subject))
            res = await client.send(entity, verb, args, timeout=2.0)
            await collector.wait_for(lambda: len(collector.on(subject)) > n)  # recorded, once
            assert collector.on(subject)[n:] == [res.answer]
            return {k: v for k, v in res.answer.items() if k != "id"}

        ack = await send("drone-3", "velocity", {"x": 1.0, "y": -2.0})
        assert ack == {"ok": True, "velocity": {"x": 1.0, "y": -2.0, "z": 0.0}}
        assert not world.has("drone-3", "patrol")  # taken off its patrol
        assert (await send("drone-3", "hold", {}))["velocity"] == {"x": 0.0, "y": 0.0, "z": 0.0}
        bad = await send("drone-3", "velocity", {"x": 99})
        assert bad["ok"] is False and "exceeds 15.0 m/s" in bad["error"]
        assert (await send("drone-3", "velocity", {"x": "fast"}))["ok"] is False
        assert "no simulated drone 'lamp'" in (await send("lamp", "hold", {}))["error"]
        assert "no simulated drone 'ghost'" in (await send("ghost", "rtl", {}))["error"]
        assert act.status() == {"applied": 2, "refused": 4, "last_error": "no simulated drone 'ghost'"}
    finally:
        await act.stop()
