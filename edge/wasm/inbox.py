"""A component's inbox: NATS messages in, batches of equal hop count out, its own filtered.

:class:`ComponentInbox` stands between a component's subscriptions and
:meth:`~edge.wasm.pool.SandboxPool.deliver`. For each message it reads the origin headers
(:mod:`edge.wasm.origin`): a message the component published itself (its ``origin``,
``<component>@<device>``) is dropped (counted as ``own``) unless the manifest sets ``run.receive_own``; one with a malformed ``Edge-Hops`` header
is dropped and counted (``malformed``); one on a subject of NATS's own plumbing (``$JS``,
``$SYS``, ``$SRV``, ``$O``, ``_INBOX``) or of the components' private KV bucket is never delivered
(counted as ``internal``; :data:`INTERNAL_PREFIXES`). The rest wait in a bounded queue (``INBOX_LIMIT``; the
overflow is dropped and counted) and are handed over in order, in batches of at most
``MAX_BATCH`` messages that all have the same hop count, so what a handler publishes is
charged the hops of the messages it handled, not those of an unrelated neighbour in the batch.

Every message received is counted in exactly one place: ``received == delivered + dropped + own
+ malformed + internal + undelivered + queued + in_flight`` (``undelivered``: the messages of a
delivery that failed, counted in ``errors`` by batch, or that a stop cut short).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from edge.tasks import cancel_and_wait
from edge.wasm.origin import MalformedHeader, read_origin
from edge.world.scheduler import INBOX_LIMIT, MAX_BATCH

log = logging.getLogger("edge.wasm.inbox")

#: The components' private key-value bucket (its subjects are never delivered: see below).
COMPONENT_KV_BUCKET = "edge-components"
#: Subjects of NATS's own plumbing (JetStream API and acks, object stores, system, services,
#: request reply inboxes) and the components' private key-value writes: a grant of ``>``
#: matches them, but delivering them would show a component the runtime's JetStream traffic and
#: other components' private values, and let it loop through the consumers that read its echoes.
#: Entity state (``$KV.edge-state.>``) stays deliverable: it is the device's public world.
INTERNAL_PREFIXES = ("$JS.", "$SYS.", "$SRV.", "$O.", f"$KV.{COMPONENT_KV_BUCKET}.", "_INBOX.")

#: Hands a batch of ``(subject, payload)`` and its hop count to the component.
DeliverHops = Callable[[list[tuple[str, bytes]], int], Awaitable[None]]


class ComponentInbox:
    """The bounded inbox of one component (see the module docstring)."""

    def __init__(self, name: str, deliver: DeliverHops, *, origin: str | None = None,
                 receive_own: bool = False, limit: int = INBOX_LIMIT,
                 max_batch: int = MAX_BATCH) -> None:
        self.name = name
        self.origin = origin if origin is not None else name  # its own Edge-Component value
        self.receive_own = receive_own
        self._deliver = deliver
        self._inbox: deque[tuple[str, bytes, int]] = deque()
        self._limit = limit
        self._max_batch = max_batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.received = 0
        self.delivered = 0
        self.dropped = 0  # the inbox was full
        self.own = 0  # the component's own messages, not delivered
        self.malformed = 0  # a malformed Edge-Hops header
        self.internal = 0  # JetStream API, acks, KV/object store, system, reply inboxes: never delivered
        self.errors = 0  # deliveries (batches) that failed
        self.undelivered = 0  # messages of those, and of a delivery a stop cut short
        self._in_flight = 0  # messages of the delivery under way

    def put(self, subject: str, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        """Queue one received message (or drop and count it)."""
        self.received += 1
        if subject.startswith(INTERNAL_PREFIXES):
            self.internal += 1  # the runtime's own NATS plumbing is never a component's input
            return
        try:
            origin, hops = read_origin(headers)
        except MalformedHeader as err:
            self.malformed += 1
            if self.malformed == 1 or self.malformed % 1000 == 0:
                log.warning("component '%s': message on %s dropped: %s (%d so far)", self.name,
                            subject[:80], err, self.malformed)
            return
        if origin == self.origin and not self.receive_own:
            self.own += 1
            return
        if len(self._inbox) >= self._limit:
            self.dropped += 1
            return
        self._inbox.append((subject, data, hops))
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"edge.inbox.{self.name}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def _batch(self) -> tuple[list[tuple[str, bytes]], int]:
        inbox = self._inbox
        hops = inbox[0][2]
        batch: list[tuple[str, bytes]] = []
        while inbox and len(batch) < self._max_batch and inbox[0][2] == hops:
            subject, data, _ = inbox.popleft()
            batch.append((subject, data))
        return batch, hops

    async def _run(self) -> None:
        while True:
            if not self._inbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, hops = self._batch()
            self._in_flight = len(batch)
            try:
                await self._deliver(batch, hops)
                self.delivered += len(batch)
            except asyncio.CancelledError:
                self.undelivered += len(batch)  # the stop: whether the worker got them is unknown
                raise
            except Exception as err:  # noqa: BLE001  the inbox keeps serving
                self.errors += 1
                self.undelivered += len(batch)
                log.warning("delivery to %s failed (%d messages dropped): %s", self.name,
                            len(batch), err)
            finally:
                self._in_flight = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "own": self.own,
            "malformed": self.malformed,
            "internal": self.internal,
            "errors": self.errors,
            "undelivered": self.undelivered,
            "queued": len(self._inbox),
            "in_flight": self._in_flight,
        }
