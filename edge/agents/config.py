"""``[[agents]]`` config tables -> agents.

::

    [[agents]]
    kind = "follow"          # a registered kind (see register_agent_kind)
    entity = "drone-1"       # the entity the agent watches and commands
    name = "follow-drone-1"  # optional; default "<kind>-<entity>"
    interval = 0.2           # optional; seconds between scheduled decisions
    target_label = "face"    # kind-specific parameters (FollowAgent: see FollowParams)

Read when the config loads (every agent is built once to check it). Every error is a
:class:`~edge.errors.ConfigError` naming the key (``agents[<i>].<key>``) and the file, in the config
reader's style (:mod:`edge.config.table`). A kind's builder gets an :class:`AgentTable` and must
read every parameter it accepts through it, so unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.agents.base import Agent
from edge.agents.follow import DEFAULT_INTERVAL_S, FollowAgent, FollowParams
from edge.config.table import Table, array
from edge.world.store import ENTITY_ID_RE

MIN_INTERVAL_S = 0.01
MAX_INTERVAL_S = 3600.0
COMMON_KEYS = frozenset({"kind", "entity", "name", "interval"})


class AgentTable(Table):
    """One ``[[agents]]`` table: the config reader (:class:`edge.config.table.Table`), keys
    ``agents[<i>].<key>``, with the common keys already accounted for."""

    def __init__(self, raw: Mapping[str, Any], *, file: str | None, index: int) -> None:
        super().__init__(raw, key=f"agents[{index}]", file=file)
        self.mark(*COMMON_KEYS)

    def string(self, key: str, default: str) -> str:
        """A string (the name agent builders have always used for :meth:`Table.text`)."""
        return self.text(key, default)


AgentBuilder = Callable[[str, AgentTable, str | None, float], Agent]
"""``builder(entity, table, name, interval) -> Agent``."""


def _build_follow(entity: str, t: AgentTable, name: str | None, interval: float) -> Agent:
    d = FollowParams()
    params = FollowParams(
        target_label=t.string("target_label", d.target_label),
        min_score=t.number("min_score", d.min_score, lo=0.0, hi=1.0),
        gain=t.number("gain", d.gain, lo=0.0, hi=100.0),
        max_speed=t.number("max_speed", d.max_speed, lo=0.0, hi=100.0),
        deadband=t.number("deadband", d.deadband, lo=0.0, hi=0.5),
        lost_timeout=t.number("lost_timeout", d.lost_timeout, lo=0.01, hi=3600.0),
        acquire_frames=t.integer("acquire_frames", d.acquire_frames, lo=1, hi=1000),
        min_delta=t.number("min_delta", d.min_delta, lo=0.0, hi=100.0),
        refresh_s=t.number("refresh_s", d.refresh_s, lo=0.01, hi=3600.0),
        battery_low=t.number("battery_low", d.battery_low, lo=0.0, hi=1.0),
        battery_resume=t.number("battery_resume", d.battery_resume, lo=0.0, hi=1.0),
    )
    if params.battery_resume < params.battery_low:
        raise t.error("battery_resume", "must be at least battery_low (hysteresis)")
    return FollowAgent(entity, params, name=name, interval=interval)


_KINDS: dict[str, tuple[AgentBuilder, float]] = {"follow": (_build_follow, DEFAULT_INTERVAL_S)}
FOLLOW_PARAMS = tuple(f.name for f in dataclasses.fields(FollowParams))


def register_agent_kind(kind: str, builder: AgentBuilder, *, default_interval: float = 0.5) -> None:
    """Make ``kind = "<kind>"`` usable in ``[[agents]]`` tables."""
    _KINDS[kind] = (builder, default_interval)


def agent_kinds() -> list[str]:
    return sorted(_KINDS)


def build_agent(table: Mapping[str, Any], *, file: str | None = None, index: int = 0) -> Agent:
    """Validate one ``[[agents]]`` table and build its agent."""
    t = AgentTable(table, file=file, index=index)
    kind = table.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise t.error("kind", f"unknown agent kind {kind!r}; known: {', '.join(agent_kinds())}")
    builder, default_interval = _KINDS[kind]
    entity = table.get("entity")
    if not isinstance(entity, str) or not ENTITY_ID_RE.match(entity):
        raise t.error("entity", f"expected an entity id (1-64 characters of A-Z a-z 0-9 _ -), got {entity!r}")
    name = table.get("name")
    if name is not None and (not isinstance(name, str) or not ENTITY_ID_RE.match(name)):
        raise t.error("name", f"agent names are 1-64 characters of A-Z a-z 0-9 _ -, got {name!r}")
    interval = t.number("interval", default_interval, lo=MIN_INTERVAL_S, hi=MAX_INTERVAL_S, unit="s")
    agent = builder(entity, t, name, interval)
    t.finish()
    return agent


@dataclass(frozen=True)
class AgentSpec:
    """A validated ``[[agents]]`` entry; ``factory()`` builds a fresh agent (used on restart)."""

    kind: str
    entity: str
    name: str
    table: Mapping[str, Any]
    file: str | None = None
    index: int = 0
    builder: Callable[[], Agent] | None = None  # overrides the table (tests, code-built agents)

    def factory(self) -> Agent:
        if self.builder is not None:
            return self.builder()
        return build_agent(self.table, file=self.file, index=self.index)

    @classmethod
    def of(cls, build: Callable[[], Agent]) -> AgentSpec:
        """A spec for an agent built in code (the builder is called on every (re)start)."""
        probe = build()
        return cls(kind=probe.kind, entity=probe.entity, name=probe.name, table={}, builder=build)


def read_agents(tables: list[Table]) -> list[AgentSpec]:
    """The ``[[agents]]`` array: each table validated by building its agent once (names unique)."""
    specs: list[AgentSpec] = []
    names: set[str] = set()
    for i, t in enumerate(tables):
        agent = build_agent(t.data, file=t.file, index=i)
        if agent.name in names:
            raise t.error("name", f"agent name '{agent.name}' is used twice")
        names.add(agent.name)
        specs.append(AgentSpec(agent.kind, agent.entity, agent.name, dict(t.data), t.file, i))
    return specs


def parse_agents(raw: Any, *, file: str | None = None) -> list[AgentSpec]:
    """:func:`read_agents` over a parsed ``agents`` value (None -> no agents)."""
    return read_agents(array("agents", raw, file=file))
