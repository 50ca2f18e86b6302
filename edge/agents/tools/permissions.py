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
from edge.config.table import Table
from edge.nats.subjects import CALLER_HEADER as CALLER
from edge.nats.subjects import ID_RULE, is_id

CALLER_HEADER = CALLER
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


def read_tools(t: Table) -> ToolsConfig:
    """The ``[tools]`` table (absent -> defaults: enabled, open permissions)."""
    enabled = t.flag("enabled", True)
    ack = t.number("ack_timeout", DEFAULT_ACK_TIMEOUT_S, lo=0.001, hi=MAX_ACK_TIMEOUT_S, unit="s")
    if not t.has("callers"):
        t.finish()
        return ToolsConfig(enabled, ack)
    callers = t.table("callers")
    known = set(TOOL_NAMES) | {WILDCARD}
    table: dict[str, frozenset[str]] = {}
    for caller in callers.names():
        if caller != WILDCARD and not is_id(caller):
            raise callers.error(caller, f"caller names are {ID_RULE}")
        tools = callers.strings(caller)
        bad = sorted(set(tools) - known)
        if bad:
            raise callers.error(caller, f"unknown tool '{bad[0]}'; tools: {', '.join(TOOL_NAMES)}")
        table[caller] = frozenset(tools)
    t.finish()
    return ToolsConfig(enabled, ack, ToolPermissions(table, open=False))


def parse_tools_config(raw: Any, *, file: str | None = None) -> ToolsConfig:
    """:func:`read_tools` over a parsed ``[tools]`` value (None -> defaults)."""
    return read_tools(Table(raw if raw is not None else {}, key="tools", file=file))
