"""The command router's admission check (the policy point's seat) on a real nats-server: it runs
as a command arrives, before the queue and before the guard (the safety envelope's seat); a
refusal is answered at once with reason ``denied`` and recorded; a failing check fails closed."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client

from edge.nats.commands import CommandClient, CommandConflict, CommandRequest, CommandRouter, GuardVerdict
from edge.policy.layer import PolicyLayer
from edge.policy.point import PolicyPoint
from edge.policy.rules import parse_policy
from rigs.events import ListEvents as Events

pytestmark = pytest.mark.timeout(30)

DEV = "adm"


async def test_admission_runs_before_the_guard_and_a_refusal_is_answered_and_recorded(nc: Client) -> None:
    events = Events()
    router = CommandRouter(nc, DEV, events)
    await router.start()
    guarded: list[str] = []
    ran: list[str] = []

    def guard(req: CommandRequest) -> GuardVerdict | None:
        guarded.append(req.verb)
        return None

    async def handler(req: CommandRequest) -> dict[str, Any]:
        ran.append(req.verb)
        return {}

    point = PolicyPoint(DEV, events=events)
    point.load(parse_policy({"rule": [{"name": "land", "effect": "allow", "principal": "agent:pilot",
                                       "action": "command", "resource": "*.rtl"}]}, DEV))
    layer = PolicyLayer(point, agents=["pilot"])
    try:
        router.set_guard(guard)
        remove = router.set_admission(layer.admit)
        with pytest.raises(CommandConflict):
            router.set_admission(layer.admit)
        router.register("d1", "rtl", handler, owner="t")
        router.register("d1", "arm", handler, owner="t")
        router.register("d1", "hold", handler, owner="t")
        client = CommandClient(nc, DEV)
        assert (await client.send("d1", "rtl", {"a": 1}, timeout=5, caller="pilot")).ok
        res = await client.send("d1", "arm", {}, timeout=5, caller="pilot")
        assert res.reason == "denied" and res.answer["rule"] == "default"
        res = await client.send("d1", "hold", {}, timeout=5, caller="safety-failsafe")  # the device: granted
        assert res.ok
        # anyone can claim the failsafe's name: it is granted its hold, nothing else
        res = await client.send("d1", "rtl", {}, timeout=5, caller="safety-failsafe")
        assert res.reason == "denied" and res.answer["rule"] == "default"
        assert guarded == ["rtl", "hold"] and ran == ["rtl", "hold"]  # the denied ones met no guard
        acks = [a for s, a in events.out if s == f"edge.{DEV}.ack.d1.arm"]
        assert acks and acks[0]["reason"] == "denied"
        pilot = point.meter.of("agent", "pilot")
        assert pilot.commands == 2 and pilot.denied == 1 and pilot.bytes == len(b'{"a":1}') + 2
        remove()
        assert (await client.send("d1", "arm", {}, timeout=5, caller="pilot")).ok  # no check: as before

        def broken(req: CommandRequest, size: int) -> None:
            raise RuntimeError("boom")

        router.set_admission(broken)  # type: ignore[arg-type]
        res = await client.send("d1", "rtl", {}, timeout=5, caller="pilot")
        assert res.reason == "denied" and "the policy check failed (RuntimeError: boom)" in res.answer["error"]
        assert ran == ["rtl", "hold", "arm"]
    finally:
        await router.stop()
