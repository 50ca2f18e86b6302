"""The envelope on the device's command router: every command to a guarded entity is checked
before its handler runs, answered, and recorded as an event when it is not a plain pass."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from rigs.events import CoreEvents

from edge.layer import DeviceContext
from edge.nats.commands import CommandClient, CommandConflict, CommandRequest, CommandRouter
from edge.safety.config import SafetyConfig
from edge.safety.envelope import DEFAULTS, Fence
from edge.safety.layer import FAILSAFE_CALLER, SafetyLayer
from edge.world.store import World

DEV = "dev1"


class Vehicle:
    """The handlers a flight-controller driver would register, recording what reaches them."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, Any], str | None]] = []

    async def handle(self, request: CommandRequest) -> dict[str, Any]:
        self.got.append((request.verb, dict(request.args), request.caller))
        return {"result": "SENT", "verb": request.verb}


class Rig:
    def __init__(self, nc: Client, tmp: Path, layer: SafetyLayer) -> None:
        self.nc = nc
        self.world = World(shared=False)
        self.router = CommandRouter(nc, DEV, CoreEvents(nc))
        self.ctx = DeviceContext(DEV, nc, nc.jetstream(), self.world, tmp, CoreEvents(nc), self.router)
        self.layer = layer
        self.vehicle = Vehicle()
        self.client = CommandClient(nc, DEV)

    def fly(self, entity: str = "drone1", **flight: Any) -> None:
        if entity not in self.world:
            self.world.spawn(entity, "drone")
        self.world.set(entity, "flight", {"armed": True, "mode": "GUIDED", "system_status": "ACTIVE", **flight})
        self.world.set(entity, "position", {"x": 0.0, "y": 0.0, "z": 10.0})
        self.world.set(entity, "battery", {"voltage": 12.0, "current": 1.0, "level": 0.8})

    async def send(self, verb: str, args: dict[str, Any], entity: str = "drone1") -> dict[str, Any]:
        return (await self.client.send(entity, verb, args, timeout=5.0, caller="test")).answer


@pytest.fixture
async def rig(nc: Client, tmp_path: Path) -> AsyncIterator[Rig]:
    envelope = DEFAULTS.with_(fence=Fence(radius=50.0), failsafe_s=0.4)
    layer = SafetyLayer(SafetyConfig(DEFAULTS, {"drone1": envelope}), guarded=["drone2"])
    r = Rig(nc, tmp_path, layer)
    await r.router.start()
    await layer.start(r.ctx)
    for entity in ("drone1", "drone2", "rover"):
        for verb in ("velocity", "hold", "rtl", "position", "takeoff"):
            r.router.register(entity, verb, r.vehicle.handle, owner="test vehicle")
    try:
        yield r
    finally:
        await layer.stop()
        await r.router.stop()


async def events(nc: Client, entity: str = "drone1") -> Any:
    return await nc.subscribe(f"edge.{DEV}.evt.{entity}.safety")


async def test_a_passing_command_reaches_the_handler_unchanged(rig: Rig) -> None:
    rig.fly()
    answer = await rig.send("velocity", {"x": 1.0, "y": 2.0, "z": 0.0})
    assert answer["ok"] is True and answer["envelope"] == {"decision": "pass"}
    assert rig.vehicle.got == [("velocity", {"x": 1.0, "y": 2.0, "z": 0.0}, "test")]


async def test_an_over_speed_command_runs_clamped_and_the_clamp_is_reported(rig: Rig, nc: Client) -> None:
    rig.fly()
    sub = await events(nc)
    answer = await rig.send("velocity", {"x": 8.0, "y": 0.0, "z": 3.0})
    assert answer["ok"] is True
    env = answer["envelope"]
    assert env["decision"] == "clamped" and env["applied"] == {"x": 5.0, "y": 0.0, "z": 2.0}
    assert env["requested"] == {"x": 8.0, "y": 0.0, "z": 3.0}
    assert rig.vehicle.got[-1][1] == {"x": 5.0, "y": 0.0, "z": 2.0}
    event = json.loads((await sub.next_msg(timeout=5)).data)
    assert event["decision"] == "clamped" and event["caller"] == "test" and event["id"] == answer["id"]


