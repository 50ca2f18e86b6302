"""The device's acknowledged outbox and its best-effort telemetry path.

Key components

* :class:`EventPublisher` - the one path for everything that must not be lost silently (device
  events, detections, command answers, decisions). ``emit()`` is synchronous and never blocks:
  it puts the message in a bounded in-memory outbox; a background task publishes it with a
  ``Nats-Msg-Id`` header and a reply subject on its own inbox (the JetStream pub-ack protocol;
  acks parsed into nats-py's ``PubAck``/``APIError``), keeps up to ``max_in_flight`` acks
  outstanding, and resends with the *same* id (the stream's duplicate window stores it once)
  until the stream acknowledges it, across a server restart, JetStream being unavailable, no
  responders and lost acks, with a bounded backoff. A message the stream definitively refuses is
  counted as ``rejected`` with its reason; a message that does not fit the outbox is counted as
  ``dropped``. Nothing is lost without a counter.
* :class:`TelemetryPublisher` - best-effort core publishes (captured by the ``TELE`` stream),
  dropped and counted while the client is disconnected or its write buffer is over a bound.

Example::

    events = EventPublisher(nc, device="dev1")
    await events.start()
    events.emit("edge.dev1.evt.geofence", body)             # returns at once
    events.emit("edge.dev1.ack.c42", result, msg_id="result-c42")
    await events.stop(timeout=5.0)                          # flush, count what is left
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck
from nats.js.errors import APIError, NotFoundError

from edge.errors import NatsError
from edge.nats.publisher import (
    DEFAULT_EVENT_ACK_TIMEOUT_S,
    DEFAULT_EVENT_MAX_IN_FLIGHT,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_STOP_TIMEOUT_S,
    DEFAULT_TELEMETRY_MAX_BUFFER_BYTES,
    Downsampler,
    FINAL_ERR_CODES,
    MSG_ID_HEADER,
    NO_STREAM_REASON,
    RETRY_BACKOFF_MAX_S,
    RETRY_BACKOFF_MIN_S,
    SEND_TICK_S,
    STATUS_HEADER,
    STREAM_LOOKUP_CACHE_S,
    STREAM_LOOKUP_TIMEOUT_S,
    _parse_ack,
)

log = logging.getLogger("edge.nats.outbox")


@dataclass(slots=True, eq=False)
class _Event:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    msg_id: str
    attempts: int = 0
    sent_at: float = 0.0


def _is_transient(err: APIError) -> bool:
    """JetStream answered but could not take the message now (restarting, no leader, ...)."""
    return err.code == 503 and err.err_code not in FINAL_ERR_CODES


def _check_subject(subject: str) -> None:
    if (
        not subject
        or any(c in subject for c in " \t\r\n")
        or ".." in subject
        or subject[0] == "."
        or subject[-1] == "."
    ):
        raise ValueError(f"Cannot publish on {subject!r}: a subject is dot-separated tokens without spaces.")


class EventPublisher:
    """The device's acknowledged JetStream outbox. See the module docstring.

    ``emit()`` never blocks and never raises for a full outbox. The outbox holds every message
    emitted and not yet acknowledged or rejected (queued or in flight); when it holds
    ``max_pending`` messages or ``max_pending_bytes`` payload bytes, the *new* message is dropped
    and counted (``dropped``): what was emitted first (typically the fault that started an
    outage) is kept, nothing already sent is withdrawn, and the stream's own ``EVT`` policy
    (``discard=new``) is the same. Message ids are ``<device>-<boot id>-<n>`` (``n`` counts every
    emit, dropped ones too, so a gap in ``n`` on the hub is a drop) unless the caller passes
    ``msg_id``; the boot id is random per instance unless given, so a restarted process never
    reuses an id inside the stream's duplicate window.

    Retries: a message is resent (same id) when its ack does not come within ``ack_timeout_s``,
    after the client reconnects (everything in flight, in the original order, before anything
    new), on no responders while a stream for the subject exists or JetStream does not answer,
    and on a 503 pub-ack error other than :data:`FINAL_ERR_CODES`. After a failure, sending
    pauses for a backoff from :data:`RETRY_BACKOFF_MIN_S` doubling to ``backoff_max_s``.
    Resends go before new messages, so order per subject holds except around a rejection or a
    no-responders check. Rejected (final, counted with the reason, never retried): no stream
    captures the subject (checked with ``STREAM.NAMES`` after a no-responders reply), any other
    pub-ack error (``maximum bytes exceeded`` of a full ``discard=new`` stream, ...), a payload
    over the server's ``max_payload``.
    """

    def __init__(
        self,
        nc: NATS,
        *,
        device: str = "edge",
        boot_id: str | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_in_flight: int = DEFAULT_EVENT_MAX_IN_FLIGHT,
        ack_timeout_s: float = DEFAULT_EVENT_ACK_TIMEOUT_S,
        backoff_max_s: float = RETRY_BACKOFF_MAX_S,
    ) -> None:
        for name, value in (
            ("max_pending", max_pending),
            ("max_pending_bytes", max_pending_bytes),
            ("max_in_flight", max_in_flight),
            ("ack_timeout_s", ack_timeout_s),
            ("backoff_max_s", backoff_max_s),
        ):
            if value <= 0:
                raise ValueError(f"EventPublisher {name} must be positive, not {value!r}.")
        self.nc = nc
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.max_in_flight = max_in_flight
        self.ack_timeout_s = ack_timeout_s
        self.backoff_max_s = backoff_max_s
        self.id_prefix = f"{device}-{boot_id or secrets.token_hex(6)}"
        self._js = nc.jetstream(timeout=STREAM_LOOKUP_TIMEOUT_S)
        self._inbox = ""
        self._sub: Subscription | None = None
        self._seq = 0
        self._waiting: deque[_Event] = deque()  # never sent, in emit order
        self._retry: list[tuple[int, _Event]] = []  # heap by emit order: resent before new ones
        self._check: list[_Event] = []  # no responders: is there a stream for the subject?
        self._in_flight: dict[int, _Event] = {}  # in send order
        self._pending = 0
        self._pending_bytes = 0
        self._counts = Counter(
            {k: 0 for k in ("emitted", "acked", "retried", "dropped", "rejected", "duplicates")}
        )
        self._rejections: Counter[str] = Counter()
        self._lookups: dict[str, tuple[float, bool | None]] = {}
        self._backoff = RETRY_BACKOFF_MIN_S
        self._backoff_until = 0.0
        self._reconnects = 0
        self._dropping = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- public API ----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the sender task (idempotent). Messages emitted before are kept and sent now."""
        if self._closed:
            raise NatsError("This EventPublisher was stopped; create a new one.")
        if self._task is None:
            self._reconnects = int(self.nc.stats.get("reconnects", 0))
            self._task = asyncio.create_task(self._run(), name="edge-nats-events")
            log.info("event publisher %s started", self.id_prefix)

    def emit(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Queue one message for acknowledged delivery; returns at once.

        A full outbox or a stopped publisher drops the message and counts it (``dropped``).
        Raises ``ValueError`` only for a malformed subject (a programming error). Call it from
        the event loop's thread (from a worker thread: ``loop.call_soon_threadsafe(pub.emit, ...)``).
        """
        _check_subject(subject)
        self._seq += 1
        self._counts["emitted"] += 1
        size = len(data)
        if (
            self._closed
            or self._pending >= self.max_pending
            or self._pending_bytes + size > self.max_pending_bytes
        ):
            self._counts["dropped"] += 1
            if not self._dropping:
                self._dropping = True
                log.warning(
                    "event outbox %s: dropping new messages (%d pending, %d bytes, stopped=%s); counted",
                    "closed" if self._closed else "full",
                    self._pending,
                    self._pending_bytes,
                    self._closed,
                )
            return
        if self._dropping:
            self._dropping = False
            log.warning("event outbox accepts messages again; %d dropped so far", self._counts["dropped"])
        mid = msg_id or f"{self.id_prefix}-{self._seq}"
        hdrs = {**headers, MSG_ID_HEADER: mid} if headers else {MSG_ID_HEADER: mid}
        self._waiting.append(_Event(self._seq, subject, bytes(data), hdrs, mid))
        self._pending += 1
        self._pending_bytes += size
        self._idle.clear()
        self._wake.set()

    async def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until nothing is queued or in flight; True if so."""
        if self._pending and self._task is None:
            raise NatsError("Call EventPublisher.start() before flush(): nothing is being sent.")
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Flush for up to ``timeout`` seconds, then stop; what is left is counted as dropped.

        Messages still in flight at that point may have been stored (their ack never came); they
        are counted as dropped all the same: the count is an upper bound of what was lost.
        """
        if self._task is not None and not self._closed:
            await self.flush(timeout)
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        left = self._pending
        self._waiting.clear()
        self._retry.clear()
        self._check.clear()
        self._in_flight.clear()
        self._pending = self._pending_bytes = 0
        self._idle.set()
        if left:
            self._counts["dropped"] += left
            log.warning(
                "event publisher %s stopped with %d messages unacknowledged: counted as dropped",
                self.id_prefix,
                left,
            )
        log.info("event publisher %s stopped: %s", self.id_prefix, self.status())

    def status(self) -> dict[str, int]:
        """Counters: emitted, queued (waiting to be sent or resent), in_flight, pending_bytes,
        acked, retried (resends), dropped (outbox full, emitted after stop, or left at stop),
        rejected (refused for good; reasons in :attr:`rejections`), duplicates (acks the stream
        marked duplicate: an earlier attempt or an earlier use of the caller's msg_id stored it)."""
        return {
            "emitted": self._counts["emitted"],
            "queued": len(self._waiting) + len(self._retry) + len(self._check),
            "in_flight": len(self._in_flight),
            "pending_bytes": self._pending_bytes,
            "acked": self._counts["acked"],
            "retried": self._counts["retried"],
            "dropped": self._counts["dropped"],
            "rejected": self._counts["rejected"],
            "duplicates": self._counts["duplicates"],
        }

    @property
    def rejections(self) -> dict[str, int]:
        """Rejected messages per reason (the stream's description, or :data:`NO_STREAM_REASON`)."""
        return dict(self._rejections)

    # -- internals ------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                if self.nc.is_connected:
                    n = int(self.nc.stats.get("reconnects", 0))
                    if n != self._reconnects:
                        self._reconnects = n
                        self._requeue_in_flight()  # acks of the old connection will not come
                        self._backoff_until = 0.0
                    self._expire(time.monotonic())
                    if self._check:
                        await self._check_streams()
                    await self._send_some()
            except Exception:  # noqa: BLE001 - the sender must not die; nothing is dropped
                log.exception("event publisher: sender error; continuing")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), SEND_TICK_S)

    def _next(self) -> _Event | None:
        if self._retry:
            return heapq.heappop(self._retry)[1]
        if self._waiting:
            return self._waiting.popleft()
        return None

    def _requeue(self, ev: _Event) -> None:
        heapq.heappush(self._retry, (ev.seq, ev))

    async def _send_some(self) -> None:
        while len(self._in_flight) < self.max_in_flight and self.nc.is_connected:
            if time.monotonic() < self._backoff_until:
                return
            ev = self._next()
            if ev is None:
                return
            if len(ev.data) > self.nc.max_payload:
                self._reject(ev, f"payload of {len(ev.data)} bytes is over the server's max_payload")
                continue
            ev.attempts += 1
            if ev.attempts > 1:
                self._counts["retried"] += 1
            ev.sent_at = time.monotonic()
            self._in_flight[ev.seq] = ev
            try:
                if self._sub is None:
                    self._inbox = self.nc.new_inbox()
                    self._sub = await self.nc.subscribe(self._inbox + ".*", cb=self._on_reply)
                await self.nc.publish(
                    ev.subject, ev.data, reply=f"{self._inbox}.{ev.seq}", headers=ev.headers
                )
            except Exception as exc:  # noqa: BLE001 - connection trouble: keep it, try again later
                log.debug("event %s not sent (%r); will retry", ev.msg_id, exc)
                if self._in_flight.pop(ev.seq, None) is ev:
                    self._requeue(ev)
                self._failed()
                return

    async def _on_reply(self, msg: Msg) -> None:
        """A pub ack (or error) for the message with the emit number in the reply subject.

        Own inbox rather than ``JetStreamContext.publish_async``: in nats-py 2.16 a pub-ack *error*
        leaves that future pending forever (nats-io/nats.py#985), so a refusal would look like a
        lost ack and be retried forever. Acks are nats-py's ``PubAck``, errors its ``APIError``.
        A late ack of an earlier attempt counts as well: every attempt carries the same id.
        """
        try:
            ev = self._in_flight.get(int(msg.subject.rsplit(".", 1)[-1]))
        except ValueError:
            return
        if ev is None:
            return  # resolved already, or requeued: the resend's ack will count
        del self._in_flight[ev.seq]
        self._wake.set()
        if msg.headers and msg.headers.get(STATUS_HEADER) == "503":
            self._check.append(ev)  # no responders: a stream lookup decides (see _check_streams)
            return
        data = msg.data
        ack = _parse_ack(data) if b'"error"' not in data else None
        if ack is None:
            try:
                resp = json.loads(data)
                err = resp.get("error")
                if err:
                    fields = {k: err.get(k) for k in ("code", "err_code", "description")}
                    self._on_error(ev, APIError(**fields))
                    return
                ack = PubAck.from_response(resp)
            except (ValueError, TypeError, AttributeError) as exc:
                self._on_error(ev, exc)
                return
        self._counts["acked"] += 1
        if ack.duplicate:
            self._counts["duplicates"] += 1
        self._backoff = RETRY_BACKOFF_MIN_S
        self._resolved(ev)

    def _on_error(self, ev: _Event, exc: Exception) -> None:
        if isinstance(exc, APIError) and not _is_transient(exc):
            self._reject(ev, exc.description or f"error {exc.code}/{exc.err_code}")
            return
        log.debug("event %s: %r; will retry", ev.msg_id, exc)
        self._requeue(ev)
        self._failed()

    def _failed(self) -> None:
        self._backoff_until = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max_s)

    def _expire(self, now: float) -> None:
        expired = []
        for ev in self._in_flight.values():  # send order: the oldest first
            if now - ev.sent_at < self.ack_timeout_s:
                break
            expired.append(ev)
        for ev in expired:
            del self._in_flight[ev.seq]
            self._requeue(ev)
        if expired:
            log.debug("%d event acks timed out; resending", len(expired))
            self._failed()

    def _requeue_in_flight(self) -> None:
        for ev in self._in_flight.values():
            self._requeue(ev)
        self._in_flight.clear()

    async def _check_streams(self) -> None:
        """After "no responders": reject if JetStream says no stream captures the subject."""
        events, self._check = self._check, []
        now = time.monotonic()
        retry = False
        for ev in events:
            at, found = self._lookups.get(ev.subject, (0.0, None))
            if now - at > STREAM_LOOKUP_CACHE_S:
                try:
                    await self._js.find_stream_name_by_subject(ev.subject)
                    found = True
                except NotFoundError:
                    found = False
                except Exception:  # noqa: BLE001 - JetStream not answering: unknown, retry
                    found = None
                now = time.monotonic()
                self._lookups[ev.subject] = (now, found)
            if found is False:
                self._reject(ev, NO_STREAM_REASON)
            else:
                self._requeue(ev)
                retry = True
        if retry:
            self._failed()

    def _reject(self, ev: _Event, reason: str) -> None:
        self._counts["rejected"] += 1
        self._rejections[reason] += 1
        level = logging.WARNING if self._rejections[reason] == 1 else logging.DEBUG
        log.log(level, "stream refused %s (%s): %s; counted as rejected", ev.subject, ev.msg_id, reason)
        self._resolved(ev)

    def _resolved(self, ev: _Event) -> None:
        self._pending -= 1
        self._pending_bytes -= len(ev.data)
        if not self._pending:
            self._idle.set()


