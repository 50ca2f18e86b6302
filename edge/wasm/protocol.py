"""Framing and message shapes between the runtime and a sandbox worker process.

Both ends are ours. A frame is a 4-byte little-endian length, then a body. The runtime writes
requests to the worker's stdin; the worker answers every request, in order, on its stdout (so
the runtime matches answers to requests first-in first-out).

Bodies are pickles (their first byte is 0x80), except on the tick hot path, where a fixed
struct avoids pickling: a tick request body starts with ``b"T"`` (:data:`TICK_FRAME`), a compact
tick reply with ``b"R"`` (:data:`REPLY_FRAME`). A tick reply is compact when the call had no
effect besides counters (no publish, KV put, log line, denial or fault); otherwise it is the
pickled ``(status, CallResult)``.

Requests (pickled tuples, first item the op; the tick is a struct):

* ``("load", spec: LoadSpec)`` -> ``("ok", CallResult)`` | ``("refused", text)`` | ``("fault", CallResult)``
* ``("unload", name)`` -> ``("ok", None)``
* ``("setup", name, ids | None, shm | None)`` -> ``("ok", None)``: the copy-mode batch.
  ``shm`` is ``(path, capacity)``: the worker maps the file ``path`` holding ``ncols * capacity``
  float64 values, column-major (column ``c`` starts at byte ``8 * c * capacity``).
* ``("bind", name, BindSpec)`` -> ``("ok", None)`` | ``("error", text)``: the shared-mode batch
  (the world's own column files and the slots of the rows).
* tick ``T``: ``(flags, handle, n, dt)`` -> ``R (status, errors, logs_dropped, gas_used)`` or a
  pickled ``("ok" | "fault", CallResult)``; ``("gone", None)`` if the handle is not loaded.
  ``flags & FLAG_SHARED`` runs on the bound world columns instead of the copy-mode batch.
* ``("deliver", name, [(subject, data), ...])`` -> ``("ok" | "fault", CallResult)``
* ``("ping",)`` -> ``("ok", {"pid": ..., "instances": ..., "rss_kb": ...})``

Nested host requests. While a call runs, a host import that needs the runtime (``infer``) writes
a host request frame (``b"Q"``, :data:`HOST_REQUEST`) on the reply pipe and blocks until the
runtime writes a host reply frame (``b"A"``, :data:`HOST_REPLY`) on the request pipe. The runtime
reads the request out of band (it does not resolve a pending future) and answers it for the
component whose call is at the head of that worker's queue. Request frames the runtime sent
meanwhile (pipelined ticks, message batches) are kept by the worker and served after the call.

* ``Q``: ``(op, out_cap, model_len)`` then the model name and the input bytes ->
  ``A``: ``(code, hint)`` then the output bytes (``code`` >= 0: their length).
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

HEADER = struct.Struct("<I")
#: Largest frame either side accepts (bytes).
MAX_FRAME = 256 * 1024 * 1024

#: Tick request frame: length, b"T", flags, pad, handle, n, dt.
TICK_FRAME = struct.Struct("<IBBxxIId")
TICK_BODY_SIZE = TICK_FRAME.size - HEADER.size
#: Compact tick reply frame: length, b"R", status, pad, errors, logs_dropped, gas_used.
REPLY_FRAME = struct.Struct("<IBBxxIIQ")
REPLY_BODY_SIZE = REPLY_FRAME.size - HEADER.size
KIND_TICK = 0x54  # "T"
KIND_REPLY = 0x52  # "R"
#: Tick flag: run on the world columns bound with "bind" (shared mode).
FLAG_SHARED = 1
#: Compact reply status codes.
STATUS_OK = 0
STATUS_GONE = 1
STATUS_NAMES = {STATUS_OK: "ok", STATUS_GONE: "gone"}

#: Host request frame (worker -> runtime during a call): length, b"Q", op, pad, out_cap,
#: model_len; then the model name and the data.
HOST_REQUEST = struct.Struct("<IBBxxiI")
#: Host reply frame (runtime -> worker): length, b"A", pad, code, hint; then the payload.
HOST_REPLY = struct.Struct("<IBxxxiI")
KIND_HOST_REQUEST = 0x51  # "Q"
KIND_HOST_REPLY = 0x41  # "A"
#: Host request operations.
OP_INFER = 0


def encode_host_request(op: int, out_cap: int, model: bytes, data: bytes) -> bytes:
    """The frame of a nested host request (worker side)."""
    size = HOST_REQUEST.size - HEADER.size + len(model) + len(data)
    return b"".join((HOST_REQUEST.pack(size, KIND_HOST_REQUEST, op, out_cap, len(model)),
                     model, data))


def encode_host_reply(code: int, hint: int, payload: bytes = b"") -> bytes:
    """The frame answering a host request (runtime side)."""
    size = HOST_REPLY.size - HEADER.size + len(payload)
    return HOST_REPLY.pack(size, KIND_HOST_REPLY, code, hint) + payload


def encode_tick(handle: int, n: int, dt: float, flags: int = 0) -> bytes:
    """The frame of a tick request."""
    return TICK_FRAME.pack(TICK_BODY_SIZE, KIND_TICK, flags, handle, n, dt)


@dataclass(frozen=True)
class LoadSpec:
    """Everything a worker needs to instantiate one component."""

    name: str
    wasm: bytes  # checked, memory-pinned and instrumented
    device: str
    ncols: int
    writable: tuple[int, ...]
    publish: tuple[str, ...]
    gas: int
    publish_per_call: int
    kv: dict[str, bytes]
    stack_bytes: int
    call_init: bool = True
    handle: int = 0  # the number tick requests use to name this component
    models: tuple[str, ...] = ()  # model names the manifest grants (run.models)


@dataclass(frozen=True)
class BindSpec:
    """The world's columns of a shared-mode batch, for the worker to map.

    ``columns`` are ``(path, inode, nbytes)`` per batch column (manifest order); row ``i`` is the
    float64 at byte ``8 * index[i]`` of each file, or at ``8 * i`` when ``index`` is None.
    ``index`` is the native-endian intp array of slots as bytes.
    """

    n: int
    columns: tuple[tuple[str, int, int], ...]
    index: bytes | None
    ids: tuple[str, ...] | None


@dataclass
class CallResult:
    """What happened during one request: effects for the runtime, counters and a fault if any."""

    gas_used: int = 0
    publishes: list[tuple[str, bytes]] = field(default_factory=list)
    kv_puts: list[tuple[str, bytes]] = field(default_factory=list)
    logs: list[tuple[int, str]] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)  # subjects refused by the grants
    denied_models: list[str] = field(default_factory=list)  # infer calls refused by the grants
    logs_dropped: int = 0
    messages: int = 0  # messages handed to edge_on_message
    dropped: int = 0  # messages not handled (no room, or after a fault)
    errors: int = 0  # exports that returned non-zero
    fault: tuple[str, str, str] | None = None  # (reason, export, text)

    def has_effects(self) -> bool:
        """True if the result carries more than counters (it then travels as a pickle)."""
        return bool(self.publishes or self.kv_puts or self.logs or self.denied
                    or self.denied_models or self.fault is not None or self.messages or self.dropped)

    def reset(self) -> None:
        """Empty it for the next call (the worker reuses one per instance)."""
        self.gas_used = self.logs_dropped = self.messages = self.dropped = self.errors = 0
        self.fault = None
        if self.publishes:
            self.publishes = []
        if self.kv_puts:
            self.kv_puts = []
        if self.logs:
            self.logs = []
        if self.denied:
            self.denied = []
        if self.denied_models:
            self.denied_models = []


def encode(obj: Any) -> bytes:
    """One frame: length header + pickle."""
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def read_frame(stream: BinaryIO) -> Any | None:
    """Blocking read of one frame (worker side); None at end of stream."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes exceeds the limit")
    body = stream.read(size)
    if len(body) < size:
        return None
    return pickle.loads(body)
