"""Commands as requests on a real nats-server: one answer per command, correlated by its id,
recorded once on the ack subject; refusals (no handler, owner unavailable, malformed, busy) at
once; repeated ids answered from memory."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from edge.nats.commands import (
    COMMAND_ID_HEADER,
    CommandClient,
    CommandConflict,
    CommandInvalid,
    CommandRequest,
    CommandRouter,
    CommandTimeout,
    CommandUnanswered,
    Reason,
    Unavailable,
)

pytestmark = pytest.mark.timeout(30)

DEVICE = "dev1"
CMD = f"edge.{DEVICE}.cmd"
ACK = f"edge.{DEVICE}.ack"


class RecordingEvents:
    """The device's events as a list (subject, answer, msg_id) plus core publishes."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.emitted: list[tuple[str, dict[str, Any], str | None]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def emit(self, subject: str, data: bytes, *, msg_id: str | None = None,
             headers: Mapping[str, str] | None = None) -> None:
        self.emitted.append((subject, json.loads(data), msg_id))
        task = asyncio.get_running_loop().create_task(self.nc.publish(subject, data))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def telemetry(self, subject: str, data: bytes) -> None:
        raise AssertionError("the router records answers as events, never as telemetry")

    def on(self, subject: str) -> list[dict[str, Any]]:
        return [a for s, a, _ in self.emitted if s == subject]


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


@pytest.fixture
async def device(nats_url: str) -> AsyncIterator[tuple[CommandRouter, RecordingEvents]]:
    nc = await nats.connect(nats_url)
    events = RecordingEvents(nc)
    router = CommandRouter(nc, DEVICE, events, handler_timeout=1.0)
    await router.start()
    await nc.flush()
    try:
        yield router, events
    finally:
        await router.stop()
        await nc.close()


@pytest.fixture
def client(nc: Client) -> CommandClient:
    return CommandClient(nc, DEVICE)


def echo(calls: list[CommandRequest], delay: float = 0.0) -> Any:
    async def handler(req: CommandRequest) -> dict[str, Any]:
        calls.append(req)
        if delay:
            await asyncio.sleep(delay)
        return {"applied": req.args}

    return handler


async def test_a_request_gets_exactly_one_answer_and_one_record(
        nc: Client, device: Any, client: CommandClient) -> None:
    router, events = device
    calls: list[CommandRequest] = []
    router.register("drone1", "arm", echo(calls), owner="driver 'fc'")
    inbox = nc.new_inbox()
    got: list[Msg] = []

    async def on_answer(msg: Msg) -> None:
        got.append(msg)

    await nc.subscribe(inbox, cb=on_answer)
    await nc.publish(f"{CMD}.drone1.arm", b'{"force": true}', reply=inbox,
                     headers={COMMAND_ID_HEADER: "c-1", "Edge-Caller": "planner"})
    await until(lambda: len(events.on(f"{ACK}.drone1.arm")) == 1 and len(got) >= 1)
    await nc.flush()
    await asyncio.sleep(0.1)  # room for a second (wrong) answer to show up
    assert len(got) == 1 and len(events.on(f"{ACK}.drone1.arm")) == 1
    answer = json.loads(got[0].data)
    assert answer == {"ok": True, "id": "c-1", "applied": {"force": True}}
    assert got[0].headers and got[0].headers[COMMAND_ID_HEADER] == "c-1"
    assert events.emitted[0] == (f"{ACK}.drone1.arm", answer, "cmd.drone1.arm.c-1")
    assert calls[0].caller == "planner" and calls[0].id == "c-1"
    # the client does the same, with a generated id and the round trip
    res = await client.send("drone1", "arm", {}, timeout=2.0)
    assert res.ok and res.answer["id"] == res.id and res.rtt_ms > 0
    assert router.status()["answers"] == {"ok": 2}


async def test_concurrent_callers_each_get_their_own_answer_in_arrival_order(
        nats_url: str, device: Any) -> None:
    router, events = device
    calls: list[CommandRequest] = []
    router.register("drone1", "velocity", echo(calls, delay=0.05), owner="the demo actuator")
    a, b = await nats.connect(nats_url), await nats.connect(nats_url)
    try:
        first = asyncio.ensure_future(CommandClient(a, DEVICE).send("drone1", "velocity", {"x": 1}, timeout=3))
        await until(lambda: len(calls) == 1)  # the first is running when the second arrives
        second = await CommandClient(b, DEVICE).send("drone1", "velocity", {"x": 2}, timeout=3)
        one = await first
    finally:
        await a.close()
        await b.close()
    assert one.answer["applied"] == {"x": 1} and second.answer["applied"] == {"x": 2}
    assert one.id != second.id and [c.args["x"] for c in calls] == [1, 2]
    assert len(events.on(f"{ACK}.drone1.velocity")) == 2