# -- best-effort telemetry ---------------------------------------------------------------------


class TelemetryPublisher:
    """Best-effort core publishes with every drop counted (the ``TELE`` stream captures them).

    A message is dropped and counted when the client is not connected (``dropped_disconnected``:
    nats-py would otherwise buffer it while reconnecting and may write it to a dead socket; stale
    telemetry after an outage is not worth the memory), when the client's unwritten buffer holds
    more than ``max_buffer_bytes`` (``dropped_backlog``: the link cannot keep up), or when the
    publish raises (``dropped_error``). Downsampled messages are counted apart (``downsampled``):
    they are thinned on purpose, not lost. No acks: what the stream itself evicts or refuses is
    counted by the stream (``edge.sync.streams.DropMonitor``).
    """

    def __init__(
        self,
        nc: NATS,
        *,
        max_buffer_bytes: int = DEFAULT_TELEMETRY_MAX_BUFFER_BYTES,
        downsampler: Downsampler | None = None,
    ) -> None:
        self.nc = nc
        self.max_buffer_bytes = max_buffer_bytes
        self.downsampler = downsampler
        self._counts = Counter(
            {
                k: 0
                for k in ("sent", "downsampled", "dropped_disconnected", "dropped_backlog", "dropped_error")
            }
        )

    async def publish(self, subject: str, data: bytes, *, headers: Mapping[str, str] | None = None) -> bool:
        """Publish once; True if handed to the client, False if downsampled or dropped (counted)."""
        if self.downsampler is not None and not self.downsampler.allow(subject):
            self._counts["downsampled"] += 1
            return False
        if not self.nc.is_connected:
            return self._drop("dropped_disconnected")
        if self.nc.pending_data_size > self.max_buffer_bytes:
            return self._drop("dropped_backlog")
        try:
            await self.nc.publish(subject, data, headers=dict(headers) if headers else None)
        except Exception as exc:  # noqa: BLE001 - best effort: counted, never raised
            log.debug("telemetry on %s dropped: %r", subject, exc)
            return self._drop("dropped_error")
        self._counts["sent"] += 1
        return True

    def _drop(self, reason: str) -> bool:
        self._counts[reason] += 1
        return False

    def status(self) -> dict[str, int]:
        """Counters: sent, downsampled, dropped (the sum of the three reasons below), and
        dropped_disconnected, dropped_backlog, dropped_error."""
        c = self._counts
        out = {"sent": c["sent"], "downsampled": c["downsampled"]}
        out["dropped"] = c["dropped_disconnected"] + c["dropped_backlog"] + c["dropped_error"]
        out.update((k, c[k]) for k in ("dropped_disconnected", "dropped_backlog", "dropped_error"))
        return out
