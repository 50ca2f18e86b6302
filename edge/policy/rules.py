"""The policy file: TOML rules and limits, validated as they load (docs/policy.md).

Key components
- :func:`load_policy` / :func:`parse_policy`: a file (or parsed TOML) -> :class:`Policy`. Every
  error is one sentence naming the rule, the key and the file (:class:`PolicyError`); nothing
  half-read is ever returned.
- :class:`Rule`: ``allow`` or ``deny`` for principals x actions x resources, with optional
  conditions (``labels``, ``link``, ``hours``).
- :class:`Limit`: a token bucket (``rate``, ``burst``) and/or a quota per ``window`` (messages,
  bytes) per principal, for a class of resources.

Patterns: a principal is ``kind:id`` (``*`` for any kind or any id); a resource pattern is
NATS-style (``*`` one token, ``>`` the rest), ``{device}`` stands for the device id.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config.table import REQUIRED, Table
from edge.errors import ConfigError
from edge.policy.model import ACTIONS, KINDS, LINK_STATES, PRINCIPAL_ID_RE, PolicyError

#: The one version of the file format.
VERSION = 1
#: Rules and limits one file may hold (a bound on load time and memory).
MAX_RULES = 4096
#: Longest resource pattern in a file (bytes).
MAX_PATTERN = 512
_HOURS_RE = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    effect: str  # "allow" | "deny"
    principals: tuple[tuple[str, str], ...]  # (kind or "*", id or "*")
    actions: tuple[str, ...]
    resources: tuple[str, ...]  # patterns, {device} already substituted
    labels: Mapping[str, str] = field(default_factory=dict)
    link: str | None = None
    hours: tuple[int, int] | None = None  # [start, end) minutes of the day; wraps past midnight
    reason: str = ""

    @property
    def conditional(self) -> bool:
        return bool(self.labels) or self.link is not None or self.hours is not None


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    principals: tuple[tuple[str, str], ...]
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    rate: float | None = None  # tokens a second, per principal
    burst: int = 0
    quota_messages: int | None = None  # per principal per window
    quota_bytes: int | None = None
    window: float = 60.0


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]
    limits: tuple[Limit, ...]
    file: str | None = None
    digest: str = ""


def load_policy(path: str | Path, device: str) -> Policy:
    """Read and validate a policy file for ``device`` (its ``{device}`` patterns)."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"policy file not found (in {file})", file=file) from None
    except OSError as err:
        raise PolicyError(f"policy file cannot be read: {err.strerror} (in {file})", file=file) from None
    return policy_from_bytes(data, device, file)


def policy_from_bytes(data: bytes, device: str, file: str) -> Policy:
    """A policy file's bytes -> :class:`Policy` (``file`` names it in errors and the status)."""
    try:
        raw = tomllib.loads(data.decode())
    except UnicodeDecodeError:
        raise PolicyError(f"policy file is not UTF-8 text (in {file})", file=file) from None
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"invalid TOML: {err} (in {file})", file=file) from None
    policy = parse_policy(raw, device, file=file)
    return Policy(policy.rules, policy.limits, file, hashlib.sha256(data).hexdigest())


def parse_policy(raw: Mapping[str, Any], device: str, *, file: str | None = None) -> Policy:
    """Validate parsed TOML (see :func:`load_policy`)."""
    try:
        top = Table(raw, file=file)
        top.integer("version", VERSION, choices=(VERSION,))
        rule_tables = top.tables("rule")
        limit_tables = top.tables("limit")
        top.finish()
    except ConfigError as err:
        raise PolicyError(err.message, key=err.key, file=file) from None
    if len(rule_tables) + len(limit_tables) > MAX_RULES:
        raise PolicyError(f"{len(rule_tables) + len(limit_tables)} rules and limits, at most {MAX_RULES}"
                          f"{_where(None, file)}", file=file)
    names: set[str] = set()
    rules = tuple(_read(t, device, file, names, _rule) for t in rule_tables)
    limits = tuple(_read(t, device, file, names, _limit) for t in limit_tables)
    return Policy(rules, limits, file)


def _where(key: str | None, file: str | None) -> str:
    if key and file:
        return f" (key '{key}' in {file})"
    if key:
        return f" (key '{key}')"
    return f" (in {file})" if file else ""


