"""Framing and message shapes between the runtime and a sandbox worker process.

A frame is a 4-byte little-endian length, then a body. The runtime writes requests to the
worker's stdin; the worker answers every request, in order, on its stdout (so the runtime
matches answers to requests first-in first-out).

Only the runtime is trusted. Worker -> runtime frames (replies, host requests) use the fixed,
length-checked binary format of :mod:`edge.wasm.wire`; the runtime never unpickles them.
Runtime -> worker request bodies are pickles (first byte 0x80: the worker trusts its runtime),
except the tick (``b"T"``, :data:`TICK_FRAME`) and the host reply (``b"A"``), which are structs.

Requests (pickled tuples, first item the op; the tick is a struct) and their answers:

* ``("load", spec: LoadSpec)`` -> ok | refused (text) | fault (``C`` frames)
* ``("unload", name)`` -> ok
* ``("setup", name, ids | None, shm | None)`` -> ok | gone: the copy-mode batch.
  ``shm`` is ``(path, capacity)``: the worker maps the file ``path`` holding ``ncols * capacity``
  float64 values, column-major (column ``c`` starts at byte ``8 * c * capacity``).
* ``("bind", name, BindSpec)`` -> ok | error (text) | gone: the shared-mode batch (the world's
  column files, mapped read-only, the slots of the rows, and the component's output area).
* tick ``T``: ``(flags, handle, n, dt)`` -> a compact ``R`` reply when the call only counted,
  else a ``C`` frame (ok | fault | error); ``gone`` if the handle is not loaded.
  ``flags & FLAG_SHARED`` runs on the bound world columns instead of the copy-mode batch.
* ``("deliver", name, [(subject, data), ...])`` -> ok | fault | gone (``C``)
* ``("health", name, gas)`` -> ok | fault | gone (``C``): ``edge_health`` under ``gas``;
  ``written`` holds its return value (unsigned 32-bit), ``errors`` 1 if it is not 0. A fault
  here does not drop the instance (edge.wasm.health).
* ``("ping",)`` -> a ``P`` frame (pid, instances, rss_kb)
* ``("clock", name, [(kind, value), ...])`` -> ok | gone: the values the clock imports answer
  during the component's next calls (replay mode, :data:`CLOCK_REPLAY`).

Nested host requests. While a call runs, a host import that needs the runtime (``infer``) writes
a host request frame (``b"Q"``) on the reply pipe and blocks until the runtime writes a host
reply frame (``b"A"``, :data:`HOST_REPLY`) on the request pipe. The runtime reads the request
out of band (it does not resolve a pending future) and answers it for the component whose call
is at the head of that worker's queue. Request frames the runtime sent meanwhile (pipelined
ticks, message batches) are kept by the worker and served after the call.

* ``Q``: ``(op, out_cap, model_len)`` then the model name and the input bytes ->
  ``A``: ``(code, hint)`` then the output bytes (``code`` >= 0: their length).
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from typing import Any

from edge.wasm.quotas import DEFAULT_KV_BYTES, DEFAULT_KV_KEYS  # not manifest: the worker never parses one

#: Environment variable telling a worker its runtime's pid (it exits if its parent differs).
PARENT_PID_ENV = "EDGE_SANDBOX_PARENT"

HEADER = struct.Struct("<I")
#: Largest frame either side accepts (bytes).
MAX_FRAME = 256 * 1024 * 1024

#: Tick request frame: length, b"T", flags, pad, handle, n, dt.
TICK_FRAME = struct.Struct("<IBBxxIId")
TICK_BODY_SIZE = TICK_FRAME.size - HEADER.size
#: Compact tick reply frame: length, b"R", status, pad, errors, logs_dropped, gas_used, written.
REPLY_FRAME = struct.Struct("<IBBxxIIQQ")
REPLY_BODY_SIZE = REPLY_FRAME.size - HEADER.size
KIND_TICK = 0x54  # "T"
KIND_REPLY = 0x52  # "R"
#: Tick flag: run on the world columns bound with "bind" (shared mode).
FLAG_SHARED = 1
#: Compact reply status codes (see :mod:`edge.wasm.wire` for all of them).
STATUS_OK = 0
STATUS_GONE = 1

#: Host reply frame (runtime -> worker): length, b"A", pad, code, hint; then the payload.
HOST_REPLY = struct.Struct("<IBxxxiI")
KIND_HOST_REPLY = 0x41  # "A"

#: Clock modes of a component (``LoadSpec.clock``): the clock imports answer the live clocks
#: and report nothing; answer the live clocks and report every value handed out (recording);
#: answer the values the runtime sent with ``("clock", name, values)`` before the call, in
#: order, and report them (replaying; 0 once they run out).
CLOCK_LIVE = 0
CLOCK_RECORD = 1
CLOCK_REPLAY = 2
#: Clock imports told apart in a reported value: ``clock_ms`` and ``monotonic_ns``.
CLOCK_MS = 0
CLOCK_NS = 1
#: Clock values one call reports at most (more are counted in ``clocks_cut``, not kept).
CLOCK_REPORT_MAX = 1024


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
    kv_keys: int = DEFAULT_KV_KEYS  # KV quota: keys the component may store (limits.kv_keys)
    kv_bytes: int = DEFAULT_KV_BYTES  # KV quota: bytes of key names and values (limits.kv_bytes)
    clock: int = CLOCK_LIVE  # CLOCK_LIVE | CLOCK_RECORD | CLOCK_REPLAY
    #: replay clock mode: the (kind, value) the start function's and edge_init's clock reads
    #: answer, in order
    clock_feed: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class BindSpec:
    """The world's columns of a shared-mode batch, for the worker to map.

    ``columns`` are ``(path, inode, nbytes)`` per batch column (manifest order); row ``i`` is the
    float64 at byte ``8 * index[i]`` of each file, or at ``8 * i`` when ``index`` is None.
    ``index`` is the native-endian intp array of slots as bytes. The worker maps the columns
    read-only; what the component writes goes to ``output`` ``(path, capacity)``: a file of
    ``len(writable) * capacity`` float64, column ``k`` (the ``k``-th write column) at byte
    ``8 * k * capacity``, row ``i`` at ``i`` (batch order). The runtime copies the rows back
    into the world's write columns (only those, only the batch's slots). Without ``output``
    the worker keeps the rows in private memory (benchmarks, tests).
    """

    n: int
    columns: tuple[tuple[str, int, int], ...]
    index: bytes | None
    ids: tuple[str, ...] | None
    output: tuple[str, int] | None = None


@dataclass
class CallResult:
    """What happened during one request: effects for the runtime, counters and a fault if any."""

    gas_used: int = 0
    publishes: list[tuple[str, bytes]] = field(default_factory=list)
    kv_puts: list[tuple[str, bytes]] = field(default_factory=list)
    logs: list[tuple[int, str]] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)  # subjects refused by the grants
    denied_models: list[str] = field(default_factory=list)  # infer calls refused by the grants
    denied_extra: int = 0  # denied subjects counted, not named
    denied_models_extra: int = 0  # denied models counted, not named
    written: int = 0  # bitmask of the write columns a shared tick wrote (writable order)
    logs_dropped: int = 0
    messages: int = 0  # messages handed to edge_on_message
    dropped: int = 0  # messages not handled (no room, or after a fault)
    errors: int = 0  # exports that returned non-zero
    kv_refused: int = 0  # kv_put calls refused by the KV quota
    #: (kind, value) of each clock read, in order (clock modes record / replay only)
    clocks: list[tuple[int, int]] = field(default_factory=list)
    clocks_cut: int = 0  # clock reads past CLOCK_REPORT_MAX: counted, not reported
    fault: tuple[str, str, str] | None = None  # (reason, export, text)

    def has_effects(self, clocks: bool = True) -> bool:
        """True if the result carries more than counters (it then travels as a ``C`` frame; a
        tick whose only extra is its clock reads, ``has_effects(clocks=False)`` False, as a
        compact ``K`` frame)."""
        return bool(self.publishes or self.kv_puts or self.logs or self.denied
                    or self.denied_models or self.denied_extra or self.denied_models_extra
                    or self.fault is not None or self.messages or self.dropped
                    or self.kv_refused or (clocks and (self.clocks or self.clocks_cut)))

    def reset(self) -> None:
        """Empty it for the next call (the worker reuses one per instance)."""
        self.gas_used = self.logs_dropped = self.messages = self.dropped = self.errors = 0
        self.denied_extra = self.denied_models_extra = self.written = self.kv_refused = 0
        self.clocks_cut = 0
        if self.clocks:
            self.clocks = []
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
    """One request frame (runtime -> worker only): length header + pickle."""
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body