async def test_a_refused_command_never_reaches_the_handler(rig: Rig, nc: Client) -> None:
    rig.fly(armed=False)
    sub = await events(nc)
    answer = await rig.send("velocity", {"x": 1.0})
    assert answer["ok"] is False and answer["reason"] == "envelope"
    assert "disarmed" in answer["error"] and answer["envelope"]["rule"] == "disarmed"
    assert rig.vehicle.got == []
    event = json.loads((await sub.next_msg(timeout=5)).data)
    assert event["decision"] == "refused" and event["verb"] == "velocity"
    assert rig.layer.status()["decisions"]["refused"] == 1


async def test_low_battery_refuses_motion_and_offers_rtl_which_passes(rig: Rig) -> None:
    rig.fly()
    rig.world.set("drone1", "battery", {"level": 0.15})
    answer = await rig.send("velocity", {"x": 1.0})
    assert answer["ok"] is False and answer["offer"] == "rtl" and answer["envelope"]["rule"] == "battery"
    assert (await rig.send("rtl", {}))["ok"] is True
    assert [g[0] for g in rig.vehicle.got] == ["rtl"]


async def test_an_unmeasured_battery_level_is_unknown_not_empty(rig: Rig) -> None:
    """A pack whose autopilot sends the "unknown" sentinel stores level 0 with ``unknown="level"``."""
    rig.fly()
    rig.world.set("drone1", "battery", {"level": 0.0, "unknown": "current,level"})
    assert (await rig.send("velocity", {"x": 1.0}))["ok"] is True
    rig.world.set("drone1", "battery", {"level": 0.0, "unknown": ""})  # a measured empty pack
    answer = await rig.send("velocity", {"x": 1.0})
    assert answer["ok"] is False and answer["envelope"]["rule"] == "battery"


async def test_a_velocity_leaving_the_fence_runs_a_hold_instead(rig: Rig) -> None:
    rig.fly()
    rig.world.set("drone1", "position", {"x": 49.0})
    answer = await rig.send("velocity", {"x": 2.0})
    assert answer["ok"] is False and answer["reason"] == "envelope"
    assert answer["envelope"]["decision"] == "hold" and answer["ran"]["verb"] == "hold"
    assert answer["ran"]["ok"] is True
    assert rig.vehicle.got == [("hold", {}, "test")]


async def test_unknown_state_is_refused_not_guessed(rig: Rig) -> None:
    rig.world.spawn("drone1", "drone")  # no telemetry yet
    answer = await rig.send("velocity", {"x": 1.0})
    assert answer["ok"] is False and answer["envelope"]["rule"] == "disarmed"
    assert rig.vehicle.got == []


async def test_a_driver_vehicle_is_guarded_with_the_defaults_and_others_are_not(rig: Rig) -> None:
    rig.fly("drone2", armed=False)
    assert (await rig.send("velocity", {"x": 1.0}, "drone2"))["reason"] == "envelope"
    rig.world.spawn("rover", "rover")
    answer = await rig.send("velocity", {"x": 40.0}, "rover")  # not a guarded entity
    assert answer["ok"] is True and "envelope" not in answer
    assert rig.vehicle.got == [("velocity", {"x": 40.0}, "test")]


