"""The native agent contract: context in, decisions out.

An agent is a system that watches one entity and decides what it should do. The
:class:`~edge.agents.host.AgentHost` feeds it and acts on what it returns:

* messages on :meth:`Agent.subjects` (by default ``edge.<device>.tele.<entity>.>`` and
  ``edge.<device>.evt.<entity>.>``) reach :meth:`Agent.observe`, which stores them in the agent's
  :class:`AgentContext` (last value and arrival time per key) and says whether to decide now;
* before each decision the host calls :meth:`Agent.read_world` (the components named in
  ``world_components`` land in the context as ``world.<component>``);
* :meth:`Agent.decide` runs on input and every ``interval`` seconds and returns
  :class:`Decision` records; a decision may carry a :class:`Command`, which the host sends as a
  request on ``edge.<device>.cmd.<entity>.<verb>`` (JSON args) and waits a short time for its
  answer. Every returned decision is recorded with its inputs and its command's answer (see
  :mod:`edge.agents.decisions`).

A subclass MUST implement ``async decide(now)`` and set ``kind``. It MAY override ``observe``,
``subjects`` and ``read_world``. An exception raised by any of them is a fault: the host counts
it, reports it and restarts the agent (a fresh instance from its factory) after a backoff.
Agents must not block: ``decide`` runs on the event loop under a deadline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


from edge.nats import subjects
from edge.world.store import World

DEFAULT_DECIDE_INTERVAL_S = 0.5  # seconds between scheduled decisions
DECISION_KIND = "decision"  # evt.<entity>.decision carries the decision records


@dataclass(frozen=True)
class Command:
    """A command for an entity: sent as JSON ``args`` on ``cmd.<entity>.<verb>`` (a request).

    ``entity`` defaults to the agent's own entity.
    """

    verb: str
    args: Mapping[str, Any] = field(default_factory=dict)
    entity: str | None = None


@dataclass(frozen=True)
class Decision:
    """What an agent decided, why, and from which inputs (JSON-serialisable values only)."""

    decision: str
    reason: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    command: Command | None = None


class AgentContext:
    """The agent's memory of its inputs: last value and arrival time (monotonic s) per key."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.stamps: dict[str, float] = {}

    def set(self, key: str, value: Any, now: float) -> None:
        self.values[key] = value
        self.stamps[key] = now

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def age(self, key: str, now: float) -> float | None:
        """Seconds since ``key`` was last set, or None if it never was."""
        stamp = self.stamps.get(key)
        return None if stamp is None else max(0.0, now - stamp)

    def snapshot(self) -> dict[str, Any]:
        return dict(self.values)


def subject_key(device: str, subject: str) -> str | None:
    """``edge.<device>.<class>.<entity>.<rest>`` -> ``<class>.<rest>`` (e.g. ``tele.battery``)."""
    parts = subject.split(".")
    if len(parts) < 5 or parts[0] != subjects.PREFIX or parts[1] != device:
        return None
    return ".".join([parts[2], *parts[4:]])


class Agent:
    """Base class of native agents (see the module docstring for the contract)."""

    kind: ClassVar[str] = "agent"
    world_components: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        entity: str,
        *,
        name: str | None = None,
        interval: float = DEFAULT_DECIDE_INTERVAL_S,
        decide_on_input: bool = True,
    ) -> None:
        self.entity = entity
        self.name = name or f"{self.kind}-{entity}"
        self.interval = interval
        self.decide_on_input = decide_on_input
        self.device = ""  # set by the host before the first observe/decide
        self.context = AgentContext()

    def subjects(self, device: str) -> list[str]:
        """NATS subjects to subscribe to; the default is the entity's telemetry and events."""
        return [
            f"{subjects.PREFIX}.{device}.tele.{self.entity}.>",
            f"{subjects.PREFIX}.{device}.evt.{self.entity}.>",
        ]

    def observe(self, subject: str, payload: Any, now: float) -> bool:
        """Store a message in the context under its subject key; return True to decide now.

        Decision records (``evt.<entity>.decision``) are ignored so an agent never feeds on itself.
        """
        key = subject_key(self.device, subject)
        if key is None or key == f"evt.{DECISION_KIND}":
            return False
        self.context.set(key, payload, now)
        return self.decide_on_input

    def read_world(self, world: World, now: float) -> None:
        """Copy the entity's ``world_components`` into the context as ``world.<component>``."""
        if self.entity not in world:
            return
        for comp in self.world_components:
            if world.has(self.entity, comp):
                self.context.set(f"world.{comp}", world.get(self.entity, comp), now)

    async def decide(self, now: float) -> Sequence[Decision]:
        """Return the decisions for this moment (``now`` is ``time.monotonic()``)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "entity": self.entity, "interval_s": self.interval}