async def test_no_handler_is_answered_at_once(device: Any, client: CommandClient) -> None:
    router, events = device
    t0 = time.monotonic()
    res = await client.send("drone9", "rtl", {}, timeout=5.0)
    assert time.monotonic() - t0 < 1.0
    assert not res.ok and res.reason == Reason.NO_HANDLER
    assert res.answer["error"] == "nothing on device dev1 serves 'rtl' for 'drone9'"
    await until(lambda: len(events.on(f"{ACK}.drone9.rtl")) == 1)  # recorded too


async def test_malformed_commands_are_refused_and_the_router_keeps_serving(
        nc: Client, device: Any, client: CommandClient) -> None:
    router, events = device
    calls: list[CommandRequest] = []
    router.register("drone1", "goto", echo(calls), owner="driver 'fc'")
    for payload, words in [(b"{not json", "not JSON"), (b"[1, 2]", "must be a JSON object")]:
        res = await client.request(f"{CMD}.drone1.goto", payload, timeout=2.0)
        assert not res.ok and res.reason == Reason.BAD_REQUEST and words in res.answer["error"]
    msg = await nc.request(f"{CMD}.drone1.goto.extra", b"{}", timeout=2.0)  # not <entity>.<verb>
    assert json.loads(msg.data)["reason"] == "bad-request"
    res = await client.request(f"{CMD}.drone1.goto", b"{}", timeout=2.0, command_id="has space")
    assert res.reason == Reason.BAD_REQUEST and "command id" in res.answer["error"]
    assert calls == []
    assert (await client.send("drone1", "goto", {"lat": 1}, timeout=2.0)).ok
    with pytest.raises(CommandInvalid):
        await client.send("drone1", "fly.away", {}, timeout=1.0)


async def test_a_repeated_id_is_answered_from_memory_and_runs_once(device: Any, client: CommandClient) -> None:
    router, events = device
    calls: list[CommandRequest] = []
    router.register("drone1", "takeoff", echo(calls, delay=0.2), owner="driver 'fc'")
    # a retry while the first is still running shares its answer
    both = await asyncio.gather(client.send("drone1", "takeoff", {"alt": 5}, timeout=3, command_id="t-1"),
                                client.send("drone1", "takeoff", {"alt": 5}, timeout=3, command_id="t-1"))
    later = await client.send("drone1", "takeoff", {"alt": 5}, timeout=3, command_id="t-1")
    assert len(calls) == 1
    assert both[0].answer == both[1].answer == later.answer == {"ok": True, "id": "t-1", "applied": {"alt": 5}}
    assert router.duplicates == 2
    other = await client.send("drone1", "takeoff", {"alt": 50}, timeout=3, command_id="t-1")
    assert other.reason == Reason.BAD_REQUEST and "already used" in other.answer["error"] and len(calls) == 1
    await until(lambda: len(events.on(f"{ACK}.drone1.takeoff")) >= 1)
    await asyncio.sleep(0.1)
    assert events.on(f"{ACK}.drone1.takeoff") == [later.answer]  # recorded once, duplicates not
    assert router.status()["duplicates"] == 3


async def test_an_unavailable_owner_is_answered_at_once_and_a_retry_runs_later(
        device: Any, client: CommandClient) -> None:
    router, events = device
    calls: list[CommandRequest] = []
    down: list[Unavailable] = [Unavailable(Reason.BACKOFF, "driver 'fc' is in backoff; retry in 2.0 s",
                                           {"driver": "fc", "retry_in_s": 2.0})]
    router.register("drone1", "rtl", echo(calls, delay=5.0), owner="driver 'fc'",
                    available=lambda: down[0] if down else None)
    t0 = time.monotonic()
    res = await client.send("drone1", "rtl", {}, timeout=5, command_id="r-1")
    assert time.monotonic() - t0 < 1.0 and calls == []
    assert res.answer == {"ok": False, "id": "r-1", "error": "driver 'fc' is in backoff; retry in 2.0 s",
                          "reason": "backoff", "owner": "driver 'fc'", "driver": "fc", "retry_in_s": 2.0}
    down.clear()  # the driver is back: the same id runs now (refusals are not remembered)
    router.register("drone1", "land", echo(calls), owner="driver 'fc'")
    res = await client.send("drone1", "rtl", {}, timeout=5, command_id="r-1")
    assert res.reason == Reason.TIMEOUT and "within 1 s" in res.answer["error"] and len(calls) == 1
    assert (await client.send("drone1", "land", {}, timeout=2)).ok  # still serving
    records = [(s, m) for s, _, m in events.emitted if s == f"{ACK}.drone1.rtl"]
    assert len(records) == 2 and records[0][1] != records[1][1]  # distinct record ids


