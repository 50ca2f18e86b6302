"""Agents as systems: native Python agents that watch an entity and command it.

See docs/agents.md. Modules: :mod:`~edge.agents.base` (the agent contract),
:mod:`~edge.agents.follow` (the demo ``FollowAgent``), :mod:`~edge.agents.config` (``[[agents]]``
tables), :mod:`~edge.agents.decisions` (decision records), :mod:`~edge.agents.host` (the runtime
extra that runs them), :mod:`~edge.agents.jsonschema` (the request validator of the tools service).
Nothing here does work at import time.
"""

from __future__ import annotations

from edge.agents.base import Agent, AgentContext, Command, Decision
from edge.agents.config import AgentSpec, build_agent, parse_agents, register_agent_kind
from edge.agents.follow import FollowAgent, FollowParams

__all__ = [
    "Agent", "AgentContext", "AgentSpec", "Command", "Decision", "FollowAgent", "FollowParams",
    "build_agent", "parse_agents", "register_agent_kind",
]