async def test_failsafe_holds_when_the_command_stream_stops(rig: Rig, nc: Client) -> None:
    rig.fly()
    sub = await events(nc)
    for _ in range(3):  # a fresh command every 0.2 s keeps it flying
        assert (await rig.send("velocity", {"x": 1.0}))["ok"] is True
        await asyncio.sleep(0.2)
    assert [g[0] for g in rig.vehicle.got] == ["velocity"] * 3
    event = json.loads((await sub.next_msg(timeout=5)).data)
    assert event["rule"] == "failsafe" and event["decision"] == "hold"
    assert event["answer"]["ok"] is True
    assert rig.vehicle.got[-1] == ("hold", {}, FAILSAFE_CALLER)
    assert rig.layer.status()["failsafe_holds"] == 1
    await asyncio.sleep(0.6)  # nothing streams any more: one hold only
    assert rig.layer.failsafe_holds == 1


async def test_a_hold_or_zero_velocity_ends_the_stream_without_a_failsafe(rig: Rig) -> None:
    rig.fly()
    await rig.send("velocity", {"x": 1.0})
    await rig.send("velocity", {"x": 0.0, "y": 0.0, "z": 0.0})
    await asyncio.sleep(0.7)
    assert rig.layer.failsafe_holds == 0


async def test_a_guard_that_fails_refuses_the_command(nc: Client, tmp_path: Path) -> None:
    router = CommandRouter(nc, DEV, CoreEvents(nc))
    await router.start()
    ran: list[str] = []

    async def handler(request: CommandRequest) -> dict[str, Any]:
        ran.append(request.verb)
        return {}

    def broken(request: CommandRequest) -> None:
        raise RuntimeError("state unreadable")

    router.register("drone1", "velocity", handler, owner="test")
    remove = router.set_guard(broken)
    with pytest.raises(CommandConflict):
        router.set_guard(broken)
    try:
        answer = (await CommandClient(nc, DEV).send("drone1", "velocity", {}, timeout=5)).answer
        assert answer["ok"] is False and answer["reason"] == "envelope" and "state unreadable" in answer["error"]
        assert ran == []
        remove()
        assert (await CommandClient(nc, DEV).send("drone1", "velocity", {}, timeout=5)).ok
    finally:
        await router.stop()


async def test_a_retried_command_id_gets_the_same_envelope_answer(rig: Rig) -> None:
    rig.fly(armed=False)
    first = await rig.client.send("drone1", "velocity", {"x": 1.0}, timeout=5, command_id="cmd-1")
    rig.fly()  # armed now: the retry of the same id is not re-judged, a new id is
    again = await rig.client.send("drone1", "velocity", {"x": 1.0}, timeout=5, command_id="cmd-1")
    assert first.answer == again.answer and again.answer["reason"] == "envelope"
    fresh = await rig.client.send("drone1", "velocity", {"x": 1.0}, timeout=5, command_id="cmd-2")
    assert fresh.ok and rig.vehicle.got == [("velocity", {"x": 1.0}, None)]


async def test_a_flood_of_refused_commands_records_only_a_budget_of_events(rig: Rig, nc: Client) -> None:
    """EVT never evicts: refusals (nothing ran) are recorded up to a budget per window, every one
    still answered and counted; a clamp (it ran) is recorded regardless."""
    rig.fly(armed=False)
    rig.layer.refusal_events.limit = 3
    sub = await events(nc)
    answers = [await rig.send("velocity", {"x": 1.0}) for _ in range(8)]
    assert [a["reason"] for a in answers] == ["envelope"] * 8
    rig.fly()
    clamped = await rig.send("velocity", {"x": 9.0})
    assert clamped["envelope"]["decision"] == "clamped"
    got = [json.loads((await sub.next_msg(timeout=5)).data)["decision"] for _ in range(4)]
    assert got == ["refused"] * 3 + ["clamped"]
    with pytest.raises(asyncio.TimeoutError):
        await sub.next_msg(timeout=0.3)
    status = rig.layer.status()
    assert status["decisions"]["refused"] == 8 and status["refusals_unrecorded"] == 5
    rig.layer.refusal_events.reset()  # the window has passed: records again
    rig.fly(armed=False)
    await rig.send("velocity", {"x": 1.0})
    assert json.loads((await sub.next_msg(timeout=5)).data)["decision"] == "refused"
