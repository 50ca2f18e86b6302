"""Who may call which tool: the ``[tools]`` table and its permissions.

The caller names itself in the ``Edge-Caller`` request header. :class:`ToolPermissions` maps
callers to the tools they may call. The header is attribution and a second check only: on a real
deployment the enforcement point is the NATS account/user permissions on the
``edge.<device>.tools.*`` subjects (:meth:`ToolPermissions.nats_permissions` prints the snippet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.agents.tools.schemas import TOOL_NAMES
from edge.errors import ConfigError
from edge.nats.subjects import ID_RULE, is_id

CALLER_HEADER = "Edge-Caller"
ANONYMOUS = "anonymous"
WILDCARD = "*"
DEFAULT_ACK_TIMEOUT_S = 2.0  # send_command waits this long for the answer unless told otherwise
MAX_ACK_TIMEOUT_S = 30.0

@dataclass(frozen=True)
class ToolPermissions:
    """Caller -> allowed tool names. ``"*"`` as a caller is everyone (including callers without the
    header); ``"*"`` as a tool is every tool. ``open`` (no table configured) allows everything."""

    callers: Mapping[str, frozenset[str]] = field(default_factory=dict)
    open: bool = True

    def allowed(self, caller: str, tool: str) -> bool:
        if self.open:
            return True
        for who in (caller, WILDCARD):
            tools = self.callers.get(who)
            if tools is not None and (tool in tools or WILDCARD in tools):
                return True
        return False

    def nats_permissions(self, device: str, tools: Sequence[str]) -> str:
        """A nats-server ``authorization { users = [...] }`` snippet matching these permissions."""
        lines = ["# edge-tools callers of device " + device + "; '*' tools must be granted to every user",
                 "authorization {", "  users = ["]
        for caller, allowed in sorted(self.callers.items()):
            if caller == WILDCARD:
                continue
            names = sorted(tools) if WILDCARD in allowed else sorted(set(allowed) | set(self.callers.get(WILDCARD, ())))
            subs = [f'"edge.{device}.tools.schema"'] + [f'"edge.{device}.tools.{n}"' for n in names if n != WILDCARD]
            lines += [
                f'    {{ user = "{caller}", password = "CHANGE-ME-{caller}",',
                f"      permissions = {{ publish = {{ allow = [{', '.join(subs)}] }},",
                '                      subscribe = { allow = ["_INBOX.>"] } } }',
            ]
        lines += ["  ]", "}"]
        return "\n".join(lines)


@dataclass(frozen=True)
class ToolsConfig:
    """The ``[tools]`` table: ``enabled``, ``ack_timeout`` (s), ``[tools.callers]`` name = [tools]."""

    enabled: bool = True
    ack_timeout: float = DEFAULT_ACK_TIMEOUT_S
    permissions: ToolPermissions = field(default_factory=ToolPermissions)


def parse_tools_config(raw: Any, *, file: str | None = None) -> ToolsConfig:
    """Validate a ``[tools]`` table (None -> defaults: enabled, open permissions)."""
    if raw is None:
        return ToolsConfig()
    if not isinstance(raw, Mapping):
        raise ConfigError("expected a table", key="tools", file=file)
    unknown = sorted(set(raw) - {"enabled", "ack_timeout", "callers"})
    if unknown:
        raise ConfigError("unknown setting", key=f"tools.{unknown[0]}", file=file)
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("expected true or false", key="tools.enabled", file=file)
    ack = raw.get("ack_timeout", DEFAULT_ACK_TIMEOUT_S)
    if isinstance(ack, bool) or not isinstance(ack, (int, float)) or not 0 < ack <= MAX_ACK_TIMEOUT_S:
        raise ConfigError(f"expected seconds in (0, {MAX_ACK_TIMEOUT_S}]", key="tools.ack_timeout", file=file)
    if "callers" not in raw:
        return ToolsConfig(enabled, float(ack))
    callers = raw["callers"]
    if not isinstance(callers, Mapping):
        raise ConfigError("expected a table of caller = [tool names]", key="tools.callers", file=file)
    known = set(TOOL_NAMES) | {WILDCARD}
    table: dict[str, frozenset[str]] = {}
    for caller, tools in callers.items():
        key = f"tools.callers.{caller}"
        if caller != WILDCARD and not is_id(caller):
            raise ConfigError(f"caller names are {ID_RULE}", key=key, file=file)
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            raise ConfigError("expected a list of tool names", key=key, file=file)
        bad = sorted(set(tools) - known)
        if bad:
            raise ConfigError(f"unknown tool '{bad[0]}'; tools: {', '.join(TOOL_NAMES)}", key=key, file=file)
        table[caller] = frozenset(tools)
    return ToolsConfig(enabled, float(ack), ToolPermissions(table, open=False))
