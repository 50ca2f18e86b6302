"""``[[agents]]`` config tables -> agents.

::

    [[agents]]
    kind = "follow"          # a registered kind (see register_agent_kind)
    entity = "drone-1"       # the entity the agent watches and commands
    name = "follow-drone-1"  # optional; default "<kind>-<entity>"
    interval = 0.2           # optional; seconds between scheduled decisions
    target_label = "face"    # kind-specific parameters (FollowAgent: see FollowParams)

Every error is a :class:`~edge.errors.ConfigError` naming the key (``agents[i].<key>``) and the file.
A kind's builder gets an :class:`AgentTable` and must read every parameter it accepts through it,
so unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.agents.base import Agent
from edge.agents.follow import DEFAULT_INTERVAL_S, FollowAgent, FollowParams
from edge.errors import ConfigError
from edge.world.store import ENTITY_ID_RE

MIN_INTERVAL_S = 0.01
MAX_INTERVAL_S = 3600.0
COMMON_KEYS = frozenset({"kind", "entity", "name", "interval"})


class AgentTable:
    """One ``[[agents]]`` table with typed getters that name the key in errors."""

    def __init__(self, raw: Mapping[str, Any], *, file: str | None, index: int) -> None:
        self.raw = raw
        self.file = file
        self.where = f"agents[{index}]"
        self.used: set[str] = set(COMMON_KEYS)

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, key=f"{self.where}.{key}", file=self.file)

    def number(self, key: str, default: float, *, lo: float | None = None, hi: float | None = None) -> float:
        self.used.add(key)
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected a number, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.error(key, f"must be within {lo}..{hi}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int, *, lo: int = 0, hi: int = 1_000_000) -> int:
        self.used.add(key)
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.error(key, f"expected an integer {lo}..{hi}, got {value!r}")
        return value

    def string(self, key: str, default: str) -> str:
        self.used.add(key)
        value = self.raw.get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown agent setting")


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
    if not isinstance(table, Mapping):
        raise ConfigError("expected a table", key=f"agents[{index}]", file=file)
    t = AgentTable(table, file=file, index=index)
    kind = table.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise t.error("kind", f"unknown agent kind {kind!r}; known: {', '.join(agent_kinds())}")
    builder, default_interval = _KINDS[kind]
    entity = table.get("entity")
    if not isinstance(entity, str) or not ENTITY_ID_RE.match(entity):
        raise t.error("entity", "expected an entity id (1-64 characters of A-Z a-z 0-9 _ -)")
    name = table.get("name")
    if name is not None and (not isinstance(name, str) or not ENTITY_ID_RE.match(name)):
        raise t.error("name", "agent names are 1-64 characters of A-Z a-z 0-9 _ -")
    interval = t.number("interval", default_interval, lo=MIN_INTERVAL_S, hi=MAX_INTERVAL_S)
    agent = builder(entity, t, name, interval)
    t.done()
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


def parse_agents(raw: Any, *, file: str | None = None) -> list[AgentSpec]:
    """Validate the ``agents`` array of tables of a parsed config (None -> no agents)."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(r, Mapping) for r in raw):
        raise ConfigError("expected an array of tables ([[agents]])", key="agents", file=file)
    specs: list[AgentSpec] = []
    names: set[str] = set()
    for i, table in enumerate(raw):
        agent = build_agent(table, file=file, index=i)
        if agent.name in names:
            raise ConfigError(f"agent name '{agent.name}' is used twice", key=f"agents[{i}].name", file=file)
        names.add(agent.name)
        specs.append(AgentSpec(agent.kind, agent.entity, agent.name, dict(table), file, i))
    return specs