async def test_refusals_timeouts_and_busy_lanes(device: Any, client: CommandClient) -> None:
    router, events = device
    release = asyncio.Event()

    async def refuse(req: CommandRequest) -> dict[str, Any]:
        raise ValueError("unknown mode 'warp'")

    async def blocked(req: CommandRequest) -> dict[str, Any]:
        await release.wait()
        return {"done": True}

    async def not_accepted(req: CommandRequest) -> dict[str, Any]:
        return {"ok": False, "result": "DENIED"}

    router.register("*", "set_mode", refuse, owner="driver 'fc'")
    router.register("drone1", "disarm", not_accepted, owner="driver 'fc'")
    router.lane_depth = 1
    router.register("drone1", "hold", blocked, owner="the demo actuator", timeout=5.0)
    res = await client.send("droneX", "set_mode", {"mode": "warp"}, timeout=2)
    assert res.answer == {"ok": False, "id": res.id, "error": "unknown mode 'warp'", "reason": "failed",
                          "owner": "driver 'fc'"}
    res = await client.send("drone1", "disarm", {}, timeout=2)
    assert res.answer["ok"] is False and res.reason == "failed" and res.answer["result"] == "DENIED"
    first = asyncio.ensure_future(client.send("drone1", "hold", {}, timeout=5))
    await until(lambda: router.status()["in_flight"] == 1)
    busy = await client.send("drone1", "hold", {}, timeout=2)
    assert busy.reason == Reason.BUSY
    release.set()
    assert (await first).answer["done"] is True
    with pytest.raises(CommandTimeout) as err:
        release.clear()
        await client.send("drone1", "hold", {}, timeout=0.2, command_id="h-9")
    assert err.value.id == "h-9" and err.value.subject == f"{CMD}.drone1.hold"
    assert err.value.to_answer()["reason"] == "timeout"
    release.set()


async def test_registration_rules(device: Any) -> None:
    router, _ = device

    async def h(req: CommandRequest) -> dict[str, Any]:
        return {}

    router.register("*", "rtl", h, owner="the demo actuator")
    unregister = router.register("drone0", "rtl", h, owner="driver 'fc'")
    assert router.handler_for("drone0", "rtl") == "driver 'fc'"  # exact before "*"
    assert router.handler_for("drone5", "rtl") == "the demo actuator"
    with pytest.raises(CommandConflict, match="driver 'fc' already does"):
        router.register("drone0", "rtl", h, owner="driver 'fc2'")
    unregister()
    assert router.handler_for("drone0", "rtl") == "the demo actuator"


async def test_no_router_means_unanswered(nc: Client) -> None:
    with pytest.raises(CommandUnanswered, match="is device dev1 running"):
        await CommandClient(nc, DEVICE).send("drone1", "rtl", {}, timeout=1.0)


async def test_stopping_answers_the_running_and_queued_commands(device: Any, client: CommandClient) -> None:
    router, events = device
    started = asyncio.Event()

    async def forever(req: CommandRequest) -> dict[str, Any]:
        started.set()
        await asyncio.Event().wait()
        return {}

    router.register("drone1", "orbit", forever, owner="driver 'fc'", timeout=20.0)
    running = asyncio.ensure_future(client.send("drone1", "orbit", {}, timeout=5, command_id="o-1"))
    await started.wait()
    queued = asyncio.ensure_future(client.send("drone1", "orbit", {"r": 2}, timeout=5))
    await until(lambda: router.status()["queued"] == 2)
    other = await client.send("drone1", "orbit", {"r": 9}, timeout=5, command_id="o-1")  # same id, other args
    assert other.reason == Reason.BAD_REQUEST and "other arguments" in other.answer["error"]
    await router.stop()
    for res in await asyncio.gather(running, queued):
        assert res.answer["ok"] is False and res.answer["error"] == "the device is stopping"
    assert router.status()["serving"] is False and router.status()["in_flight"] == 0


async def test_a_flood_of_refusals_is_answered_but_only_a_budget_is_recorded(
        nc: Client, device: Any, client: CommandClient) -> None:
    """EVT never evicts: refused commands (the handler did not run) are recorded up to a budget per
    window; every one is still answered, and a command that runs is always recorded."""
    router, events = device
    router.refusal_records.limit = 3
    calls: list[CommandRequest] = []
    router.register("drone1", "arm", echo(calls), owner="driver 'fc'")
    answers = [await client.send("drone9", "rtl", {}, timeout=5.0) for _ in range(10)]
    assert [a.reason for a in answers] == [Reason.NO_HANDLER] * 10  # all answered
    assert (await client.send("drone1", "arm", {}, timeout=5.0)).ok  # ran: recorded regardless
    await until(lambda: len(events.on(f"{ACK}.drone1.arm")) == 1)
    assert len(events.on(f"{ACK}.drone9.rtl")) == 3
    status = router.status()
    assert status["refusals_unrecorded"] == 7 and status["answers"][str(Reason.NO_HANDLER)] == 10
    router.refusal_records.reset()  # the window has passed: records again
    await client.send("drone9", "rtl", {}, timeout=5.0)
    assert len(events.on(f"{ACK}.drone9.rtl")) == 4 and router.status()["refusals_unrecorded"] == 7
