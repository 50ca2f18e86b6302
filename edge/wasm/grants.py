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

#: A concrete subject: non-empty tokens without whitespace, ``*`` or ``>``; ``\Z`` because ``$``
#: would also accept a final newline (nats-py then refuses the publish after the call).
SUBJECT_RE = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*\Z")
#: A component's KV key: 1-128 bytes of ``[A-Za-z0-9_.-]`` whose dots separate non-empty tokens.
#: The bucket stores it under the subject ``$KV.<bucket>.<component>.<key>``, where an empty token
#: (``a..b``, ``x.``, ``.x``) makes an invalid subject that JetStream refuses after the call.
#: ``\Z`` as in SUBJECT_RE.
KV_KEY_RE = re.compile(r"^(?=.{1,128}\Z)[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")


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
