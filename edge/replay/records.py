"""The record format of the ``REC`` stream (docs/replay.md, *Records*).

One JSON object per message on ``edge.<device>.rec.<kind>.<component>`` (``<kind>`` only for
records about the whole device). Float64 columns travel as base64 of their little-endian bytes,
column after column, so a replay feeds a component bit for bit what it read.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge.errors import EdgeError
from edge.nats import subjects
from edge.wasm.record import record_prefix
from edge.wasm.wasmbin import module_imports

#: The device's record stream.
REC_STREAM = "REC"
#: Record kinds (the subject token after ``rec``).
KINDS = ("start", "load", "unload", "tick", "msg", "pub", "kv", "infer", "snap",
         "agent", "obs", "read", "decide", "tool", "policy")
#: Kinds of the records about native agents.
AGENT_KINDS = ("agent", "obs", "read", "decide")


class ReplayError(EdgeError):
    """A recorded window cannot be read or replayed (``reason`` says why)."""


def rec_subject(device: str, kind: str, component: str | None = None) -> str:
    """``edge.<device>.rec.<kind>[.<component>]``."""
    subjects.check_device_id(device)
    base = f"{record_prefix(device)}{kind}"
    return f"{base}.{component}" if component else base


def rec_filter(device: str) -> str:
    """The subjects of every record of ``device``: ``edge.<device>.rec.>``."""
    return f"{subjects.device_prefix(device)}.rec.>"


#: The imports whose answers a record holds (docs/replay.md, *Clock reads*).
CLOCK_IMPORTS = frozenset({"clock_ms", "monotonic_ns"})


def imports_clock(module: bytes) -> bool:
    """Whether a wasm module imports a clock (a module that cannot be parsed: False)."""
    try:
        return bool(CLOCK_IMPORTS & {name for _, name, _ in module_imports(module)})
    except Exception:  # noqa: BLE001  the sandbox already checked it; here only a hint
        return False


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ReplayError(f"record field '{what}' is not a base64 string", field=what,
                          reason="malformed")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as err:
        raise ReplayError(f"record field '{what}' is not base64: {err}", field=what,
                          reason="malformed") from err


def pack_columns(columns: Sequence[np.ndarray]) -> str:
    """Columns (equal length) as one base64 string of float64 little-endian bytes."""
    if not columns:
        return ""
    return b64(b"".join(np.ascontiguousarray(c, dtype="<f8").tobytes() for c in columns))


def unpack_columns(text: object, ncols: int, n: int, what: str) -> np.ndarray:
    """The inverse of :func:`pack_columns`: an array of shape (ncols, n)."""
    raw = unb64(text, what) if text else b""
    if len(raw) != ncols * n * 8:
        raise ReplayError(f"record field '{what}' holds {len(raw)} bytes, not {ncols} columns of "
                          f"{n} float64", field=what, reason="malformed")
    return np.frombuffer(raw, dtype="<f8").reshape(ncols, n).copy()


def digest(data: bytes) -> str:
    """Short content hash used in records (sha256, 32 hex digits)."""
    return hashlib.sha256(data).hexdigest()[:32]


def encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), default=str).encode()


def decode(data: bytes) -> dict[str, Any]:
    """One record; raises ReplayError for anything that is not a record object."""
    try:
        obj = json.loads(data)
    except ValueError as err:
        raise ReplayError(f"a record is not JSON: {err}", reason="malformed") from err
    if not isinstance(obj, dict) or obj.get("k") not in KINDS:
        raise ReplayError("a record has no known kind 'k'", reason="malformed")
    return obj
