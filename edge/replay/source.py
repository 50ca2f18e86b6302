"""Reads recorded windows from a ``REC`` stream: the device's own, or a hub's copy of it.

Key components
- :class:`Window`: which records are compared: by time (unix seconds) or by stream sequence.
- :func:`parse_time`: ``--from``/``--to`` values (unix seconds, ISO 8601, ``-30s``/``-5m``
  relative to now).
- :func:`read_records`: every record of one device, in stream order, up to the window's end
  and :data:`TAIL_S` past it (the replay also needs the component loads before it, and the
  publishes written just after it). A malformed message is counted and
  skipped.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from edge.replay.records import ReplayError, decode, rec_filter

log = logging.getLogger("edge.replay.source")

#: Records fetched per pull request.
FETCH_BATCH = 1000
#: Seconds one fetch may wait for records.
FETCH_TIMEOUT_S = 2.0
#: Records up to this many seconds past the window's end are read too: the recorder writes a
#: step's publishes up to its flush period (0.2 s) later.
TAIL_S = 1.0
#: Most records one replay reads (about 700 MB of demo records; a longer window is refused).
MAX_RECORDS = 2_000_000

_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)(s|m|h)$")


@dataclass(frozen=True)
class Window:
    """Records compared: ``t_from <= t <= t_to`` and ``seq_from <= seq <= seq_to``."""

    t_from: float = 0.0
    t_to: float = float("inf")
    seq_from: int = 0
    seq_to: int = 2**63

    def __post_init__(self) -> None:
        if self.t_to < self.t_from:
            raise ReplayError(f"the window ends ({self.t_to}) before it starts ({self.t_from})",
                              reason="usage")
        if self.seq_to < self.seq_from:
            raise ReplayError(f"the sequence range ends ({self.seq_to}) before it starts "
                              f"({self.seq_from})", reason="usage")

    def contains(self, seq: int, t: float) -> bool:
        return self.seq_from <= seq <= self.seq_to and self.t_from <= t <= self.t_to

    def past(self, seq: int, t: float) -> bool:
        return seq > self.seq_to or t > self.t_to


def parse_time(text: str, *, now: float | None = None) -> float:
    """Unix seconds from ``1764641000.5``, ``2026-12-02T02:10:00Z`` or ``-30s`` / ``-5m`` / ``-1h``."""
    text = text.strip()
    m = _RELATIVE.match(text)
    if m:
        scale = {"s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
        return (time.time() if now is None else now) - float(m.group(1)) * scale
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"'{text}' is not a time: give unix seconds, ISO 8601 "
                          "(2026-12-02T02:10:00Z) or a relative time like -30s", value=text,
                          reason="usage") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def parse_seq(text: str) -> tuple[int, int]:
    """``A:B`` (either side may be empty) -> (from, to)."""
    lo, sep, hi = text.partition(":")
    try:
        a = int(lo) if lo else 0
        b = int(hi) if hi else 2**63
    except ValueError:
        a = b = -1
    if not sep or a < 0 or b < 0:
        raise ReplayError(f"'{text}' is not a stream sequence range FROM:TO (e.g. 100:2500)",
                          value=text, reason="usage")
    return a, b


def expand(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's records: itself, or the records merged into it (``items``)."""
    items = rec.get("items")
    if items is None:
        return [rec]
    if not isinstance(items, list) or not all(
            isinstance(i, dict) and i.get("k") == rec["k"] and i.get("c") == rec.get("c")
            and isinstance(i.get("t"), (int, float)) for i in items):
        raise ReplayError("a merged record holds items of another kind", reason="malformed")
    return items


@dataclass
class Records:
    """What was read: ``(stream seq, record)`` in stream order, and what was skipped."""

    items: list[tuple[int, dict[str, Any]]]
    malformed: int = 0
    stream: str = ""
    first_seq: int = 0
    last_seq: int = 0


async def read_records(js: JetStreamContext, stream: str, device: str,
                       window: Window) -> Records:
    """Every record of ``device`` in ``stream`` from its first message to the window's end."""
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        raise ReplayError(f"no stream {stream}: nothing was recorded here (is the recorder on, "
                          "or is it a hub's copy under another name? see --stream)",
                          stream=stream, reason="no-stream") from None
    last = info.state.last_seq
    out = Records([], stream=stream, first_seq=info.state.first_seq, last_seq=last)
    if info.state.messages == 0:
        return out
    cfg = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                         inactive_threshold=30.0, max_ack_pending=-1)
    sub = await js.pull_subscribe(rec_filter(device), durable=None, stream=stream, config=cfg)
    end_t: float | None = None
    try:
        done = False
        while not done:
            try:
                msgs = await sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
            except (TimeoutError, NatsTimeoutError):
                break
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                try:
                    rec = decode(msg.data)
                    t = float(rec.get("t", 0.0))
                    parts = expand(rec)
                except (ReplayError, TypeError, ValueError):
                    out.malformed += 1
                    continue
                if window.past(seq, t):
                    # past the end: only the tail a recorder may still write for the window
                    if end_t is None:
                        end_t = out.items[-1][1]["t"] if out.items else t
                    if t > float(end_t) + TAIL_S:
                        done = True
                        break
                out.items.extend((seq, part) for part in parts)
                if len(out.items) > MAX_RECORDS:
                    raise ReplayError(f"the window holds more than {MAX_RECORDS} records; "
                                      "replay a shorter one", reason="too-long")
                if seq >= last:
                    done = True
            if msgs and msgs[-1].metadata.sequence.stream >= last:
                done = True
    finally:
        await sub.unsubscribe()
    if out.malformed:
        log.warning("%d malformed records in %s were skipped", out.malformed, stream)
    return out
