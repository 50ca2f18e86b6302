"""Re-runs recorded native agents (``FollowAgent`` and other kinds) and compares their decisions.

Key components
- :class:`AgentReplay`: for each agent in the window, a fresh instance built from its recorded
  config table (or a what-if table / factory), started at its last ``agent`` record at or
  before the window (a new instance starts with an empty context, as on the device), then fed
  every recorded ``obs`` (message and its monotonic ``now``) and ``read`` (the entity's
  components as ``read_world`` saw them, then ``decide`` at the recorded ``now``), in stream
  order. The decisions inside the window are compared with the recorded ``decide`` records.

Agents run in this process (they are Python); nothing is sent: commands are part of the
compared decision, their answers are not.
"""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from edge.agents.base import Agent
from edge.agents.config import build_agent
from edge.agents.record import RecordedWorld, decision_dict, message_payload
from edge.errors import EdgeError
from edge.replay.records import AGENT_KINDS, ReplayError, digest, unb64
from edge.replay.source import Window
from edge.world.store import World

log = logging.getLogger("edge.replay.agents")

AgentFactory = Callable[[], Agent]


def agent_table(path: Path) -> dict[str, Any]:
    """A what-if agent: a TOML file holding one ``[[agents]]`` table's keys."""
    try:
        doc = tomllib.loads(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ReplayError(f"what-if agent table {path} cannot be read: {err}", path=str(path),
                          reason="usage") from err
    return doc


def is_agent_table(path: Path) -> bool:
    """A what-if ``.toml`` holding an agent's table (``kind``, no ``module``), not a manifest."""
    if Path(path).suffix != ".toml":
        return False
    try:
        doc = tomllib.loads(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return "kind" in doc and "module" not in doc


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class LiveAgent:
    name: str
    agent: Agent | None = None
    pending: list[dict[str, Any]] | None = None
    versions: list[dict[str, Any]] = field(default_factory=list)


class AgentReplay:
    """Replays the agents found in ``items`` (see the module docstring).

    ``report_of(name)`` gives the report object to fill (the replayer's
    :class:`~edge.replay.replayer.ComponentReport`); ``diverge(report, divergence_fields)``
    records a divergence.
    """

    def __init__(self, device: str, items: list[tuple[int, dict[str, Any]]], window: Window, *,
                 selected: Callable[[str], bool],
                 what_if: Mapping[str, Path] | None = None,
                 factories: Mapping[str, AgentFactory] | None = None) -> None:
        self.device = device
        self.items = items
        self.window = window
        self.selected = selected
        self.what_if = {k: agent_table(v) for k, v in (what_if or {}).items()}
        self.factories = dict(factories or {})

    def names(self, first_in: int, last_in: int) -> list[str]:
        return sorted({str(r["c"]) for _, r in self.items[first_in:last_in + 1]
                       if r["k"] in AGENT_KINDS and isinstance(r.get("c"), str)
                       and self.selected(str(r["c"]))})

    def start_of(self, name: str, first_in: int) -> int | None:
        """Index of the agent's last ``agent`` record at or before the window (None: none)."""
        for i in range(first_in, -1, -1):
            rec = self.items[i][1]
            if rec["k"] == "agent" and rec.get("c") == name:
                return i
        return None

    def build(self, name: str, rec: dict[str, Any]) -> tuple[Agent, bool]:
        """A fresh instance (and whether it is a what-if)."""
        try:
            if name in self.factories:
                return self.factories[name](), True
            if name in self.what_if:
                return build_agent(self.what_if[name]), True
            table = rec.get("table") or {}
            if not table:
                raise ReplayError(f"agent '{name}' was built in code, not from a config table: "
                                  "replay it from Python with factories={name: builder}",
                                  component=name, reason="usage")
            return build_agent(table), False
        except ReplayError:
            raise
        except EdgeError as err:
            raise ReplayError(f"cannot build agent '{name}' for the replay: {err.message}",
                              component=name, reason="load") from err

    async def apply(self, live: LiveAgent, seq: int, rec: dict[str, Any], inside: bool,
                    report: Any, diverge: Callable[..., None]) -> None:
        kind = rec["k"]
        t = float(rec["t"])
        if kind == "agent":
            built, what_if = self.build(live.name, rec)
            built.device = self.device
            live.agent, live.pending = built, None
            table = self.what_if.get(live.name, rec.get("table", {}))
            live.versions.append({"version": built.kind,
                                  "sha256": digest(_canon(table).encode()),
                                  "what_if": what_if})
            report.versions = live.versions
            return
        agent = live.agent
        if agent is None:
            return
        if kind == "obs":
            data = unb64(rec["data"], "data")
            try:
                agent.observe(str(rec["subject"]), message_payload(data), float(rec["now"]))
            except Exception as err:  # noqa: BLE001  a fault is a divergence, not a crash
                if inside:
                    diverge(report, "fault", seq, t, None, f"observe raised {err!r}")
                live.agent = None
        elif kind == "read":
            now = float(rec["now"])
            try:
                world = RecordedWorld(agent.entity, dict(rec.get("world") or {}))
                agent.read_world(cast(World, world), now)  # only contains/has/get are used
                live.pending = [decision_dict(d) for d in (await agent.decide(now) or ())]
            except Exception as err:  # noqa: BLE001
                if inside:
                    diverge(report, "fault", seq, t, None, f"read_world/decide raised {err!r}")
                live.agent = None
        elif kind == "decide":
            replayed, live.pending = live.pending or [], None
            if not inside:
                return
            recorded = list(rec.get("decisions") or [])
            report.decisions += max(len(recorded), len(replayed))
            if _canon(recorded) == _canon(replayed):
                return
            report.decisions_differing += sum(
                1 for i in range(max(len(recorded), len(replayed)))
                if i >= len(recorded) or i >= len(replayed)
                or _canon(recorded[i]) != _canon(replayed[i]))
            diverge(report, "decision", seq, t, _brief(recorded), _brief(replayed),
                    context={"recorded": recorded, "replayed": replayed})


def _brief(decisions: list[dict[str, Any]]) -> str:
    if not decisions:
        return "no decision"
    parts = []
    for d in decisions:
        cmd = d.get("command")
        parts.append(f"{d.get('decision')}" + (f" -> {cmd.get('verb')} {_canon(cmd.get('args'))}"
                                                if isinstance(cmd, dict) else ""))
    return "; ".join(parts)
