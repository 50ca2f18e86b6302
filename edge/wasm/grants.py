"""What a component may do, as one set of rules both sides of the sandbox apply.

The worker checks a component's ``publish`` and ``kv_put`` calls while it runs (to answer the
component with the right return code); the runtime checks every effect a worker reports again
with the same rules (:mod:`edge.wasm.effects`), because the worker runs hostile code and its
own check proves nothing. An intact worker never reports an effect these rules refuse.
"""

from __future__ import annotations

import re

from edge.nats.subjects import subject_matches
from edge.wasm.abi import KV_MAX_KEY, KV_MAX_VALUE, PUBLISH_MAX_BYTES, SUBJECT_MAX_BYTES

#: Cached grant decisions per component.
GRANT_CACHE_MAX = 1024

SUBJECT_RE = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")
KV_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class PublishGrant:
    """The subjects one component may publish to (its manifest's ``run.publish``), cached."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        self._cache: dict[str, bool] = {}

    def valid(self, subject: str) -> bool:
        """True if ``subject`` is a concrete NATS subject (no wildcard, no empty token)."""
        return len(subject.encode()) <= SUBJECT_MAX_BYTES and bool(SUBJECT_RE.match(subject))

    def allows(self, subject: str) -> bool:
        """True if ``subject`` is valid and matches one of the patterns."""
        ok = self._cache.get(subject)
        if ok is None:
            ok = self.valid(subject) and any(subject_matches(p, subject) for p in self.patterns)
            if len(self._cache) >= GRANT_CACHE_MAX:
                self._cache.clear()
            self._cache[subject] = ok
        return ok

    def allows_message(self, subject: str, data: bytes) -> bool:
        """True if a publish of ``data`` to ``subject`` is granted and within the size limit."""
        return len(data) <= PUBLISH_MAX_BYTES and self.allows(subject)


def kv_put_allowed(key: str, value: bytes) -> bool:
    """True if ``kv_put(key, value)`` is within the KV limits of the ABI."""
    return (len(key.encode()) <= KV_MAX_KEY and len(value) <= KV_MAX_VALUE
            and bool(KV_KEY_RE.match(key)))
