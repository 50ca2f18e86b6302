"""JetStream publishing building blocks and the awaitable batched publisher.

Key components

* :class:`Publisher` - the awaitable batched-ack publisher (one future per message, own reply
  inbox, fixed ``max_attempts``) for tools, tests and ``bench/bench_sync.py``; the device itself
  publishes through :class:`edge.nats.outbox.EventPublisher` (``ctx.events``).
* :class:`Downsampler` - at most N telemetry messages per second per subject.
* The defaults and error codes both publishers share, :class:`PublishRejected` and the pub-ack
  parser.

:class:`Publisher` details: each message has a ``Nats-Msg-Id`` header and a reply subject on its
own inbox; up to ``max_in_flight`` messages are unacknowledged; a message whose ack did not
arrive within ``ack_timeout_s`` is resent with the same id. A stream that refuses a message fails
its future with :class:`PublishRejected`. Callers that must survive their own restart without
duplicates pass their own ``msg_id``: automatic ids are unique per process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Self

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck

from edge.errors import NatsError

log = logging.getLogger("edge.nats")

MSG_ID_HEADER = "Nats-Msg-Id"
STATUS_HEADER = "Status"
DEFAULT_MAX_IN_FLIGHT = 1024
DEFAULT_ACK_TIMEOUT_S = 2.0
DEFAULT_MAX_ATTEMPTS = 10
RETRY_SCAN_INTERVAL_S = 0.1

#: EventPublisher outbox bound, in messages emitted and not yet acknowledged or rejected.
DEFAULT_MAX_PENDING = 10_000
#: EventPublisher outbox bound, in payload bytes (same messages as above).
DEFAULT_MAX_PENDING_BYTES = 8 * 1024 * 1024
#: EventPublisher acks outstanding at once.
DEFAULT_EVENT_MAX_IN_FLIGHT = 256
#: Seconds without an ack before an EventPublisher message is sent again (same id).
DEFAULT_EVENT_ACK_TIMEOUT_S = 2.0
#: Backoff after a failed attempt (timeout, no responders, JetStream unavailable), seconds;
#: doubles per failure up to the maximum, back to the minimum after the next ack.
RETRY_BACKOFF_MIN_S = 0.05
RETRY_BACKOFF_MAX_S = 2.0
#: Seconds the stream lookup after "no responders" may take, and how long its answer is reused.
STREAM_LOOKUP_TIMEOUT_S = 1.0
STREAM_LOOKUP_CACHE_S = 1.0
#: Seconds ``EventPublisher.stop()`` tries to flush by default.
DEFAULT_STOP_TIMEOUT_S = 5.0
#: Seconds between the sender's checks for expired acks while idle.
SEND_TICK_S = 0.05
#: Pub-ack error codes that are final although their HTTP-like code is 503: the store refused
#: the message (stream limits with discard=new: "maximum bytes/messages exceeded"), or the
#: server has no storage left.
ERR_STREAM_STORE_FAILED = 10077
ERR_INSUFFICIENT_RESOURCES = 10023
FINAL_ERR_CODES = frozenset({ERR_STREAM_STORE_FAILED, ERR_INSUFFICIENT_RESOURCES})
#: Reason recorded when no stream captures the subject.
NO_STREAM_REASON = "no stream captures the subject"
#: TelemetryPublisher: drop when the client's unwritten buffer holds more than this, bytes.
DEFAULT_TELEMETRY_MAX_BUFFER_BYTES = 1024 * 1024


class PublishRejected(NatsError):
    """The stream refused the message (full with discard=new, wrong subject, ...)."""

    def __init__(
        self,
        message: str,
        *,
        subject: str,
        msg_id: str,
        code: int | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(message, subject=subject, msg_id=msg_id, code=code, description=description)
        self.subject = subject
        self.msg_id = msg_id
        self.code = code
        self.description = description


@dataclass
class PublishStats:
    sent: int = 0
    acked: int = 0
    duplicates: int = 0
    retries: int = 0
    rejected: int = 0
    timed_out: int = 0
    downsampled: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Downsampler:
    """Per-subject rate limit: at most ``max_per_s`` messages a second (even spacing)."""

    def __init__(self, max_per_s: float) -> None:
        if max_per_s <= 0:
            raise ValueError("max_per_s must be positive")
        self.interval = 1.0 / max_per_s
        self._next: dict[str, float] = {}
        self.dropped: dict[str, int] = {}

    def allow(self, subject: str, now: float | None = None) -> bool:
        t = time.monotonic() if now is None else now
        due = self._next.get(subject, 0.0)
        if t + 1e-9 < due:
            self.dropped[subject] = self.dropped.get(subject, 0) + 1
            return False
        # Schedule from the due time when on time, from now after a gap (no burst catch-up).
        self._next[subject] = due + self.interval if t - due < self.interval else t + self.interval
        return True


@dataclass(slots=True)
class _Pending:
    subject: str
    payload: bytes
    headers: dict[str, str]
    msg_id: str
    future: asyncio.Future[PubAck]
    sent_at: float = 0.0
    attempts: int = 0


_DUPLICATE_RE = re.compile(rb'"duplicate":\s*true')


def _parse_ack(data: bytes) -> PubAck | None:
    """Parse ``{"stream":"S","seq":N[,"domain":"D"][,"duplicate":true]}`` without json."""
    i = data.find(b'"seq":')
    j = data.find(b'"stream":"')
    if i < 0 or j < 0:
        return None
    end = i + 6
    while end < len(data) and data[end] in b"0123456789":
        end += 1
    k = data.find(b'"', j + 10)
    domain = None
    d = data.find(b'"domain":"')
    if d >= 0:
        domain = data[d + 10 : data.find(b'"', d + 10)].decode()
    try:
        seq = int(data[i + 6 : end])
    except ValueError:
        return None
    return PubAck(
        stream=data[j + 10 : k].decode(),
        seq=seq,
        domain=domain,
        duplicate=True if _DUPLICATE_RE.search(data) else None,
    )


class Publisher:
    """Batched-ack JetStream publisher. Use ``async with Publisher(nc) as pub:``.

    ``await pub.publish(...)`` returns as soon as the message is sent (waiting only for a free
    in-flight slot) and gives a future resolving to the :class:`PubAck`; ``await pub.flush()``
    waits for every outstanding ack.
    """

    def __init__(
        self,
        nc: NATS,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        id_prefix: str | None = None,
        downsampler: Downsampler | None = None,
    ) -> None:
        self.nc = nc
        self.max_in_flight = max_in_flight
        self.ack_timeout_s = ack_timeout_s
        self.max_attempts = max_attempts
        self.id_prefix = id_prefix or secrets.token_hex(6)
        self.downsampler = downsampler
        self.stats = PublishStats()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._counter = 0
        self._inbox = ""
        self._reconnects = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sub: Subscription | None = None
        self._retrier: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._sub is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._reconnects = int(self.nc.stats.get("reconnects", 0))
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox + ".*", cb=self._on_ack)
        self._retrier = asyncio.create_task(self._retry_loop(), name="edge-nats-publisher")

    async def close(self) -> None:
        if self._retrier is not None:
            self._retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrier
            self._retrier = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        for p in list(self._pending.values()):
            if not p.future.done():
                p.future.set_exception(
                    NatsError("Publisher closed before the ack arrived.", subject=p.subject, msg_id=p.msg_id)
                )
                p.future.exception()  # mark retrieved
        self._pending.clear()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> asyncio.Future[PubAck]:
        """Send one message; the returned future resolves with its ack."""
        if self._sub is None:
            await self.start()
        await self._slots.acquire()  # waits only when max_in_flight acks are outstanding
        self._counter += 1
        token = str(self._counter)
        mid = msg_id or f"{self.id_prefix}-{token}"
        hdrs = {**headers, MSG_ID_HEADER: mid} if headers else {MSG_ID_HEADER: mid}
        if self._loop is None:
            raise NatsError("This Publisher is not started; use `async with Publisher(nc)` or call start().")
        fut: asyncio.Future[PubAck] = self._loop.create_future()
        p = _Pending(subject, payload, hdrs, mid, fut)
        self._pending[token] = p
        self._idle.clear()
        if self.nc.is_connected:
            if self._link_changed():
                await self._resend_all()  # older unacked messages go first: order holds
            await self._send(token, p)
        else:
            p.sent_at = time.monotonic()  # held back; sent in order once reconnected
        return fut

    async def publish_telemetry(
        self, subject: str, payload: bytes, *, msg_id: str | None = None
    ) -> asyncio.Future[PubAck] | None:
        """Like :meth:`publish` but subject to the downsampler; ``None`` when downsampled."""
        if self.downsampler is not None and not self.downsampler.allow(subject):
            self.stats.downsampled += 1
            return None
        return await self.publish(subject, payload, msg_id=msg_id)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every sent message is acked or failed; NatsError on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError as exc:
            raise NatsError(
                f"{self.in_flight} messages still unacknowledged after {timeout} s.", in_flight=self.in_flight
            ) from exc

    # -- internals ------------------------------------------------------------------------
    def _link_changed(self) -> bool:
        n = int(self.nc.stats.get("reconnects", 0))
        if n != self._reconnects:
            self._reconnects = n
            return True
        return False

    async def _resend_all(self) -> None:
        for token, p in list(self._pending.items()):
            if token in self._pending:
                if p.attempts:
                    self.stats.retries += 1
                await self._send(token, p)

    async def _send(self, token: str, p: _Pending) -> None:
        p.attempts += 1
        p.sent_at = time.monotonic()
        self.stats.sent += 1
        try:
            await self.nc.publish(p.subject, p.payload, reply=f"{self._inbox}.{token}", headers=p.headers)
        except Exception as exc:  # noqa: BLE001 - connection trouble: the retry loop resends
            log.debug("publish of %s failed (%s); will retry", p.msg_id, exc)

    def _finish(self, token: str) -> _Pending | None:
        p = self._pending.pop(token, None)
        if p is None:
            return None
        self._slots.release()
        if not self._pending:
            self._idle.set()
        return p

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        if msg.headers and msg.headers.get(STATUS_HEADER) == "503":
            return  # no responders yet (stream not up): leave it to the retry loop
        p = self._pending.get(token)
        if p is None:
            return
        data = msg.data
        if b'"error"' not in data and (fast := _parse_ack(data)) is not None:
            self._finish(token)
            if not p.future.done():
                self.stats.acked += 1
                if fast.duplicate:
                    self.stats.duplicates += 1
                p.future.set_result(fast)
            return
        try:
            resp = json.loads(data)
        except ValueError:
            return
        err = resp.get("error")
        self._finish(token)
        if p.future.done():
            return
        if err:
            self.stats.rejected += 1
            desc = str(err.get("description", "refused"))
            log.warning("stream refused %s (%s): %s", p.subject, p.msg_id, desc)
            p.future.set_exception(
                PublishRejected(
                    f"The stream refused the message on {p.subject}: {desc}.",
                    subject=p.subject,
                    msg_id=p.msg_id,
                    code=err.get("err_code"),
                    description=desc,
                )
            )
            return
        self.stats.acked += 1
        if resp.get("duplicate"):
            self.stats.duplicates += 1
        p.future.set_result(
            PubAck(
                stream=resp.get("stream", ""),
                seq=int(resp.get("seq", 0)),
                domain=resp.get("domain"),
                duplicate=resp.get("duplicate"),
            )
        )

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(min(RETRY_SCAN_INTERVAL_S, self.ack_timeout_s / 4))
            if not self.nc.is_connected:
                continue
            if self._link_changed():
                await self._resend_all()  # everything unacked, in the original order
                continue
            now = time.monotonic()
            for token, p in list(self._pending.items()):  # insertion order = original order
                if now - p.sent_at < self.ack_timeout_s:
                    continue
                if p.attempts >= self.max_attempts:
                    self._finish(token)
                    self.stats.timed_out += 1
                    if not p.future.done():
                        p.future.set_exception(
                            NatsError(
                                f"No ack for {p.subject} after {p.attempts} attempts.",
                                subject=p.subject,
                                msg_id=p.msg_id,
                            )
                        )
                    continue
                self.stats.retries += 1
                await self._send(token, p)
