"""The recorder hook of the agent host: what a recorder is told about each native agent.

[replay hook] :class:`~edge.agents.host.AgentHost` calls an :class:`AgentRecorder` (set by the
composition root; None = recording off) from each agent's runner:

* ``on_agent`` when an instance is built (its config table, kind, entity, interval);
* ``on_observe`` for each message the agent observes, with the monotonic ``now`` it was given;
* ``on_read`` right after ``read_world``, with the ``now`` of the cycle and the agent entity's
  components as the agent read them;
* ``on_decide`` with the decisions ``decide(now)`` returned (before their commands are sent).

Every method is synchronous and must not block or raise. See docs/replay.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from edge.agents.base import Agent, Decision
from edge.world.store import World
from edge.nats.service import loads


class AgentRecorder(Protocol):
    """Told what each native agent saw and decided (see the module docstring)."""

    def on_agent(self, agent: Agent, table: Mapping[str, Any]) -> None: ...

    def on_observe(self, agent: str, subject: str, data: bytes, now: float) -> None: ...

    def on_read(self, agent: str, now: float, world: Mapping[str, Any]) -> None: ...

    def on_decide(self, agent: str, decisions: Sequence[Decision]) -> None: ...


def decision_dict(d: Decision) -> dict[str, Any]:
    """The parts of a decision a replay compares (the command's answer is not a decision)."""
    out: dict[str, Any] = {"decision": d.decision, "reason": d.reason, "inputs": dict(d.inputs)}
    if d.command is not None:
        out["command"] = {"entity": d.command.entity, "verb": d.command.verb,
                          "args": dict(d.command.args)}
    return out


def entity_view(world: World, entity: str) -> dict[str, Any]:
    """Every component of ``entity`` as the world holds it now ({} if there is no such entity)."""
    if entity not in world:
        return {}
    return {comp: world.get(entity, comp) for comp in world.components_of(entity)}


class RecordedWorld:
    """The part of a :class:`~edge.world.store.World` an agent's ``read_world`` uses, over one
    recorded entity view (a replay's stand-in for the device's world)."""

    def __init__(self, entity: str, view: Mapping[str, Any]) -> None:
        self.entity = entity
        self.view = dict(view)

    def __contains__(self, entity: object) -> bool:
        return entity == self.entity and bool(self.view)

    def has(self, entity: str, component: str) -> bool:
        return entity == self.entity and component in self.view

    def get(self, entity: str, component: str) -> dict[str, Any]:
        return dict(self.view[component])


def message_payload(data: bytes) -> Any:
    """What an agent's ``observe`` is given for a message: its JSON, else its text."""
    try:
        return loads(data) if data else None
    except ValueError:
        return data.decode(errors="replace")
