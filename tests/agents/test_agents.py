"""Agents as systems: FollowAgent against real NATS and a real World, host fault isolation,
decision records (ring, stream, API) and ``[[agents]]`` config validation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import pytest
from agent_support import DEVICE, Collector, device_context, wait_until
from nats.aio.client import Client
from nats.js.api import StreamConfig

from edge.agents import Agent, AgentSpec, Decision, build_agent, parse_agents
from edge.agents.base import Command
from edge.agents.decisions import DECISION_STREAM, DecisionLog, DecisionStreamLimits
from edge.agents.follow import FollowAgent, FollowParams
from edge.wasm.layer import LoadedComponent, SandboxLayer, SandboxSettings
from edge.agents.host import AgentHost
from edge.errors import ConfigError
from edge.nats.commands import CommandRequest
from edge.world.store import World

pytestmark = pytest.mark.timeout(30)

CMD_VEL = f"edge.{DEVICE}.cmd.drone-1.velocity"
CMD_RTL = f"edge.{DEVICE}.cmd.drone-1.rtl"
DET = f"edge.{DEVICE}.evt.drone-1.detections"
FAST = FollowParams(lost_timeout=0.3, acquire_frames=2, refresh_s=10.0)


def follow(params: FollowParams = FAST) -> AgentSpec:
    return AgentSpec.of(lambda: FollowAgent("drone-1", params, interval=0.05))


@pytest.fixture
async def host_factory(nc: Client, world: World) -> AsyncIterator[Any]:
    hosts: list[AgentHost] = []

    async def make(*specs: AgentSpec, **kw: Any) -> AgentHost:
        host = AgentHost(list(specs), **kw)
        await host.start(await device_context(DEVICE, world, nc))
        hosts.append(host)
        return host

    yield make
    for h in hosts:
        await h.stop()


async def detections(nc: Client, *boxes: tuple[float, float, float, float], label: str = "face",
                     score: float = 0.9, subject: str = DET) -> None:
    items = [{"label": label, "score": score, "box": list(b)} for b in boxes]
    await nc.publish(subject, json.dumps({"items": items, "count": len(items)}).encode())
    await nc.flush()


RIGHT_UP = (0.7, 0.1, 0.9, 0.3)  # centre (0.8, 0.2): right of and above the frame centre


# -- FollowAgent ------------------------------------------------------------------------------


async def test_follow_steers_toward_target(nc: Client, host_factory: Any, collector: Collector) -> None:
    host = await host_factory(follow())
    await detections(nc, RIGHT_UP)
    await asyncio.sleep(0.15)
    assert collector.on(CMD_VEL) == []  # hysteresis: one detection set is not enough
    await detections(nc, RIGHT_UP)
    await collector.wait_for(lambda: len(collector.on(CMD_VEL)) >= 1)
    cmd = collector.on(CMD_VEL)[0]
    assert cmd["x"] == pytest.approx(4.0 * 0.3)  # gain * offset, east
    assert cmd["y"] == pytest.approx(4.0 * 0.3)  # image up = north
    assert cmd["z"] == 0.0
    rec = host.decisions.query(entity="drone-1")[-1]
    assert rec["decision"] == "follow" and rec["agent"] == "follow-drone-1"
    assert rec["inputs"]["target"]["box"] == list(RIGHT_UP)
    assert rec["command"]["subject"] == CMD_VEL
    # nothing serves velocity in this test: the record says so (answered at once, not dropped)
    assert rec["command"]["answer"]["reason"] == "no-handler" and rec["command"]["id"]


async def test_decision_records_carry_each_command_answer(nc: Client, host_factory: Any) -> None:
    host = await host_factory(follow(), command_timeout=0.5)
    slow = asyncio.Event()

    async def actuator(cmd: CommandRequest) -> dict[str, Any]:
        if slow.is_set():
            await asyncio.sleep(2)
        return {"velocity": cmd.args}

    host.ctx.commands.register("drone-1", "velocity", actuator, owner="a test actuator")
    for _ in range(2):
        await detections(nc, RIGHT_UP)

    def commanded() -> list[dict[str, Any]]:
        return [r["command"] for r in host.decisions.query(entity="drone-1") if "command" in r]

    await wait_until(lambda: len(commanded()) == 1)
    entry = commanded()[0]
    assert entry["answer"] == {"ok": True, "id": entry["id"], "velocity": entry["args"]}
    assert entry["rtt_ms"] > 0
    slow.set()
    for _ in range(2):  # the target moves: a new command, whose answer comes too late
        await detections(nc, (0.0, 0.4, 0.2, 0.6))
    await wait_until(lambda: len(commanded()) == 2)
    late = commanded()[1]
    assert late["answer"]["ok"] is False and late["answer"]["reason"] == "timeout"
    assert late["answer"]["id"] == late["id"] and "within 0.5 s" in late["answer"]["error"]


async def test_a_decision_whose_answer_the_stop_cut_short_is_still_recorded(nc: Client, host_factory: Any) -> None:
    """The agent host stops while an agent waits for its command's answer: the command went out
    (the actuator has it), so its decision is recorded, with the command's id and no answer in
    time (it was lost before: the record came only after the answer)."""
    host = await host_factory(follow(), command_timeout=5.0)
    got: list[CommandRequest] = []
    entered = asyncio.Event()

    async def actuator(cmd: CommandRequest) -> dict[str, Any]:
        got.append(cmd)
        entered.set()
        await asyncio.sleep(3)  # the actuator is slow (a COMMAND_ACK that takes its time)
        return {"velocity": cmd.args}

    host.ctx.commands.register("drone-1", "velocity", actuator, owner="a test actuator")
    for _ in range(2):
        await detections(nc, RIGHT_UP)
    await asyncio.wait_for(entered.wait(), 3)
    await host.stop()
    records = [r for r in host.decisions.query(entity="drone-1") if "command" in r]
    assert len(records) == 1 and host.runners["follow-drone-1"].decisions == 1
    entry = records[0]["command"]
    assert entry["id"] == got[0].id and entry["subject"] == CMD_VEL
    assert entry["answer"]["ok"] is False and entry["answer"]["reason"] == "timeout"
    assert "stopped before the answer came" in entry["answer"]["error"]


async def test_follow_ignores_low_scores_and_other_labels(nc: Client, host_factory: Any,
                                                          collector: Collector) -> None:
    await host_factory(follow(FollowParams(target_label="person", acquire_frames=1)))
    await detections(nc, RIGHT_UP, label="face")
    await detections(nc, RIGHT_UP, label="person", score=0.2)
    await asyncio.sleep(0.3)
    assert collector.on(CMD_VEL) == []
    await detections(nc, (0.0, 0.4, 0.2, 0.6), label="person")  # left of centre
    await collector.wait_for(lambda: len(collector.on(CMD_VEL)) == 1)
    cmd = collector.on(CMD_VEL)[0]
    assert cmd["x"] < 0 and cmd["y"] == 0.0  # vertical offset inside the dead band


async def test_follow_holds_after_timeout_once(nc: Client, host_factory: Any, collector: Collector) -> None:
    host = await host_factory(follow())
    for _ in range(2):
        await detections(nc, RIGHT_UP)
    await collector.wait_for(lambda: len(collector.on(CMD_VEL)) == 1)
    await asyncio.sleep(0.15)
    assert len(collector.on(CMD_VEL)) == 1  # well inside the timeout: no hold yet
    await collector.wait_for(lambda: len(collector.on(CMD_VEL)) == 2)
    assert collector.on(CMD_VEL)[1] == {"x": 0.0, "y": 0.0, "z": 0.0}
    await asyncio.sleep(0.5)
    assert len(collector.on(CMD_VEL)) == 2  # hold is sent once, not every tick
    decisions = [r["decision"] for r in host.decisions.query()]
    assert decisions == ["follow", "hold"]
    assert host.decisions.query()[-1]["inputs"]["lost_s"] > 0.3


async def test_follow_empty_detections_do_not_flap(nc: Client, host_factory: Any,
                                                   collector: Collector) -> None:
    await host_factory(follow(FollowParams(lost_timeout=0.6, acquire_frames=2, refresh_s=10.0)))
    for _ in range(2):
        await detections(nc, RIGHT_UP)
    await collector.wait_for(lambda: len(collector.on(CMD_VEL)) == 1)
    for _ in range(3):  # a few frames without the target, shorter than the timeout
        await detections(nc)
        await asyncio.sleep(0.05)
    await detections(nc, RIGHT_UP)
    await asyncio.sleep(0.2)
    assert len(collector.on(CMD_VEL)) == 1  # still following, same command: nothing new


async def test_battery_low_rtl_once_then_resume(nc: Client, host_factory: Any, world: World,
                                                collector: Collector) -> None:
    host = await host_factory(follow())
    for _ in range(2):
        await detections(nc, RIGHT_UP)
    await collector.wait_for(lambda: len(collector.on(CMD_VEL)) == 1)
    world.set("drone-1", "battery", {"level": 0.15})
    await collector.wait_for(lambda: len(collector.on(CMD_RTL)) == 1)
    assert collector.on(CMD_RTL)[0] == {"reason": "battery_low", "level": 0.15}
    for _ in range(3):
        await detections(nc, RIGHT_UP)
    world.set("drone-1", "battery", {"level": 0.25})  # above low, below resume: still RTL
    await asyncio.sleep(0.4)
    assert len(collector.on(CMD_RTL)) == 1
    assert len(collector.on(CMD_VEL)) == 1  # no following while returning
    world.set("drone-1", "battery", {"level": 0.95})
    await wait_until(lambda: host.decisions.query()[-1]["decision"] == "resume")
    rtl = [r for r in host.decisions.query() if r["decision"] == "rtl"]
    assert len(rtl) == 1 and rtl[0]["inputs"]["battery_source"] == "world.battery"


async def test_battery_low_event_from_battery_component(nc: Client, host_factory: Any,
                                                        collector: Collector) -> None:
    await host_factory(follow())
    other = {"entity": "drone-2", "level_pct": 19}
    await nc.publish(f"edge.{DEVICE}.evt.battery.low", json.dumps(other).encode())
    await asyncio.sleep(0.2)
    assert collector.on(CMD_RTL) == []  # another drone's battery
    mine = {"entity": "drone-1", "level_pct": 19}
    await nc.publish(f"edge.{DEVICE}.evt.battery.low", json.dumps(mine).encode())
    await collector.wait_for(lambda: len(collector.on(CMD_RTL)) == 1)


async def test_follow_from_world_detections_component(host_factory: Any, world: World,
                                                      collector: Collector) -> None:
    await host_factory(follow(FollowParams(acquire_frames=2, lost_timeout=5.0)))
    items = [{"label": "face", "score": 0.8, "box": [0.0, 0.0, 0.2, 0.2]}]  # up-left
    for t in (1.0, 2.0):
        world.set("drone-1", "detections", {"items": items, "count": 1, "model": "face", "t": t})
        await asyncio.sleep(0.15)
    await collector.wait_for(lambda: len(collector.on(CMD_VEL)) == 1)
    cmd = collector.on(CMD_VEL)[0]
    assert cmd["x"] < 0 and cmd["y"] > 0


# -- host: fault isolation --------------------------------------------------------------------


class Flaky(Agent):
    """Raises in decide() on its first ``fail_first`` instances, then decides 'tick'."""

    kind: ClassVar[str] = "flaky"
    built = 0
    fail_first = 2
    mode = "raise"

    def __init__(self) -> None:
        super().__init__("drone-2", interval=0.02)
        type(self).built += 1
        self.instance = type(self).built

    async def decide(self, now: float) -> Sequence[Decision]:
        if self.instance <= self.fail_first:
            if self.mode == "raise":
                raise ZeroDivisionError("boom")
            await asyncio.sleep(5)
        return [Decision("tick", "healthy", {"instance": self.instance},
                         Command("ping", {"n": self.instance}))]


async def test_faulty_agent_is_isolated_and_restarted(nc: Client, host_factory: Any,
                                                      collector: Collector) -> None:
    spec = AgentSpec.of(Flaky)  # builds one probe instance
    Flaky.built, Flaky.mode = 0, "raise"
    host = await host_factory(follow(), spec, backoff_initial=0.05)
    for _ in range(2):
        await detections(nc, RIGHT_UP)
    await collector.wait_for(lambda: len(collector.on(CMD_VEL)) == 1)  # the healthy one works
    flaky = host.runners["flaky-drone-2"]
    await wait_until(lambda: flaky.decisions >= 1)
    assert flaky.faults == 2 and flaky.restarts == 2
    assert "ZeroDivisionError" in (flaky.last_error or "")
    faults = collector.on(f"edge.{DEVICE}.evt.drone-2.agent_fault")
    assert len(faults) == 2 and faults[0]["phase"] == "decide" and faults[1]["restart_in_s"] == 0.1
    await collector.wait_for(lambda: len(collector.on(f"edge.{DEVICE}.cmd.drone-2.ping")) >= 1)
    assert collector.on(f"edge.{DEVICE}.cmd.drone-2.ping")[0] == {"n": 3}
    status = host.status()
    by_name = {a["name"]: a for a in status["agents"]}
    assert by_name["flaky-drone-2"]["faults"] == 2 and by_name["flaky-drone-2"]["state"] == "running"
    assert by_name["follow-drone-1"]["faults"] == 0


async def test_decide_deadline_is_a_fault(host_factory: Any) -> None:
    spec = AgentSpec.of(Flaky)
    Flaky.built, Flaky.mode, Flaky.fail_first = 0, "hang", 1
    try:
        host = await host_factory(spec, backoff_initial=0.05, decide_deadline=0.1)
        flaky = host.runners["flaky-drone-2"]
        await wait_until(lambda: flaky.decisions >= 1)
        assert flaky.faults == 1 and "longer than 0.1 s" in (flaky.last_error or "")
    finally:
        Flaky.fail_first, Flaky.mode = 2, "raise"


class BadObserver(Agent):
    kind: ClassVar[str] = "badobs"

    def __init__(self) -> None:
        super().__init__("drone-1", interval=0.05)

    def observe(self, subject: str, payload: Any, now: float) -> bool:
        raise KeyError("no such field")

    async def decide(self, now: float) -> Sequence[Decision]:
        return []


async def test_observe_fault_restarts_the_agent(nc: Client, host_factory: Any) -> None:
    host = await host_factory(AgentSpec.of(BadObserver), backoff_initial=0.05)
    runner = host.runners["badobs-drone-1"]
    await wait_until(lambda: runner.state == "running")
    await detections(nc, RIGHT_UP)
    await wait_until(lambda: runner.faults == 1)
    assert "observe() raised KeyError" in (runner.last_error or "")
    await wait_until(lambda: runner.state == "running" and runner.restarts == 1)


# -- decision records -------------------------------------------------------------------------


async def test_decisions_api_and_stream(nc: Client, host_factory: Any, collector: Collector) -> None:
    await host_factory(follow())
    for _ in range(2):
        await detections(nc, RIGHT_UP)
    await collector.wait_for(lambda: len(collector.on(CMD_VEL)) == 1)
    reply = await nc.request(f"edge.{DEVICE}.api.agent.decisions", b'{"entity": "drone-1", "limit": 5}',
                             timeout=2)
    body = json.loads(reply.data)
    assert body["ok"] and body["result"][-1]["decision"] == "follow"
    assert body["result"][-1]["inputs"]["target"]["label"] == "face"
    none = await nc.request(f"edge.{DEVICE}.api.agent.decisions", b'{"entity": "drone-9"}', timeout=2)
    assert json.loads(none.data)["result"] == []
    bad = await nc.request(f"edge.{DEVICE}.api.agent.decisions", b'{"limit": 0}', timeout=2)
    assert bad.headers and bad.headers.get("Nats-Service-Error-Code") == "400"
    assert json.loads(bad.data)["error"]["key"] == "limit"
    js = nc.jetstream()
    info = await js.stream_info(DECISION_STREAM)
    assert info.config.subjects == [f"edge.{DEVICE}.evt.*.decision"]
    assert info.config.max_msgs == 100_000 and info.state.messages == 1
    stored = await js.get_last_msg(DECISION_STREAM, f"edge.{DEVICE}.evt.drone-1.decision")
    assert json.loads(stored.data or b"")["decision"] == "follow"
    listing = json.loads((await nc.request(f"edge.{DEVICE}.api.agent.list", b"", timeout=2)).data)
    assert listing["result"][0]["name"] == "follow-drone-1"


async def test_decision_stream_is_idempotent_and_sources_from_evt(nc: Client) -> None:
    js = nc.jetstream()
    log1 = DecisionLog(DEVICE, limits=DecisionStreamLimits(max_msgs=10))
    await log1.start(nc)
    assert log1.stream_mode == "subjects"
    log2 = DecisionLog(DEVICE, limits=DecisionStreamLimits(max_msgs=20))
    await log2.start(nc)  # second start updates the limits
    assert (await js.stream_info(DECISION_STREAM)).config.max_msgs == 20
    await js.delete_stream(DECISION_STREAM)
    # the sync layer's EVT stream captures every event: decisions must be sourced from it
    await js.add_stream(StreamConfig(name="EVT", subjects=[f"edge.{DEVICE}.evt.>"]))
    log3 = DecisionLog(DEVICE)
    await log3.start(nc)
    assert log3.stream_mode == "source:EVT"
    for i in range(3):
        await log3.record({"t": i, "entity": "drone-1", "agent": "a", "decision": "d", "reason": "r",
                           "inputs": {}})
    assert log3.published == 3 and log3.publish_errors == 0

    async def sourced() -> int:
        return (await js.stream_info(DECISION_STREAM)).state.messages

    for _ in range(200):
        if await sourced() == 3:
            break
        await asyncio.sleep(0.02)
    assert await sourced() == 3
    assert log3.query(limit=2)[0]["t"] == 1  # newest two, oldest first


async def test_ring_is_bounded() -> None:
    log = DecisionLog(DEVICE, ring_size=3)
    for i in range(5):
        await log.record({"t": i, "entity": "e", "agent": "a", "decision": "d", "reason": "", "inputs": {}})
    assert [r["t"] for r in log.query()] == [2, 3, 4]
    assert log.recorded == 5 and log.published == 0  # not started: memory only


def test_status_lists_wasm_agents(world: World) -> None:
    class Manifest:
        def __init__(self, subscribe: tuple[str, ...], publish: tuple[str, ...]) -> None:
            self.subscribe, self.publish = subscribe, publish

    sandbox = SandboxLayer([], SandboxSettings(1.0, 1, 1))
    sandbox.components["follow_agent"] = LoadedComponent(
        Manifest(("edge.d.tele.x.>",), ("edge.d.cmd.x.go",)))  # type: ignore[arg-type]
    sandbox.components["physics"] = LoadedComponent(Manifest((), ()))  # type: ignore[arg-type]
    host = AgentHost([], wasm_agents=sandbox.wasm_agents)
    assert host.status()["wasm"] == ["follow_agent"]


# -- config -----------------------------------------------------------------------------------


def test_build_agent_from_table() -> None:
    agent = build_agent({"kind": "follow", "entity": "drone-1", "target_label": "face", "gain": 2,
                         "acquire_frames": 3, "interval": 0.1}, file="device.toml")
    assert isinstance(agent, FollowAgent)
    assert agent.params.gain == 2.0 and agent.params.acquire_frames == 3
    assert agent.interval == 0.1 and agent.name == "follow-drone-1"
    specs = parse_agents([{"kind": "follow", "entity": "drone-1"},
                          {"kind": "follow", "entity": "drone-2", "name": "chaser"}])
    assert [s.name for s in specs] == ["follow-drone-1", "chaser"]
    assert specs[1].factory() is not specs[1].factory()  # fresh instance per (re)start


@pytest.mark.parametrize(("table", "key", "words"), [
    ({"kind": "fly", "entity": "d"}, "agents[0].kind", "unknown agent kind"),
    ({"entity": "d"}, "agents[0].kind", "unknown agent kind"),
    ({"kind": "follow"}, "agents[0].entity", "entity id"),
    ({"kind": "follow", "entity": "a b"}, "agents[0].entity", "entity id"),
    ({"kind": "follow", "entity": "d", "gian": 1}, "agents[0].gian", "unknown key 'gian'"),
    ({"kind": "follow", "entity": "d", "gain": "fast"}, "agents[0].gain", "expected a number"),
    ({"kind": "follow", "entity": "d", "min_score": 2}, "agents[0].min_score", "within"),
    ({"kind": "follow", "entity": "d", "acquire_frames": 0}, "agents[0].acquire_frames", "must be within 1..1000"),
    ({"kind": "follow", "entity": "d", "battery_low": 0.5, "battery_resume": 0.4},
     "agents[0].battery_resume", "hysteresis"),
    ({"kind": "follow", "entity": "d", "interval": 0}, "agents[0].interval", "within"),
])
def test_build_agent_errors(table: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build_agent(table, file="device.toml")
    assert exc.value.key == key and exc.value.file == "device.toml"
    assert words in exc.value.message


def test_parse_agents_errors() -> None:
    with pytest.raises(ConfigError, match="array of tables"):
        parse_agents({"kind": "follow"}, file="f.toml")
    with pytest.raises(ConfigError) as exc:
        parse_agents([{"kind": "follow", "entity": "d"}, {"kind": "follow", "entity": "d"}], file="f.toml")
    assert exc.value.key == "agents[1].name"
    assert parse_agents(None) == []


async def test_follow_refresh_answers_a_new_set_never_a_timer_tick() -> None:
    """A refresh (same velocity, refresh_s passed) goes out with the next detection set: a timer
    tick on an old set sends nothing, so every command answers a frame (bench_perception)."""
    agent = FollowAgent("d1", FollowParams(acquire_frames=1, refresh_s=1.0, lost_timeout=5.0))
    agent.device = DEVICE
    subject = f"edge.{DEVICE}.evt.d1.detections"
    box = {"items": [{"label": "face", "score": 0.9, "box": [0.6, 0.4, 0.8, 0.6]}]}
    agent.observe(subject, box, 0.0)
    first = await agent.decide(0.0)
    assert [d.decision for d in first] == ["follow"]
    agent.observe(subject, box, 0.5)  # same target, refresh not due yet
    assert await agent.decide(0.5) == []
    assert await agent.decide(1.2) == []  # a tick after refresh_s, on the set of 0.5 s: nothing
    agent.observe(subject, box, 1.3)  # the next set: the refresh goes out with it
    again = await agent.decide(1.3)
    assert [d.decision for d in again] == ["follow"] and again[0].inputs["detections_age_s"] == 0.0


async def test_unknown_battery_level_is_not_an_empty_battery() -> None:
    agent = FollowAgent("d1", FollowParams())
    agent.device = DEVICE
    agent.context.set("world.battery", {"voltage": 12.1, "level": 0.0, "unknown": "current,level"}, 0.0)
    assert agent.battery_level(0.1) == (None, None)
    assert await agent.decide(0.1) == []  # no RTL on a level nobody measured
    agent.context.set("tele.battery", {"level": 0.1, "unknown": ""}, 0.2)
    assert agent.battery_level(0.3) == (0.1, "tele.battery")
    assert [d.decision for d in await agent.decide(0.3)] == ["rtl"]
