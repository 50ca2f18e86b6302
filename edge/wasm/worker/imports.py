"""The host functions a component imports (module ``edge``, see docs/abi.md), worker side.

Each first checks every pointer/length pair it was given against linear memory, whatever the
other arguments are (a pair outside memory is a :class:`GuestFault`, which traps the call: it is
never cut short or answered with an error code), then applies the component's grants and limits
(the error codes of docs/abi.md), and records effects in the
instance's :class:`~edge.wasm.protocol.CallResult` for the runtime (which checks them again:
the worker runs hostile code). ``col_read`` / ``col_write`` move rows through
:mod:`edge.wasm.worker.columns`.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from edge.wasm.abi import (
    INFER_BAD_INPUT,
    INFER_DENIED,
    INFER_GAS,
    KV_MAX_KEY,
    KV_MAX_VALUE,
    KV_OVER_QUOTA,
    LOG_MAX_BYTES,
    MODEL_NAME_MAX_BYTES,
    PUBLISH_MAX_BYTES,
    SUBJECT_MAX_BYTES,
)
from edge.wasm.grants import KV_KEY_RE, PublishGrant
from edge.wasm.protocol import (
    CLOCK_LIVE,
    CLOCK_MS,
    CLOCK_NS,
    CLOCK_REPLAY,
    CLOCK_REPORT_MAX,
    CallResult,
    LoadSpec,
)
from edge.wasm.quotas import KvUsage
from edge.wasm.wire import INFER_MAX_INPUT_BYTES, OP_INFER
from edge.wasm.worker.columns import Columns

#: pywasm3 ``gasLimit`` is a float counted in units of this many gas.
GAS_UNIT = 10_000
#: Log lines a component may emit: burst size and sustained rate (lines/s).
LOG_BURST = 20
LOG_RATE_PER_S = 10.0
#: Denied subjects / models named per call (the counter counts them all).
DENIED_REPORT_MAX = 8

#: Sends a nested host request ``(op, out_cap, model, data)`` to the runtime and returns its
#: ``(code, hint, payload)`` answer (see :meth:`edge.wasm.worker.dispatch.Worker.host_request`).
HostChannel = Callable[[int, int, bytes, bytes], tuple[int, int, bytes]]


#: Results below this are returned as one shared int object per value (see :func:`shared_int`).
SHARED_INT_MAX = 4096
_SHARED_INTS: dict[int, int] = {}


def shared_int(n: int) -> int:
    """``n`` as one int object per value (for ``0 <= n < SHARED_INT_MAX``).

    pywasm3 0.5.0 never releases the object a host function returns (docs/sandbox.md,
    *Memory*): a fresh int leaks 32 bytes a call, the same object only a reference count.
    CPython shares -5..256 itself; this covers the lengths imports return above that.
    """
    if 0 <= n < SHARED_INT_MAX:
        return _SHARED_INTS.setdefault(n, n)
    return n


class GuestFault(Exception):
    """A host import was called with arguments that violate the contract (bad pointer, ...)."""


class HostOutOfGas(GuestFault):
    """A host import charged more gas than the call had left."""


class HostImports:
    """The ``h_*`` host functions of one instance; :class:`~edge.wasm.worker.instance.Instance`
    provides the state declared here."""

    spec: LoadSpec
    mem: memoryview
    memlen: int
    mod: Any
    result: CallResult
    columns: Columns
    kv: dict[str, bytes]
    kv_usage: KvUsage
    device: bytes
    ncols: int
    writable: frozenset[int]
    grants: PublishGrant
    models: frozenset[bytes]
    channel: HostChannel | None
    ids: list[bytes]
    n: int
    n8: int
    published: int
    tokens: float
    tokens_at: float
    gas_spent: float
    clock_last: int = 0  # the int object clock_ms returned last
    #: replay mode: the clock values the next reads answer, in order (("clock", ...) request)
    clock_feed: Sequence[tuple[int, int]] = ()
    clock_next: int = 0

    def host_functions(self) -> dict[str, Callable[..., Any]]:
        mode = self.spec.clock
        clock_ms: Callable[[], int] = self.h_clock_ms
        mono_ns: Callable[[], int] = self.h_monotonic_ns
        if mode != CLOCK_LIVE:  # recorded or replayed: every value handed out is reported
            clock_ms, mono_ns = self.h_clock_ms_reported, self.h_monotonic_ns_reported
        return {
            "log": self.h_log, "publish": self.h_publish, "kv_get": self.h_kv_get,
            "kv_put": self.h_kv_put, "clock_ms": clock_ms,
            "monotonic_ns": mono_ns, "batch_len": self.h_batch_len,
            "col_read": self.h_col_read, "col_write": self.h_col_write,
            "entity_id": self.h_entity_id, "device_id": self.h_device_id,
            "infer": self.h_infer,
        }

    def _check(self, ptr: int, length: int, what: str, kind: str = "range") -> None:
        """Trap unless ``(ptr, length)`` lies inside linear memory."""
        if ptr < 0 or length < 0 or ptr + length > self.memlen:
            raise GuestFault(f"{what}: {kind} ({ptr}, {length}) is outside linear memory")

    def _bytes(self, ptr: int, length: int, what: str) -> bytes:
        self._check(ptr, length, what)
        return bytes(self.mem[ptr:ptr + length])

    def _copy_out(self, data: bytes, ptr: int, cap: int, what: str) -> int:
        self._check(ptr, cap, what, "buffer")
        k = min(len(data), cap)
        self.mem[ptr:ptr + k] = data[:k]
        return shared_int(len(data))

    def h_log(self, level: int, ptr: int, length: int) -> None:
        self._check(ptr, length, "log")  # the whole line must be in memory; then it is cut
        text = bytes(self.mem[ptr:ptr + min(length, LOG_MAX_BYTES)])
        now = time.monotonic()
        self.tokens = min(LOG_BURST, self.tokens + (now - self.tokens_at) * LOG_RATE_PER_S)
        self.tokens_at = now
        if self.tokens < 1.0:
            self.result.logs_dropped += 1
            return
        self.tokens -= 1.0
        self.result.logs.append((level, text.decode("utf-8", "replace")))

    def h_publish(self, sptr: int, slen: int, dptr: int, dlen: int) -> int:
        self._check(sptr, slen, "publish")
        self._check(dptr, dlen, "publish")
        if slen > SUBJECT_MAX_BYTES or dlen > PUBLISH_MAX_BYTES:
            return -2
        try:
            subject = self._bytes(sptr, slen, "publish").decode()
        except UnicodeDecodeError:
            return -2
        if not self.grants.allows(subject):
            if not self.grants.valid(subject):
                return -2
            res = self.result
            if len(res.denied) < DENIED_REPORT_MAX:
                res.denied.append(subject)
            else:
                res.denied_extra += 1  # counted, not named
            return -1
        if self.published >= self.spec.publish_per_call:
            return -3
        self.published += 1
        self.result.publishes.append((subject, self._bytes(dptr, dlen, "publish")))
        return 0

    def h_kv_get(self, kptr: int, klen: int, bptr: int, cap: int) -> int:
        self._check(kptr, klen, "kv_get")
        self._check(bptr, cap, "kv_get", "buffer")  # also when the key is absent
        if klen > KV_MAX_KEY:
            return -1
        key = self._bytes(kptr, klen, "kv_get").decode("utf-8", "replace")
        value = self.kv.get(key)
        if value is None:
            return -1
        return self._copy_out(value, bptr, cap, "kv_get")

    def h_kv_put(self, kptr: int, klen: int, vptr: int, vlen: int) -> int:
        self._check(kptr, klen, "kv_put")
        self._check(vptr, vlen, "kv_put")
        if klen > KV_MAX_KEY or vlen > KV_MAX_VALUE:
            return -1
        key = self._bytes(kptr, klen, "kv_put").decode("utf-8", "replace")
        if not KV_KEY_RE.match(key):
            return -1
        value = self._bytes(vptr, vlen, "kv_put")
        old = self.kv.get(key)
        if not self.kv_usage.allows(key, value, old):
            self.result.kv_refused += 1
            return KV_OVER_QUOTA
        self.kv_usage.put(key, value, old)
        self.kv[key] = value
        self.result.kv_puts.append((key, value))
        return 0

    def h_clock_ms(self) -> int:
        # Within one millisecond every call returns the same int object: pywasm3 leaks the
        # object a host function returns, so this leaks one int a millisecond, not one a call.
        ms = time.time_ns() // 1_000_000
        if ms != self.clock_last:
            self.clock_last = ms
        return self.clock_last

    def h_monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def _reported(self, kind: int, live: int) -> int:
        """A clock read of a recorded or replayed component: ``live`` when recording, the next
        fed value when replaying (0 once the feed runs out); reported in the call's result."""
        value = live
        if self.spec.clock == CLOCK_REPLAY:
            i = self.clock_next
            feed = self.clock_feed
            value = feed[i][1] if i < len(feed) else 0
            self.clock_next = i + 1
        res = self.result
        if len(res.clocks) < CLOCK_REPORT_MAX:
            res.clocks.append((kind, value))
        else:
            res.clocks_cut += 1
        return value

    def h_clock_ms_reported(self) -> int:
        return self._reported(CLOCK_MS, time.time_ns() // 1_000_000)

    def h_monotonic_ns_reported(self) -> int:
        return self._reported(CLOCK_NS, time.monotonic_ns())

    def h_batch_len(self) -> int:
        return self.n

    def h_col_read(self, col: int, ptr: int, cap: int) -> int:
        self._check(ptr, cap, "col_read", "buffer")
        n8 = self.n8
        if col < 0 or col >= self.ncols or cap < n8:
            return -1
        return n8 if self.columns.read(col, ptr, self.n) else -1

    def h_col_write(self, col: int, ptr: int, length: int) -> int:
        self._check(ptr, length, "col_write", "buffer")
        n8 = self.n8
        if col not in self.writable or length != n8:
            return -1
        return 0 if self.columns.write(col, ptr, self.n) else -1

    def h_entity_id(self, index: int, ptr: int, cap: int) -> int:
        self._check(ptr, cap, "entity_id", "buffer")
        if index < 0 or index >= self.n or index >= len(self.ids):
            return -1
        return self._copy_out(self.ids[index], ptr, cap, "entity_id")

    def h_device_id(self, ptr: int, cap: int) -> int:
        return self._copy_out(self.device, ptr, cap, "device_id")

    def charge(self, gas: int, what: str) -> None:
        """Spend ``gas`` of the running call's budget from a host import.

        pywasm3 keeps ``gasUsed`` relative to the last ``gasLimit`` assignment, so the budget
        left is set again and what was used so far is kept in ``gas_spent``.
        """
        mod = self.mod
        used = float(mod.gasUsed)
        cost = gas / GAS_UNIT
        left = float(mod.gasLimit) - used - cost
        self.gas_spent += used + cost
        if left <= 0:
            mod.gasLimit = 0.0
            raise HostOutOfGas(f"{what} costs {gas} gas, more than the call had left")
        mod.gasLimit = left

    def h_infer(self, mptr: int, mlen: int, iptr: int, ilen: int, optr: int, ocap: int) -> int:
        # bounds first: a bad pointer traps whatever the grants say
        self._check(optr, ocap, "infer", "buffer")
        self._check(iptr, ilen, "infer")
        self._check(mptr, mlen, "infer")
        model = bytes(self.mem[mptr:mptr + min(mlen, MODEL_NAME_MAX_BYTES + 1)])
        self.charge(INFER_GAS, "infer")
        if len(model) > MODEL_NAME_MAX_BYTES or model not in self.models:
            res = self.result
            if len(res.denied_models) < DENIED_REPORT_MAX:
                res.denied_models.append(model[:MODEL_NAME_MAX_BYTES].decode("utf-8", "replace"))
            else:
                res.denied_models_extra += 1
            return INFER_DENIED
        if ilen > INFER_MAX_INPUT_BYTES:
            return INFER_BAD_INPUT
        data = self._bytes(iptr, ilen, "infer")
        if self.channel is None:
            raise GuestFault("infer: the worker has no channel to the runtime")
        code, hint, payload = self.channel(OP_INFER, ocap, model, data)
        if code >= 0:
            k = min(len(payload), ocap)
            self.mem[optr:optr + k] = payload[:k]
            return shared_int(k)
        if hint and ocap >= 4:  # -3 / -4: the size that was expected, for the component to adapt
            self.mem[optr:optr + 4] = struct.pack("<I", hint)
        return code
