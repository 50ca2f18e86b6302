"""The meter: usage per principal, and the state of the limits (token buckets, quotas).

Key components
- :class:`Usage`: one principal's counters: messages, bytes, gas, inference seconds, KV writes,
  commands, tool calls, denied.
- :class:`Meter`: principal -> :class:`Usage`, bounded (:data:`MAX_PRINCIPALS`; past it, usage is
  counted under ``other:*``, so fuzzed names cannot grow memory); :meth:`Meter.interval` returns
  what changed since the last call (the usage records).
- :class:`LimitState`: one limit's state for one principal: a token bucket
  (:class:`~edge.wasm.quotas.TokenBucket`) and a fixed-window quota of messages and bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge.policy.rules import Limit
from edge.wasm.quotas import TokenBucket

#: Principals metered one by one; more are counted together under OVERFLOW.
MAX_PRINCIPALS = 1024
OVERFLOW = ("other", "*")
#: Where a principal whose id is longer than any valid id is counted (it is always denied).
INVALID = ("invalid", "*")
MAX_ID = 64
FIELDS = ("messages", "bytes", "gas", "infer_s", "kv_writes", "commands", "calls", "denied")


class Usage:
    __slots__ = FIELDS

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.gas = 0
        self.infer_s = 0.0
        self.kv_writes = 0
        self.commands = 0
        self.calls = 0
        self.denied = 0

    def to_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in FIELDS}
        out["infer_s"] = round(self.infer_s, 6)
        return out


class Meter:
    """Usage per principal (``(kind, id)``)."""

    def __init__(self, max_principals: int = MAX_PRINCIPALS) -> None:
        self.max_principals = max_principals
        self.usage: dict[tuple[str, str], Usage] = {}
        self._last: dict[tuple[str, str], dict[str, Any]] = {}

    def of(self, kind: str, pid: str) -> Usage:
        key = (kind, pid) if len(pid) <= MAX_ID and len(kind) <= MAX_ID else INVALID
        u = self.usage.get(key)
        if u is None:
            if len(self.usage) >= self.max_principals:
                key = OVERFLOW
                u = self.usage.get(key)
                if u is not None:
                    return u
            u = self.usage[key] = Usage()
        return u

    def top(self, by: str, n: int = 10) -> list[dict[str, Any]]:
        rows = sorted(self.usage.items(), key=lambda kv: getattr(kv[1], by), reverse=True)[:n]
        return [{"principal": f"{k}:{i}", **u.to_dict()} for (k, i), u in rows]

    def interval(self) -> list[dict[str, Any]]:
        """Per principal, what changed since the last call (principals with no change omitted)."""
        out = []
        for (kind, pid), u in self.usage.items():
            now = u.to_dict()
            last = self._last.get((kind, pid))
            delta = {f: (now[f] - last[f]) if last else now[f] for f in FIELDS}
            if any(delta.values()):
                delta["infer_s"] = round(delta["infer_s"], 6)
                out.append({"principal": f"{kind}:{pid}", **delta})
            self._last[(kind, pid)] = now
        return out


@dataclass(slots=True)
class LimitState:
    """One limit for one principal."""

    limit: Limit
    bucket: TokenBucket | None
    window_start: float
    messages: int = 0
    bytes: int = 0

    @classmethod
    def new(cls, limit: Limit, now: float) -> LimitState:
        bucket = TokenBucket(limit.rate, limit.burst, now) if limit.rate is not None else None
        return cls(limit, bucket, now)

    def take(self, size: int, now: float) -> str | None:
        """Count one message of ``size`` bytes; the reason it is over the limit, or None."""
        lim = self.limit
        if lim.quota_messages is not None or lim.quota_bytes is not None:
            if now - self.window_start >= lim.window:
                self.window_start, self.messages, self.bytes = now, 0, 0
            if lim.quota_messages is not None and self.messages + 1 > lim.quota_messages:
                return (f"quota of {lim.quota_messages} messages per {lim.window:g} s used "
                        f"(limit '{lim.name}')")
            if lim.quota_bytes is not None and self.bytes + size > lim.quota_bytes:
                return f"quota of {lim.quota_bytes} bytes per {lim.window:g} s used (limit '{lim.name}')"
        if self.bucket is not None and self.bucket.take(1, now) < 1:
            return f"rate limit of {lim.rate:g} a second (burst {lim.burst}) exceeded (limit '{lim.name}')"
        self.messages += 1
        self.bytes += size
        return None

    def to_dict(self) -> dict[str, Any]:
        lim = self.limit
        out: dict[str, Any] = {"limit": lim.name, "messages": self.messages, "bytes": self.bytes}
        if lim.quota_messages is not None:
            out["quota_messages"] = lim.quota_messages
        if lim.quota_bytes is not None:
            out["quota_bytes"] = lim.quota_bytes
        if self.bucket is not None:
            out["tokens"] = round(self.bucket.tokens, 2)
            out["rate"] = lim.rate
        return out
