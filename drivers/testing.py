"""An in-memory :class:`~drivers.base.DriverContext` for unit tests and tools.

``RecordingContext`` records every component update and publish, merges updates into a dict of
component state, and delivers injected messages to subscribers (NATS-style ``*`` / ``>`` wildcards),
so a test can send a command and read the ack without a NATS server.

Example
    ctx = RecordingContext("dev1")
    await driver.start(ctx)
    ack = await ctx.command("drone1", "arm", {})
    assert ack["ok"]
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from drivers.base import Handler, Unsubscribe, Value, ack_subject, cmd_subject
from edge.nats.subjects import subject_matches

DEFAULT_WAIT_S = 5.0  # seconds


@dataclass(frozen=True, slots=True)
class Update:
    entity: str
    component: str
    values: dict[str, Value]
    t: float


@dataclass(frozen=True, slots=True)
class Published:
    subject: str
    payload: bytes
    t: float

    def json(self) -> Any:
        return json.loads(self.payload)


class RecordingContext:
    """Records updates and publishes; ``state[(entity, component)]`` is the merged component."""

    def __init__(self, device: str = "dev1", *, keep: int | None = None) -> None:
        self.device = device
        self.updates: list[Update] = []
        self.published: list[Published] = []
        self.state: dict[tuple[str, str], dict[str, Value]] = {}
        self.update_count = 0
        self.publish_count = 0
        self._keep = keep
        self._subs: dict[int, tuple[str, Handler]] = {}
        self._next_sid = 0
        self._changed: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # ----- DriverContext ---------------------------------------------------------------------------
    def update(self, entity: str, component: str, values: Mapping[str, Value]) -> None:
        self.update_count += 1
        self.state.setdefault((entity, component), {}).update(values)
        if self._keep is None or len(self.updates) < self._keep:
            self.updates.append(Update(entity, component, dict(values), time.monotonic()))
        self._notify()

    async def publish(self, subject: str, payload: bytes) -> None:
        self.publish_count += 1
        if self._keep is None or len(self.published) < self._keep:
            self.published.append(Published(subject, bytes(payload), time.monotonic()))
        for pattern, handler in list(self._subs.values()):
            if subject_matches(pattern, subject):
                await handler(subject, payload)
        self._notify()

    async def subscribe(self, subject: str, handler: Handler) -> Unsubscribe:
        sid = self._next_sid
        self._next_sid += 1
        self._subs[sid] = (subject, handler)

        async def unsubscribe() -> None:
            self._subs.pop(sid, None)

        return unsubscribe

    # ----- test helpers ----------------------------------------------------------------------------
    @property
    def subscriptions(self) -> list[str]:
        return [p for p, _ in self._subs.values()]

    async def inject(self, subject: str, payload: bytes) -> int:
        """Deliver a message to matching subscribers (as if it came from NATS); returns how many."""
        n = 0
        for pattern, handler in list(self._subs.values()):
            if subject_matches(pattern, subject):
                await handler(subject, payload)
                n += 1
        return n

    async def command(
        self, entity: str, verb: str, args: Mapping[str, Any], *, timeout: float = DEFAULT_WAIT_S
    ) -> dict[str, Any]:
        """Send a command and wait for its ack; returns the decoded ack."""
        ack_subj = ack_subject(self.device, entity, verb)
        start = len(self.published)
        delivered = await self.inject(cmd_subject(self.device, entity, verb), json.dumps(args).encode())
        if delivered == 0:
            raise LookupError(f"nobody subscribes to commands {verb!r} for {entity!r}")
        msg = await self.wait_published(ack_subj, timeout=timeout, after=start)
        result: dict[str, Any] = msg.json()
        return result

    def published_on(self, subject: str) -> list[Published]:
        return [p for p in self.published if subject_matches(subject, p.subject)]

    def component(self, entity: str, component: str) -> dict[str, Value]:
        return self.state.get((entity, component), {})

    async def wait_for(self, predicate: Callable[[], bool], *, timeout: float = DEFAULT_WAIT_S) -> None:
        """Wait until ``predicate()`` is true; re-checked after each update or publish."""
        async def loop() -> None:
            ev = self._event()
            while not predicate():
                ev.clear()
                try:
                    await asyncio.wait_for(ev.wait(), 0.05)
                except TimeoutError:
                    pass

        await asyncio.wait_for(loop(), timeout)

    async def wait_published(
        self, subject: str, *, timeout: float = DEFAULT_WAIT_S, after: int = 0
    ) -> Published:
        """Wait for a publish on ``subject`` (wildcards allowed) at index ``after`` or later."""
        found: list[Published] = []

        def check() -> bool:
            for p in self.published[after:]:
                if subject_matches(subject, p.subject):
                    found.append(p)
                    return True
            return False

        await self.wait_for(check, timeout=timeout)
        return found[0]
