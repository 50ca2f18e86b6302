"""An in-memory :class:`~drivers.base.DriverContext` for unit tests and tools.

``RecordingContext`` records every component update and publish, merges updates into a dict of
component state, delivers injected messages to subscribers (NATS-style ``*`` / ``>`` wildcards)
and serves commands the way :meth:`~drivers.base.DriverContext.serve` promises, so a test can send
a command and read its answer without a NATS server. The answer is the driver-level one
(``{"ok": true, **fields}`` or ``{"ok": false, "error": ...}``, also published on the ack subject);
the runtime's router adds a command id and a reason to it.

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

from drivers.base import CommandHandler, Handler, Unsubscribe, Value, encode_json
from edge.nats import subjects
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
        self._served: dict[tuple[str, str], CommandHandler] = {}
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

    async def serve(self, entity: str, verb: str, handler: CommandHandler) -> Unsubscribe:
        key = (entity, verb)
        if key in self._served:
            raise ValueError(f"command {verb!r} for {entity!r} is already served")
        self._served[key] = handler

        async def unserve() -> None:
            if self._served.get(key) is handler:
                del self._served[key]

        return unserve

    async def _answer(self, entity: str, verb: str, payload: bytes, timeout: float) -> dict[str, Any]:
        """Run the served handler on ``payload``; publish and return the answer."""
        handler = self._served[(entity, verb)]
        try:
            args = json.loads(payload) if payload.strip() else {}
            if not isinstance(args, dict):
                raise TypeError("command payload must be a JSON object")
        except ValueError as exc:
            ack: dict[str, Any] = {"ok": False, "error": f"command payload is not JSON: {exc}"}
        except TypeError as exc:
            ack = {"ok": False, "error": str(exc)}
        else:
            limit = asyncio.timeout(timeout)
            try:
                async with limit:
                    ack = {"ok": True, **await handler(args)}
            except TimeoutError as exc:
                late = limit.expired()  # ours, or the handler's own timeout
                ack = {"ok": False, "error": f"the handler did not answer within {timeout:g} s" if late else str(exc)}
            except Exception as exc:  # noqa: BLE001 - a refusal is an answer
                ack = {"ok": False, "error": str(exc)}
        await self.publish(subjects.ack(self.device, entity, verb), encode_json(ack))
        return ack

    # ----- test helpers ----------------------------------------------------------------------------
    @property
    def subscriptions(self) -> list[str]:
        """Subscribed patterns and served command subjects."""
        return [p for p, _ in self._subs.values()] + [subjects.command(self.device, e, v) for e, v in self._served]

    async def inject(self, subject: str, payload: bytes) -> int:
        """Deliver a message to matching subscribers and to the served command of ``subject`` (as
        if it came from NATS); returns how many received it."""
        n = 0
        parts = subject.split(".")
        if len(parts) == 5 and parts[:3] == ["edge", self.device, "cmd"] and (parts[3], parts[4]) in self._served:
            await self._answer(parts[3], parts[4], payload, DEFAULT_WAIT_S)
            n += 1
        for pattern, handler in list(self._subs.values()):
            if subject_matches(pattern, subject):
                await handler(subject, payload)
                n += 1
        return n

    async def command(
        self, entity: str, verb: str, args: Mapping[str, Any], *, timeout: float = DEFAULT_WAIT_S
    ) -> dict[str, Any]:
        """Send a command and return its answer (also published on the ack subject)."""
        if (entity, verb) not in self._served:
            raise LookupError(f"nobody serves command {verb!r} for {entity!r}")
        return await self._answer(entity, verb, json.dumps(args).encode(), timeout)

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