def _read(t: Table, device: str, file: str | None, names: set[str], reader: Any) -> Any:
    name = t.data.get("name")
    label = f"rule '{name}'" if isinstance(name, str) and name else f"rule {t.prefix}"
    t.label = label
    try:
        name = t.text("name", REQUIRED)
        if not _NAME_RE.match(name):
            raise t.error("name", f"rule names are 1-64 characters of A-Z a-z 0-9 _ . -, got {name!r}")
        if name in names:
            raise t.error("name", f"a second rule or limit is named '{name}'; names must be unique")
        names.add(name)
        out = reader(t, device)
        t.finish()
        return out
    except PolicyError:
        raise
    except ConfigError as err:
        raise PolicyError(err.message, rule=name if isinstance(name, str) else None, key=err.key,
                          file=file) from None


def _strings(t: Table, name: str, default: Any = REQUIRED) -> list[str]:
    value = t.raw(name, default)
    if value is REQUIRED:
        raise t.error(name, f"missing required key '{name}' (a string or a list of strings)")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise t.error(name, "expected a string or a non-empty list of strings")
    return list(value)


def _principals(t: Table) -> tuple[tuple[str, str], ...]:
    out = []
    for p in _strings(t, "principal"):
        kind, sep, pid = p.partition(":")
        if p == "*":
            kind, sep, pid = "*", ":", "*"
        if not sep or (kind != "*" and kind not in KINDS) or (pid != "*" and not PRINCIPAL_ID_RE.match(pid)):
            raise t.error("principal", f"principal {p!r} is not kind:id with kind one of "
                                       f"{', '.join(KINDS)} or *, and id 1-64 characters of "
                                       "A-Z a-z 0-9 _ - or *")
        out.append((kind, pid))
    return tuple(out)


def _actions(t: Table) -> tuple[str, ...]:
    acts = _strings(t, "action")
    if "*" in acts:
        return ACTIONS
    bad = [a for a in acts if a not in ACTIONS]
    if bad:
        raise t.error("action", f"unknown action {bad[0]!r}; actions: {', '.join(ACTIONS)} or *")
    return tuple(dict.fromkeys(acts))


def _resources(t: Table, device: str) -> tuple[str, ...]:
    out = []
    for r in _strings(t, "resource", [">"]):
        pattern = r.replace("{device}", device)
        tokens = pattern.split(".")
        ok = (len(pattern.encode()) <= MAX_PATTERN and all(tokens)
              and all(tok in ("*", ">") or not re.search(r"[\s*>]", tok) for tok in tokens)
              and ">" not in tokens[:-1])
        if not ok:
            raise t.error("resource", f"resource pattern {r!r} is not dot-separated tokens "
                                      "('*' one token, '>' the rest, last), at most "
                                      f"{MAX_PATTERN} bytes")
        out.append(pattern)
    return tuple(out)


def _rule(t: Table, device: str) -> Rule:
    effect = t.choice("effect", ("allow", "deny"))
    principals = _principals(t)
    actions = _actions(t)
    resources = _resources(t, device)
    labels = t.mapping("labels", {})
    if not all(isinstance(v, str) for v in labels.values()):
        raise t.error("labels", "label values are strings")
    link = t.choice("link", LINK_STATES, None)
    hours = None
    text = t.text("hours", None)
    if text is not None:
        m = _HOURS_RE.match(text)
        if m is None or int(m[1]) > 23 or int(m[3]) > 24 or int(m[2]) > 59 or int(m[4]) > 59:
            raise t.error("hours", f"expected 'HH:MM-HH:MM' (local time), got {text!r}")
        start, end = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
        if start == end or end > 1440:
            raise t.error("hours", f"the window {text!r} is empty or past 24:00")
        hours = (start, end)
    reason = t.text("reason", "")
    return Rule(t.data["name"], effect, principals, actions, resources,
                {str(k): v for k, v in labels.items()}, link, hours, reason)


def _limit(t: Table, device: str) -> Limit:
    principals = _principals(t)
    actions = _actions(t)
    resources = _resources(t, device)
    rate = t.number("rate", None, lo=0.001, hi=1e9, unit="per second")
    burst = t.integer("burst", None, lo=1, hi=10**9)
    qm = t.integer("quota_messages", None, lo=1, hi=10**15)
    qb = t.integer("quota_bytes", None, lo=1, hi=10**18, unit="bytes")
    window = t.number("window", 60.0, lo=0.01, hi=86400 * 31, unit="s")
    if rate is None and qm is None and qb is None:
        raise t.error(None, "a limit needs rate, quota_messages or quota_bytes")
    if burst is not None and rate is None:
        raise t.error("burst", "burst needs a rate")
    return Limit(t.data["name"], principals, actions, resources, rate,
                 burst if burst is not None else max(1, math.ceil(rate or 1)), qm, qb, window)
