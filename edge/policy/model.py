"""What a policy decision is about: principal, action, resource, context; and its answer.

Key components
- :class:`Action`: publish, deliver, command, call, kv, infer, deploy.
- :class:`Principal`: who acts (``component``, ``agent``, ``caller``, ``operator``, ``device``)
  and its id; written ``kind:id``.
- :class:`Context`: what a rule's conditions look at: the target's labels, the link state, the
  minute of the day (local time).
- :class:`Decision`: allow or deny, the rule that decided, a reason, the policy generation.
- :func:`valid_resource`: the one resource rule (a NATS-style name: dot-separated tokens, no
  wildcard, no space, at most :data:`MAX_RESOURCE` UTF-8 bytes); anything else is denied.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edge.errors import ConfigError, EdgeError


class Action(enum.StrEnum):
    """What a principal does to a resource."""

    PUBLISH = "publish"  # a wasm component publishes on a subject
    DELIVER = "deliver"  # a message is delivered into a component (resource: its subject)
    COMMAND = "command"  # a command (resource: <entity>.<verb>)
    CALL = "call"  # a tool call by an external agent (resource: the tool)
    KV = "kv"  # a component's key-value write (resource: the key)
    INFER = "infer"  # an inference request (resource: the model)
    DEPLOY = "deploy"  # an OTA artifact for a device (resource: the artifact)


ACTIONS = tuple(a.value for a in Action)
KINDS = ("component", "agent", "caller", "operator", "device")
LINK_STATES = ("up", "down", "none")
#: Longest resource (UTF-8 bytes) the engine decides on; a longer one is denied.
MAX_RESOURCE = 512
#: Longest principal id; a longer (or otherwise invalid) one is denied.
PRINCIPAL_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOKEN_BAD = re.compile(r"[\s*>\x00-\x1f\x7f]")
_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who acts: ``kind`` (one of :data:`KINDS`) and ``id``."""

    kind: str
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True, slots=True)
class Context:
    """What conditions look at. ``minute`` is the minute of the day (0..1439, local time);
    None means now."""

    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    link: str = "none"
    minute: int | None = None

    def minute_of_day(self) -> int:
        if self.minute is not None:
            return self.minute
        t = time.localtime()
        return t.tm_hour * 60 + t.tm_min


NO_CONTEXT = Context()


@dataclass(frozen=True, slots=True)
class Decision:
    """Allow or deny, with the rule that decided (``default`` when none did) and why."""

    allowed: bool
    rule: str
    reason: str
    generation: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"allowed": self.allowed, "rule": self.rule, "reason": self.reason,
                "generation": self.generation}


class PolicyError(ConfigError):
    """A policy file is wrong: one sentence naming the rule (when known), the key and the file."""

    def __init__(self, sentence: str, *, rule: str | None = None, key: str | None = None,
                 file: str | None = None) -> None:
        EdgeError.__init__(self, sentence, key=key, file=file, rule=rule)
        self.key = key
        self.file = file
        self.rule = rule


class PolicyDenied(EdgeError):
    """A caller-facing refusal: the decision's rule and reason as fields."""

    def __init__(self, message: str, *, principal: str, action: str, resource: str, rule: str,
                 reason: str) -> None:
        super().__init__(message, principal=principal, action=action, resource=resource, rule=rule,
                         reason="denied", why=reason)


def valid_resource(resource: str) -> bool:
    """True if ``resource`` is dot-separated non-empty tokens without wildcards, spaces or
    control characters, encodable as UTF-8, at most :data:`MAX_RESOURCE` bytes."""
    if not resource or len(resource) > MAX_RESOURCE:
        return False
    try:
        if len(resource.encode()) > MAX_RESOURCE:
            return False
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8
        return False
    if _TOKEN_BAD.search(resource):
        return False
    return "" not in resource.split(".")


def valid_principal(kind: str, pid: str) -> bool:
    return kind in KINDS and isinstance(pid, str) and PRINCIPAL_ID_RE.match(pid) is not None
