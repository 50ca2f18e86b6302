"""The fixed binary format of every frame a sandbox worker writes, and its checked decoder.

The worker runs hostile code, so the runtime never unpickles what it writes: each worker ->
runtime frame is a 4-byte little-endian length, then a body whose first byte names its kind.
Every count and length in a body is checked against a limit and against the bytes left before
it is used; an unknown kind, status, reason or export code, a string that is not UTF-8, or a
byte left over is refused with :class:`ProtocolError`. The runtime treats a refused frame as a
hostile or broken worker (it kills it and reports its components with reason ``protocol``).

Kinds (all integers little-endian):

* ``R`` compact tick reply: ``<BBxxIIQQ`` kind, status, errors, logs_dropped, gas_used,
  written (bitmask of the write columns the tick wrote, in manifest ``writable`` order).
* ``C`` call result: head ``<BBBBIIIIQQIIIIIIII`` kind, status, reason, export, errors,
  logs_dropped, messages, dropped, gas_used, written, denied_extra, denied_models_extra (denials
  counted, not named), kv_refused (``kv_put`` calls refused by the KV quota), then the counts
  of publishes, KV puts, log lines, denied subjects and denied models (the counts times the
  smallest item must fit in the frame); then the items in that order:
  publish ``<HI`` + subject + data, kv ``<HI`` + key + value, log ``<BH`` + level + text,
  denied ``<H`` + subject, denied model ``<H`` + name; then ``<I`` + a text (fault text, or the
  reason of ``refused`` / ``error``); then, only when the call reported clock reads (a
  component recorded or replayed, :data:`~edge.wasm.protocol.CLOCK_RECORD`), ``<II`` count and
  reads cut, and ``count`` items ``<Bq`` kind (0 ``clock_ms``, 1 ``monotonic_ns``) and value.
* ``K`` compact tick reply with clock reads (a recorded or replayed tick whose only other
  results are counters): ``<BBxxIIQQII`` kind, status (ok), errors, logs_dropped, gas_used,
  written, count, reads cut; then ``count`` items ``<Bq`` as in the ``C`` frame's clock section.
* ``P`` ping reply: ``<BxxxIIQ`` kind, pid, instances, rss_kb.
* ``Q`` host request (during a call): ``<BBxxiI`` kind, op, out_cap, model_len; then the model
  name and the input bytes (see :mod:`edge.wasm.protocol`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from edge.errors import SandboxError
from edge.wasm.abi import (
    KV_MAX_KEY,
    KV_MAX_VALUE,
    LOG_MAX_BYTES,
    MODEL_NAME_MAX_BYTES,
    PUBLISH_MAX_BYTES,
    SUBJECT_MAX_BYTES,
)
from edge.wasm.protocol import (
    CLOCK_NS,
    CLOCK_REPORT_MAX,
    HEADER,
    KIND_REPLY,
    STATUS_GONE,
    STATUS_OK,
    CallResult,
)

KIND_RESULT = 0x43  # "C"
KIND_PING = 0x50  # "P"
KIND_HOST_REQUEST = 0x51  # "Q"
KIND_CLOCK_REPLY = 0x4B  # "K"

STATUS_FAULT = 2
STATUS_REFUSED = 3
STATUS_ERROR = 4
STATUS_NAMES = {STATUS_OK: "ok", STATUS_GONE: "gone", STATUS_FAULT: "fault",
                STATUS_REFUSED: "refused", STATUS_ERROR: "error"}
STATUS_CODES = {v: k for k, v in STATUS_NAMES.items()}

#: Fault reasons a worker may report (0: no fault).
REASONS = ("", "trap", "out_of_gas", "init_failed")
REASON_CODES = {r: i for i, r in enumerate(REASONS)}
#: Exports a fault may name (0: none; "start": the module's start function, run at load).
EXPORTS = ("-", "edge_alloc", "edge_init", "edge_tick", "edge_on_message", "start",
           "edge_health")
EXPORT_CODES = {e: i for i, e in enumerate(EXPORTS)}

#: Host request operations.
OP_INFER = 0
HOST_OPS = frozenset({OP_INFER})

REPLY = struct.Struct("<BBxxIIQQ")
RESULT_HEAD = struct.Struct("<BBBBIIIIQQIIIIIIII")
PING = struct.Struct("<BxxxIIQ")
HOST_REQUEST = struct.Struct("<BBxxiI")
_PUB = struct.Struct("<HI")
_LOG = struct.Struct("<BH")
_STR = struct.Struct("<H")
_TEXT = struct.Struct("<I")
_CLOCK_HEAD = struct.Struct("<II")
CLOCK_REPLY = struct.Struct("<BBxxIIQQII")
_CLOCK = struct.Struct("<Bq")

#: Longest fault / refusal text (bytes).
TEXT_MAX_BYTES = 64 * 1024
#: Largest infer input a host request may carry (bytes).
INFER_MAX_INPUT_BYTES = 64 * 1024 * 1024


class ProtocolError(SandboxError):
    """A frame from a worker does not follow the format: the worker is hostile or broken."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="protocol")


