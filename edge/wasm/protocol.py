"""Framing and message shapes between the runtime and a sandbox worker process.

Both ends are ours, so frames are pickles: a 4-byte little-endian length, then the pickled
object. The runtime writes requests to the worker's stdin; the worker answers every request, in
order, on its stdout (so the runtime matches answers to requests first-in first-out).

Requests (tuples, first item the op):

* ``("load", spec: LoadSpec)`` -> ``("ok", CallResult)`` | ``("refused", text)`` | ``("fault", CallResult)``
* ``("unload", name)`` -> ``("ok", None)``
* ``("tick", name, n, dt, ids | None, shm | None)`` -> ``("ok" | "fault", CallResult)``
* ``("deliver", name, [(subject, data), ...])`` -> ``("ok" | "fault", CallResult)``
* ``("ping",)`` -> ``("ok", {"pid": ..., "instances": ..., "rss_kb": ...})``

``shm`` is ``(path, capacity)``: the worker maps the file ``path`` holding ``ncols * capacity``
float64 values, column-major (column ``c`` starts at byte ``8 * c * capacity``).
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

HEADER = struct.Struct("<I")
#: Largest frame either side accepts (bytes).
MAX_FRAME = 256 * 1024 * 1024


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


@dataclass
class CallResult:
    """What happened during one request: effects for the runtime, counters and a fault if any."""

    gas_used: int = 0
    publishes: list[tuple[str, bytes]] = field(default_factory=list)
    kv_puts: list[tuple[str, bytes]] = field(default_factory=list)
    logs: list[tuple[int, str]] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)  # subjects refused by the grants
    logs_dropped: int = 0
    messages: int = 0  # messages handed to edge_on_message
    dropped: int = 0  # messages not handled (no room, or after a fault)
    errors: int = 0  # exports that returned non-zero
    fault: tuple[str, str, str] | None = None  # (reason, export, text)


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
