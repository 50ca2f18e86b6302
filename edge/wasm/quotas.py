"""Per-component quotas over time and space: a publish rate and a KV store size.

* :class:`TokenBucket`: the publish rate limit (``limits.publish_rate`` messages a second,
  ``limits.publish_burst`` at once), applied by the runtime when a reply's publishes are queued
  (:mod:`edge.wasm.effects`): what does not fit is dropped and counted.
* :class:`KvUsage`: the keys and bytes a component stores (``limits.kv_keys``,
  ``limits.kv_bytes``), counted from its KV snapshot at load and updated by every put. The
  worker applies it to answer ``kv_put`` (-2 over quota) and the runtime applies it again to
  every put a worker reports (an intact worker never reports a put over its quota).

A key's size is the bytes of its name plus its value (the name is stored in the bucket too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: Default number of keys a component may store (``limits.kv_keys``).
DEFAULT_KV_KEYS = 1000
#: Default bytes (key names + values) a component may store (``limits.kv_bytes``).
DEFAULT_KV_BYTES = 2**20


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, n: int, now: float) -> int:
        """Take up to ``n`` tokens at time ``now`` (seconds); returns how many were taken."""
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        k = min(n, int(self.tokens))
        self.tokens -= k
        return k


def kv_entry_bytes(key: str, value: bytes) -> int:
    """Bytes one key counts against ``limits.kv_bytes``: its name (UTF-8) and its value."""
    return len(key.encode()) + len(value)


class KvUsage:
    """The keys and bytes one component stores, against its quota.

    A put is refused when it would take the component past ``max_keys`` keys or ``max_bytes``
    bytes; a put that does not grow the usage (an existing key overwritten with a value no
    larger) is always allowed, so a component whose stored state is already past a lowered
    quota can still shrink it.
    """

    __slots__ = ("bytes", "keys", "max_bytes", "max_keys")

    def __init__(self, max_keys: int, max_bytes: int) -> None:
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self.keys = 0
        self.bytes = 0

    @classmethod
    def of(cls, kv: Mapping[str, bytes], max_keys: int, max_bytes: int) -> KvUsage:
        """The usage of an existing store (a component's snapshot at load)."""
        usage = cls(max_keys, max_bytes)
        usage.keys = len(kv)
        usage.bytes = sum(kv_entry_bytes(k, v) for k, v in kv.items())
        return usage

    def allows(self, key: str, value: bytes, old: bytes | None) -> bool:
        """True if ``key = value`` fits; ``old`` is the key's current value (None: a new key)."""
        size = kv_entry_bytes(key, value)
        if old is None:
            return self.keys + 1 <= self.max_keys and self.bytes + size <= self.max_bytes
        grow = len(value) - len(old)
        return grow <= 0 or self.bytes + grow <= self.max_bytes

    def put(self, key: str, value: bytes, old: bytes | None) -> None:
        """Account for ``key = value`` (checked with :meth:`allows` first)."""
        if old is None:
            self.keys += 1
            self.bytes += kv_entry_bytes(key, value)
        else:
            self.bytes += len(value) - len(old)

    def check_all(self, kv: Mapping[str, bytes], puts: Iterable[tuple[str, bytes]]) -> bool:
        """True if every put of ``puts``, in order, fits on top of the store ``kv`` (nothing is
        changed: this is the runtime's check of a reply before its effects run)."""
        keys, size = self.keys, self.bytes
        seen: dict[str, bytes] = {}
        for key, value in puts:
            old = seen.get(key, kv.get(key))
            if old is None:
                keys += 1
                size += kv_entry_bytes(key, value)
                if keys > self.max_keys or size > self.max_bytes:
                    return False
            else:
                grow = len(value) - len(old)
                size += grow
                if grow > 0 and size > self.max_bytes:
                    return False
            seen[key] = value
        return True

    def to_dict(self) -> dict[str, int]:
        return {"keys": self.keys, "bytes": self.bytes, "max_keys": self.max_keys,
                "max_bytes": self.max_bytes}