@dataclass(frozen=True)
class HostRequestFrame:
    """A decoded ``Q`` frame."""

    op: int
    out_cap: int
    model: str
    data: bytes


# -- encoding (worker side) -------------------------------------------------------------------


def _cut(text: str, limit: int) -> bytes:
    """``text`` as UTF-8, cut to at most ``limit`` bytes on a character boundary."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", "ignore").encode()


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def encode_reply(status: int, errors: int, logs_dropped: int, gas: int, written: int) -> bytes:
    return _frame(REPLY.pack(KIND_REPLY, status, errors, logs_dropped, gas, written))


def encode_result(status: str, res: CallResult | None = None, text: str = "") -> bytes:
    """A ``C`` frame: a status, the call's result (or none) and a text. ``text`` and log lines
    are cut to their limits on a character boundary."""
    r = res if res is not None else CallResult()
    reason, export = 0, 0
    if r.fault is not None:
        reason = REASON_CODES.get(r.fault[0], REASON_CODES["trap"])
        export = EXPORT_CODES.get(r.fault[1], 0)
        text = r.fault[2]
    parts = [RESULT_HEAD.pack(
        KIND_RESULT, STATUS_CODES[status], reason, export, r.errors, r.logs_dropped, r.messages,
        r.dropped, r.gas_used, r.written, r.denied_extra, r.denied_models_extra, r.kv_refused,
        len(r.publishes), len(r.kv_puts), len(r.logs),
        len(r.denied), len(r.denied_models))]
    for subject, data in r.publishes:
        sb = subject.encode()
        parts += (_PUB.pack(len(sb), len(data)), sb, data)
    for key, value in r.kv_puts:
        kb = key.encode()
        parts += (_PUB.pack(len(kb), len(value)), kb, value)
    for level, line in r.logs:
        lb = _cut(line, LOG_MAX_BYTES)
        parts += (_LOG.pack(level & 0xFF, len(lb)), lb)
    for names, limit in ((r.denied, SUBJECT_MAX_BYTES), (r.denied_models, MODEL_NAME_MAX_BYTES)):
        for name in names:
            nb = _cut(name, limit)
            parts += (_STR.pack(len(nb)), nb)
    tb = _cut(text, TEXT_MAX_BYTES)
    parts += (_TEXT.pack(len(tb)), tb)
    if r.clocks or r.clocks_cut:
        parts.append(_CLOCK_HEAD.pack(len(r.clocks), r.clocks_cut))
        parts += [_CLOCK.pack(k, v) for k, v in r.clocks]
    return _frame(b"".join(parts))


def encode_clock_reply(res: CallResult) -> bytes:
    """A ``K`` frame: a tick that only counted and read the clock."""
    head = CLOCK_REPLY.pack(KIND_CLOCK_REPLY, STATUS_OK, res.errors, res.logs_dropped,
                            res.gas_used, res.written, len(res.clocks), res.clocks_cut)
    return _frame(head + b"".join([_CLOCK.pack(k, v) for k, v in res.clocks]))


def encode_ping(pid: int, instances: int, rss_kb: int) -> bytes:
    return _frame(PING.pack(KIND_PING, pid, instances, rss_kb))


def encode_host_request(op: int, out_cap: int, model: bytes, data: bytes) -> bytes:
    """The frame of a nested host request."""
    return _frame(HOST_REQUEST.pack(KIND_HOST_REQUEST, op, out_cap, len(model)) + model + data)


# -- decoding (runtime side) ------------------------------------------------------------------


class _Reader:
    """Bounds-checked reads from one frame body."""

    def __init__(self, body: memoryview) -> None:
        self.body = body
        self.pos = 0

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        if self.pos + st.size > len(self.body):
            raise ProtocolError(f"frame ends inside a {st.size}-byte field at byte {self.pos}")
        out = st.unpack_from(self.body, self.pos)
        self.pos += st.size
        return out

    def take(self, n: int, limit: int, what: str) -> bytes:
        if n > limit:
            raise ProtocolError(f"{what} of {n} bytes exceeds the limit of {limit}")
        if self.pos + n > len(self.body):
            raise ProtocolError(f"{what} of {n} bytes runs past the end of the frame")
        out = bytes(self.body[self.pos:self.pos + n])
        self.pos += n
        return out

    def text(self, n: int, limit: int, what: str) -> str:
        raw = self.take(n, limit, what)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not UTF-8") from None

    def end(self) -> None:
        if self.pos != len(self.body):
            raise ProtocolError(f"{len(self.body) - self.pos} bytes left over after the frame")


def _status(code: int) -> str:
    name = STATUS_NAMES.get(code)
    if name is None:
        raise ProtocolError(f"unknown status code {code}")
    return name


def decode_reply(body: memoryview) -> tuple[str, CallResult]:
    """Decode an ``R`` body (``ok`` or ``gone``)."""
    if len(body) != REPLY.size:
        raise ProtocolError(f"compact reply of {len(body)} bytes, {REPLY.size} expected")
    _, status, errors, logs_dropped, gas, written = REPLY.unpack_from(body, 0)
    name = _status(status)
    if name not in ("ok", "gone"):
        raise ProtocolError(f"compact reply with status {name}")
    return name, CallResult(gas_used=gas, errors=errors, logs_dropped=logs_dropped,
                            written=written)


def decode_result(body: memoryview) -> tuple[str, Any]:
    """Decode a ``C`` body to ``(status, CallResult)``, or ``(status, text)`` for ``refused``
    and ``error``."""
    r = _Reader(body)
    (_, status, reason, export, errors, logs_dropped, messages, dropped, gas, written,
     denied_extra, models_extra, kv_refused, n_pub, n_kv, n_logs, n_denied,
     n_models) = r.unpack(RESULT_HEAD)
    name = _status(status)
    if reason >= len(REASONS) or export >= len(EXPORTS):
        raise ProtocolError(f"unknown fault reason {reason} or export {export}")
    if (reason != 0) != (name == "fault"):
        raise ProtocolError(f"status {name} with fault reason {reason}")
    least = ((n_pub + n_kv) * _PUB.size + n_logs * _LOG.size + (n_denied + n_models) * _STR.size
             + _TEXT.size)
    if least > len(body) - r.pos:
        raise ProtocolError(f"item counts ({n_pub}, {n_kv}, {n_logs}, {n_denied}, {n_models}) "
                            f"need {least} bytes, the frame has {len(body) - r.pos} left")
    res = CallResult(gas_used=gas, errors=errors, logs_dropped=logs_dropped, messages=messages,
                     dropped=dropped, written=written, denied_extra=denied_extra,
                     denied_models_extra=models_extra, kv_refused=kv_refused)
    for _ in range(n_pub):
        slen, dlen = r.unpack(_PUB)
        subject = r.text(slen, SUBJECT_MAX_BYTES, "publish subject")
        res.publishes.append((subject, r.take(dlen, PUBLISH_MAX_BYTES, "publish payload")))
    for _ in range(n_kv):
        klen, vlen = r.unpack(_PUB)
        key = r.text(klen, KV_MAX_KEY, "KV key")
        res.kv_puts.append((key, r.take(vlen, KV_MAX_VALUE, "KV value")))
    for _ in range(n_logs):
        level, llen = r.unpack(_LOG)
        res.logs.append((level, r.text(llen, LOG_MAX_BYTES, "log line")))
    for _ in range(n_denied):
        (dlen,) = r.unpack(_STR)
        res.denied.append(r.text(dlen, SUBJECT_MAX_BYTES, "denied subject"))
    for _ in range(n_models):
        (mlen,) = r.unpack(_STR)
        res.denied_models.append(r.text(mlen, MODEL_NAME_MAX_BYTES, "denied model"))
    (tlen,) = r.unpack(_TEXT)
    text = r.text(tlen, TEXT_MAX_BYTES, "text")
    if len(body) - r.pos >= _CLOCK_HEAD.size:
        _clocks(r, res)
    r.end()
    if name in ("refused", "error"):
        return name, text
    if name == "fault":
        res.fault = (REASONS[reason], EXPORTS[export], text)
    return name, res


def _clocks(r: _Reader, res: CallResult) -> None:
    """The optional clock section of a ``C`` body."""
    n, cut = r.unpack(_CLOCK_HEAD)
    if n > CLOCK_REPORT_MAX:
        raise ProtocolError(f"{n} clock values, at most {CLOCK_REPORT_MAX} allowed")
    if n * _CLOCK.size != len(r.body) - r.pos:
        raise ProtocolError(f"{n} clock values need {n * _CLOCK.size} bytes, the frame has "
                            f"{len(r.body) - r.pos} left")
    clocks = list(_CLOCK.iter_unpack(r.body[r.pos:]))
    r.pos = len(r.body)
    if any(kind > CLOCK_NS for kind, _ in clocks):
        raise ProtocolError(f"unknown clock kind in {sorted({k for k, _ in clocks})}")
    res.clocks = clocks
    res.clocks_cut = cut


def decode_clock_reply(body: memoryview) -> tuple[str, CallResult]:
    """Decode a ``K`` body (status ok)."""
    if len(body) < CLOCK_REPLY.size:
        raise ProtocolError(f"clock reply of {len(body)} bytes, at least {CLOCK_REPLY.size}")
    _, status, errors, logs_dropped, gas, written, n, cut = CLOCK_REPLY.unpack_from(body, 0)
    if status != STATUS_OK:
        raise ProtocolError(f"clock reply with status code {status}")
    res = CallResult(gas_used=gas, errors=errors, logs_dropped=logs_dropped, written=written)
    r = _Reader(body)
    r.pos = CLOCK_REPLY.size - _CLOCK_HEAD.size
    _clocks(r, res)
    r.end()
    return "ok", res


def decode_ping(body: memoryview) -> tuple[str, dict[str, int]]:
    if len(body) != PING.size:
        raise ProtocolError(f"ping reply of {len(body)} bytes, {PING.size} expected")
    _, pid, instances, rss_kb = PING.unpack_from(body, 0)
    return "ok", {"pid": pid, "instances": instances, "rss_kb": rss_kb}


def decode_host_request(body: memoryview) -> HostRequestFrame:
    r = _Reader(body)
    _, op, out_cap, mlen = r.unpack(HOST_REQUEST)
    if op not in HOST_OPS:
        raise ProtocolError(f"unknown host request operation {op}")
    if out_cap < 0:
        raise ProtocolError(f"host request with a negative output capacity ({out_cap})")
    model = r.text(mlen, MODEL_NAME_MAX_BYTES, "model name")
    data = r.take(len(body) - r.pos, INFER_MAX_INPUT_BYTES, "infer input")
    return HostRequestFrame(op, out_cap, model, data)


#: Reply kinds a pending request accepts, by what it expects.
EXPECT_TICK = frozenset({KIND_REPLY, KIND_RESULT, KIND_CLOCK_REPLY})
EXPECT_RESULT = frozenset({KIND_RESULT})
EXPECT_PING = frozenset({KIND_PING})


def decode_answer(kind: int, body: memoryview) -> tuple[str, Any]:
    """Decode a reply body of a known kind (``R``, ``C``, ``K`` or ``P``)."""
    if kind == KIND_REPLY:
        return decode_reply(body)
    if kind == KIND_RESULT:
        return decode_result(body)
    if kind == KIND_PING:
        return decode_ping(body)
    if kind == KIND_CLOCK_REPLY:
        return decode_clock_reply(body)
    raise ProtocolError(f"unknown frame kind {kind:#04x}")
