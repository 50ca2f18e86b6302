"""Drivers against a real nats-server: telemetry out, commands in, acks out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from edge.demo.hardware import DEMO_CAMERA_WIDTH, EmulatorsDriver, demo_hardware
from drivers.supervisor import DriverSupervisor

pytestmark = pytest.mark.timeout(30)


async def test_demo_drone_over_nats(nats_ctx: Any, nats_client: Client) -> None:
    seen: dict[str, dict[str, object]] = {}
    got = asyncio.Event()

    async def on_tele(msg: Msg) -> None:
        seen[msg.subject] = json.loads(msg.data)
        if len(seen) >= 9:
            got.set()

    await nats_client.subscribe("edge.dev1.tele.drone1.>", cb=on_tele)
    drivers = demo_hardware("dev1", "drone1")
    emu = drivers[0]
    assert isinstance(emu, EmulatorsDriver)
    sup = DriverSupervisor(nats_ctx, drivers, backoff_initial_s=0.1)
    await sup.start()
    try:
        await asyncio.wait_for(got.wait(), 10)
        comps = {s.rsplit(".", 1)[1] for s in seen}
        assert {"geo", "velocity", "attitude", "battery", "flight", "imu", "gps", "camera"} <= comps
        assert seen["edge.dev1.tele.drone1.camera"]["width"] == DEMO_CAMERA_WIDTH

        async def command(verb: str, args: dict[str, object]) -> dict[str, object]:
            fut: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()

            async def on_ack(msg: Msg) -> None:
                if not fut.done():
                    fut.set_result(json.loads(msg.data))

            sub = await nats_client.subscribe(f"edge.dev1.ack.drone1.{verb}", cb=on_ack)
            await nats_client.flush()
            await nats_client.publish(f"edge.dev1.cmd.drone1.{verb}", json.dumps(args).encode())
            try:
                return await asyncio.wait_for(fut, 5)
            finally:
                await sub.unsubscribe()

        assert (await command("set_mode", {"mode": "GUIDED"}))["ok"] is True
        assert (await command("arm", {}))["result"] == "ACCEPTED"
        assert (await command("takeoff", {"alt": 2}))["ok"] is True
        for _ in range(100):
            if float(nats_ctx.state.get(("drone1", "position"), {}).get("z", 0)) > 1.0:
                break
            await asyncio.sleep(0.05)
        assert float(nats_ctx.state[("drone1", "position")]["z"]) > 1.0
        # the power monitor sees the flight controller's hover current
        for _ in range(60):
            if float(nats_ctx.state[("drone1", "battery")].get("current", 0)) > 5:
                break
            await asyncio.sleep(0.05)
        assert float(nats_ctx.state[("drone1", "battery")]["current"]) > 5
        assert all(s.health.state == "running" for s in sup.status())
    finally:
        await sup.stop()
        emu.remove_rundir()
