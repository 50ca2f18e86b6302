"""Sandbox worker process: hosts many wasm components, each in its own wasm3 environment.

Run as ``python -m edge.wasm.worker`` by :class:`edge.wasm.pool.SandboxPool`. It reads request
frames on stdin and answers each, in order, on the original stdout (see
:mod:`edge.wasm.protocol`); fd 1 is then pointed at stderr so that nothing else can corrupt the
protocol. wasm3 prints trap backtraces on fd 2, which the runtime reads and logs.

The worker is deliberately stateless about supervision: when a call faults it drops the
instance and reports; the runtime decides when to load it again. Batch columns are not sent
through the pipe. In *shared* mode the worker maps the world's own column files (``bind``) and
the host imports ``col_read`` / ``col_write`` copy between them and the component's linear
memory (a slice when the batch's slots are ``0..n-1``, else a gather/scatter by the slot
index). In *copy* mode they copy from/to a batch file the runtime fills (``setup``).

The worker dies with the runtime: it asks the kernel for SIGKILL when its parent exits, and it
exits at the end of its input. It runs in its own session, so a terminal's or ``timeout``'s
signals to the runtime's process group do not reach it.
"""

from __future__ import annotations

import mmap
import os
import pickle
import re
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from edge.wasm.abi import (
    IMPORT_MODULE,
    IMPORTS_V1,
    INFER_BAD_INPUT,
    INFER_DENIED,
    INFER_GAS,
    KV_MAX_KEY,
    KV_MAX_VALUE,
)
from edge.wasm.protocol import (
    FLAG_SHARED,
    HEADER,
    HOST_REPLY,
    KIND_HOST_REPLY,
    KIND_REPLY,
    KIND_TICK,
    MAX_FRAME,
    REPLY_BODY_SIZE,
    REPLY_FRAME,
    STATUS_GONE,
    STATUS_OK,
    OP_INFER,
    TICK_FRAME,
    BindSpec,
    CallResult,
    LoadSpec,
    encode,
    encode_host_request,
)

F64 = npt.NDArray[np.float64]
#: Tick request body (the frame minus its length header).
_TICK_BODY = struct.Struct("<" + TICK_FRAME.format[2:])
#: Host reply body (the frame minus its length header).
_HOST_REPLY_BODY = struct.Struct("<" + HOST_REPLY.format[2:])
#: Request bodies up to this size are read into a reused buffer (bytes).
READ_BUFFER_BYTES = 64 * 1024
#: Environment variable carrying the runtime's pid (the worker exits if its parent differs).
PARENT_PID_ENV = "EDGE_SANDBOX_PARENT"
PR_SET_PDEATHSIG = 1

#: pywasm3 ``gasLimit`` is a float counted in units of this many gas.
GAS_UNIT = 10_000
#: Log lines a component may emit: burst size and sustained rate (lines/s).
LOG_BURST = 20
LOG_RATE_PER_S = 10.0
#: Longest log line kept (bytes); longer lines are cut.
LOG_MAX_BYTES = 1024
#: Largest message payload ``publish`` accepts (bytes), like nats-server's default max_payload.
PUBLISH_MAX_BYTES = 1024 * 1024
SUBJECT_MAX_BYTES = 256
#: Denied subjects reported per call (the counter counts them all).
DENIED_REPORT_MAX = 8
#: Cached grant decisions per component.
GRANT_CACHE_MAX = 1024
#: Longest model name the infer import looks at (bytes); longer names are not granted.
MODEL_NAME_MAX_BYTES = 64
#: Largest infer input (bytes).
INFER_MAX_INPUT_BYTES = 64 * 1024 * 1024

_SUBJECT_RE = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")
_KV_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class GuestFault(Exception):
    """A host import was called with arguments that violate the contract (bad pointer, ...)."""


class HostOutOfGas(GuestFault):
    """A host import charged more gas than the call had left."""


#: Sends a nested host request ``(op, out_cap, model, data)`` to the runtime and returns its
#: ``(code, hint, payload)`` answer (see :meth:`Worker.host_request`).
HostChannel = Callable[[int, int, bytes, bytes], tuple[int, int, bytes]]


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` matches one token, a final ``>`` matches one or more."""
    p = pattern.split(".")
    s = subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s):
            return False
        if tok != "*" and tok != s[i]:
            return False
    return len(p) == len(s)


class Instance:
    """One component: a wasm3 environment + runtime + module and the host imports it calls."""

    def __init__(self, spec: LoadSpec, channel: HostChannel | None = None) -> None:
        import wasm3

        self.name = spec.name
        self.spec = spec
        self.kv: dict[str, bytes] = dict(spec.kv)
        self.device = spec.device.encode()
        self.ncols = spec.ncols
        self.writable = frozenset(spec.writable)
        self.grants = spec.publish
        self.grant_cache: dict[str, bool] = {}
        self.gas_limit = spec.gas / GAS_UNIT
        self.n = 0
        self.n8 = 0
        self.ids: list[bytes] = []
        self.cols: memoryview | None = None
        self.cols_map: mmap.mmap | None = None
        self.cols_path = ""
        self.stride = 0
        self.handle = spec.handle
        # shared mode: the world's column files, mapped by "bind"
        self.shared = False
        self.maps: dict[tuple[str, int], mmap.mmap] = {}
        self.wcols: list[F64] = []
        self.wviews: list[memoryview] = []
        self.index: npt.NDArray[np.intp] | None = None
        self.bound_n = -1
        self.memf64: F64 | None = None
        self.tokens = float(LOG_BURST)
        self.tokens_at = time.monotonic()
        self.result = CallResult()
        self.published = 0
        self.channel = channel
        self.models = frozenset(m.encode() for m in spec.models)
        self.gas_spent = 0.0  # gas charged by host imports in this call (gasLimit units)

        self.env = wasm3.Environment()
        self.rt = self.env.new_runtime(spec.stack_bytes)
        self.mod = self.env.parse_module(spec.wasm)
        self.rt.load(self.mod)  # link only after load: linking before crashes wasm3
        host: dict[str, Callable[..., Any]] = {
            "log": self.h_log, "publish": self.h_publish, "kv_get": self.h_kv_get,
            "kv_put": self.h_kv_put, "clock_ms": self.h_clock_ms,
            "monotonic_ns": self.h_monotonic_ns, "batch_len": self.h_batch_len,
            "col_read": self.h_col_read, "col_write": self.h_col_write,
            "entity_id": self.h_entity_id, "device_id": self.h_device_id,
            "infer": self.h_infer,
        }
        for name, sig in IMPORTS_V1.items():
            self.mod.link_function(IMPORT_MODULE, name, sig, host[name])
        # The module's memory is pinned (initial == maximum): this view stays valid for good.
        self.mem: memoryview = self.rt.get_memory(0)
        self.memlen = len(self.mem)
        self.exports: dict[str, Any] = {}
        for export in ("edge_alloc", "edge_init", "edge_tick", "edge_on_message"):
            try:
                self.exports[export] = self.rt.find_function(export)
            except RuntimeError as exc:
                if "function lookup failed" not in str(exc):
                    raise

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Drop what can be dropped (wasm3 never frees the runtime itself)."""
        self.unmap()
        self.unbind()
        self.memf64 = None
        self.mem.release()
        self.kv = {}
        self.ids = []
        self.exports = {}

    def unmap(self) -> None:
        if self.cols is not None:
            self.cols.release()
            self.cols = None
        if self.cols_map is not None:
            self.cols_map.close()
            self.cols_map = None

    def map_columns(self, path: str, capacity: int) -> None:
        self.unmap()
        size = self.ncols * capacity * 8
        fd = os.open(path, os.O_RDWR)
        try:
            self.cols_map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.cols = memoryview(self.cols_map)
        self.cols_path = path
        self.stride = capacity * 8

    def unbind(self) -> None:
        for view in self.wviews:
            view.release()
        self.wviews = []
        self.wcols = []
        self.index = None
        self.bound_n = -1
        self.maps = {}  # unmapped once the last view is gone

    def bind(self, spec: BindSpec) -> None:
        """Map the world's column files of a shared-mode batch (mappings are kept and reused)."""
        old = self.maps
        self.unbind()  # a failed bind leaves nothing bound: a shared tick then fails
        index = np.frombuffer(spec.index, dtype=np.intp) if spec.index is not None else None
        maps: dict[tuple[str, int], mmap.mmap] = {}
        for path, ino, nbytes in spec.columns:
            key = (path, ino)
            m = maps.get(key) or old.get(key)
            if m is None or len(m) < nbytes:
                m = _map_column(path, ino, nbytes)
            maps[key] = m
        slots = min((len(maps[(p, i)]) // 8 for p, i, _ in spec.columns), default=0)
        rows = int(index.max()) + 1 if index is not None and len(index) else spec.n
        if index is not None and (len(index) < spec.n or int(index.min(initial=0)) < 0):
            raise ValueError(f"bind: {len(index)} slots for {spec.n} rows")
        if rows > slots:
            raise ValueError(f"bind: slot {rows - 1} is outside the mapped columns ({slots} slots)")
        if len(spec.columns) != self.ncols:
            raise ValueError(f"bind: {len(spec.columns)} columns, the component has {self.ncols}")
        self.maps = maps
        self.wcols = [np.frombuffer(maps[(p, i)], dtype=np.float64) for p, i, _ in spec.columns]
        self.wviews = [memoryview(maps[(p, i)]) for p, i, _ in spec.columns]
        self.index = index
        self.bound_n = spec.n
        if spec.ids is not None:
            self.ids = [i.encode() for i in spec.ids]
        if self.memf64 is None:
            self.memf64 = np.frombuffer(self.mem, dtype=np.float64, count=self.memlen // 8)

    # -- calls -------------------------------------------------------------------------------

    def begin(self) -> CallResult:
        self.result = CallResult()
        return self.result

    def call(self, export: str, *args: Any) -> int | None:
        """Call an export under a fresh gas budget. Returns its result, or None after a fault
        (recorded in ``self.result.fault``)."""
        fn = self.exports[export]
        self.mod.gasLimit = self.gas_limit
        self.gas_spent = 0.0
        self.published = 0
        try:
            rc = fn(*args)
        except HostOutOfGas as exc:
            self.result.fault = ("out_of_gas", export, f"[trap] Out of gas ({exc})")
            return None
        except GuestFault as exc:
            self.result.fault = ("trap", export, f"[trap] {exc}")
            return None
        except RuntimeError as exc:
            text = str(exc)
            reason = "out_of_gas" if "Out of gas" in text else "trap"
            self.result.fault = (reason, export, text)
            return None
        except Exception as exc:  # noqa: BLE001 - anything else a call raises is a trap too
            self.result.fault = ("trap", export, f"{type(exc).__name__}: {exc}")
            return None
        finally:
            self.result.gas_used = int((self.gas_spent + self.mod.gasUsed) * GAS_UNIT)
        return int(rc) if rc is not None else 0

    def tick(self, n: int, dt: float, shared: bool = False) -> None:
        if shared:
            if n != self.bound_n:
                raise GuestFault(f"tick of {n} rows, but {self.bound_n} are bound")
        elif self.cols is None and self.ncols:
            raise GuestFault("no batch mapped")
        self.shared = shared
        self.n = n
        self.n8 = n * 8
        try:
            rc = self.call("edge_tick", n, dt)
        finally:
            self.n = self.n8 = 0
        if rc:
            self.result.errors += 1

    def deliver(self, messages: list[tuple[str, bytes]]) -> None:
        res = self.result
        alloc = "edge_alloc"
        for i, (subject, data) in enumerate(messages):
            sb = subject.encode()
            ls = len(sb)
            size = ls + len(data)
            ptr = self.call(alloc, size)
            if ptr is None:
                res.dropped += len(messages) - i
                return
            if ptr <= 0 or ptr + size > self.memlen:
                if ptr == 0:
                    res.dropped += 1
                    continue
                res.fault = ("trap", alloc, (f"[trap] edge_alloc returned an out-of-bounds "
                                            f"buffer ({ptr}, {size} bytes)"))
                res.dropped += len(messages) - i
                return
            self.mem[ptr:ptr + ls] = sb
            self.mem[ptr + ls:ptr + size] = data
            res.messages += 1
            rc = self.call("edge_on_message", ptr, ls, ptr + ls, len(data))
            if rc is None:
                res.dropped += len(messages) - i - 1
                return
            if rc:
                res.errors += 1

    # -- host imports ------------------------------------------------------------------------

    def _bytes(self, ptr: int, length: int, what: str) -> bytes:
        if ptr < 0 or length < 0 or ptr + length > self.memlen:
            raise GuestFault(f"{what}: range ({ptr}, {length}) is outside linear memory")
        return bytes(self.mem[ptr:ptr + length])

    def _copy_out(self, data: bytes, ptr: int, cap: int, what: str) -> int:
        if cap < 0 or ptr < 0 or ptr + cap > self.memlen:
            raise GuestFault(f"{what}: buffer ({ptr}, {cap}) is outside linear memory")
        k = min(len(data), cap)
        self.mem[ptr:ptr + k] = data[:k]
        return len(data)

    def h_log(self, level: int, ptr: int, length: int) -> None:
        text = self._bytes(ptr, min(length, LOG_MAX_BYTES), "log")
        now = time.monotonic()
        self.tokens = min(LOG_BURST, self.tokens + (now - self.tokens_at) * LOG_RATE_PER_S)
        self.tokens_at = now
        if self.tokens < 1.0:
            self.result.logs_dropped += 1
            return
        self.tokens -= 1.0
        self.result.logs.append((level, text.decode("utf-8", "replace")))

    def h_publish(self, sptr: int, slen: int, dptr: int, dlen: int) -> int:
        if slen > SUBJECT_MAX_BYTES or dlen > PUBLISH_MAX_BYTES:
            return -2
        try:
            subject = self._bytes(sptr, slen, "publish").decode()
        except UnicodeDecodeError:
            return -2
        ok = self.grant_cache.get(subject)
        if ok is None:
            if not _SUBJECT_RE.match(subject):
                return -2
            ok = any(subject_matches(p, subject) for p in self.grants)
            if len(self.grant_cache) >= GRANT_CACHE_MAX:
                self.grant_cache.clear()
            self.grant_cache[subject] = ok
        res = self.result
        if not ok:
            if len(res.denied) < DENIED_REPORT_MAX:
                res.denied.append(subject)
            else:
                res.denied.append("")  # counted, not named
            return -1
        if self.published >= self.spec.publish_per_call:
            return -3
        self.published += 1
        res.publishes.append((subject, self._bytes(dptr, dlen, "publish")))
        return 0

    def h_kv_get(self, kptr: int, klen: int, bptr: int, cap: int) -> int:
        if klen > KV_MAX_KEY:
            return -1
        key = self._bytes(kptr, klen, "kv_get").decode("utf-8", "replace")
        value = self.kv.get(key)
        if value is None:
            return -1
        return self._copy_out(value, bptr, cap, "kv_get")

    def h_kv_put(self, kptr: int, klen: int, vptr: int, vlen: int) -> int:
        if klen > KV_MAX_KEY or vlen > KV_MAX_VALUE or vlen < 0:
            return -1
        key = self._bytes(kptr, klen, "kv_put").decode("utf-8", "replace")
        if not _KV_KEY_RE.match(key):
            return -1
        value = self._bytes(vptr, vlen, "kv_put")
        self.kv[key] = value
        self.result.kv_puts.append((key, value))
        return 0

    def h_clock_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def h_monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def h_batch_len(self) -> int:
        return self.n

    def _mem_f64(self, ptr: int, n: int) -> F64:
        """Linear memory at ``ptr`` as ``n`` float64 (a view; aligned pointers are cheapest)."""
        if ptr & 7 == 0 and self.memf64 is not None:
            return self.memf64[ptr >> 3:(ptr >> 3) + n]
        return np.frombuffer(self.mem, dtype=np.float64, count=n, offset=ptr)

    def h_col_read(self, col: int, ptr: int, cap: int) -> int:
        n8 = self.n8
        if col < 0 or col >= self.ncols or cap < n8:
            return -1
        if ptr < 0 or ptr + n8 > self.memlen:
            raise GuestFault(f"col_read: buffer ({ptr}, {n8}) is outside linear memory")
        if self.shared:
            if self.index is None:
                self.mem[ptr:ptr + n8] = self.wviews[col][:n8]
            else:  # slots validated by bind: "clip" skips the bounds check and its buffering
                np.take(self.wcols[col], self.index[:self.n], out=self._mem_f64(ptr, self.n),
                        mode="clip")
            return n8
        if self.cols is None:
            return -1
        off = col * self.stride
        self.mem[ptr:ptr + n8] = self.cols[off:off + n8]
        return n8

    def h_col_write(self, col: int, ptr: int, length: int) -> int:
        n8 = self.n8
        if col not in self.writable or length != n8:
            return -1
        if ptr < 0 or ptr + n8 > self.memlen:
            raise GuestFault(f"col_write: buffer ({ptr}, {n8}) is outside linear memory")
        if self.shared:
            if self.index is None:
                self.wviews[col][:n8] = self.mem[ptr:ptr + n8]
            else:
                # fancy assignment: ~4x faster than np.put here
                self.wcols[col][self.index[:self.n]] = self._mem_f64(ptr, self.n)
            return 0
        if self.cols is None:
            return -1
        off = col * self.stride
        self.cols[off:off + n8] = self.mem[ptr:ptr + n8]
        return 0

    def h_entity_id(self, index: int, ptr: int, cap: int) -> int:
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
        if ocap < 0 or optr < 0 or optr + ocap > self.memlen:
            raise GuestFault(f"infer: buffer ({optr}, {ocap}) is outside linear memory")
        if iptr < 0 or ilen < 0 or iptr + ilen > self.memlen:
            raise GuestFault(f"infer: range ({iptr}, {ilen}) is outside linear memory")
        model = self._bytes(mptr, min(mlen, MODEL_NAME_MAX_BYTES + 1), "infer")
        self.charge(INFER_GAS, "infer")
        if len(model) > MODEL_NAME_MAX_BYTES or model not in self.models:
            res = self.result
            named = model[:MODEL_NAME_MAX_BYTES].decode("utf-8", "replace")
            res.denied_models.append(named if len(res.denied_models) < DENIED_REPORT_MAX else "")
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
            return k
        if hint and ocap >= 4:  # -3 / -4: the size that was expected, for the component to adapt
            self.mem[optr:optr + 4] = struct.pack("<I", hint)
        return code


class Worker:
    """The request loop: one instance per component name."""

    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}
        self.by_handle: dict[int, Instance] = {}
        self.loaded = 0  # instances created over the process lifetime (wasm3 never frees them)
        self.reply = bytearray(REPLY_FRAME.size)  # reused for every compact tick reply
        self.inp: BinaryIO | None = None
        self.out: BinaryIO | None = None
        # request bodies read while a call waited for a host reply, served after it
        self.backlog: deque[bytes] = deque()

    def host_request(self, op: int, out_cap: int, model: bytes, data: bytes
                     ) -> tuple[int, int, bytes]:
        """Ask the runtime for something during a call and block until it answers.

        Requests the runtime pipelined meanwhile are kept in :attr:`backlog`, in order.
        """
        inp, out = self.inp, self.out
        if inp is None or out is None:
            raise GuestFault("no runtime connection for a host request")
        out.write(encode_host_request(op, out_cap, model, data))
        out.flush()
        head = memoryview(bytearray(HEADER.size))
        while True:
            if not _read_exact(inp, head):
                raise GuestFault("the runtime closed the pipe during a host request")
            (size,) = HEADER.unpack(head)
            if size > MAX_FRAME or size == 0:
                raise ValueError(f"request frame of {size} bytes")
            body = bytearray(size)
            if not _read_exact(inp, memoryview(body)):
                raise GuestFault("the runtime closed the pipe during a host request")
            if body[0] == KIND_HOST_REPLY:
                _, code, hint = _HOST_REPLY_BODY.unpack_from(body, 0)
                return code, hint, bytes(body[_HOST_REPLY_BODY.size:])
            self.backlog.append(bytes(body))

    def tick(self, flags: int, handle: int, n: int, dt: float) -> bytes | bytearray:
        """Run a tick request; the reply frame (compact when the call only counted)."""
        inst = self.by_handle.get(handle)
        if inst is None:
            REPLY_FRAME.pack_into(self.reply, 0, REPLY_BODY_SIZE, KIND_REPLY, STATUS_GONE, 0, 0, 0)
            return self.reply
        res = inst.result
        res.reset()
        try:
            inst.tick(n, dt, bool(flags & FLAG_SHARED))
        except GuestFault as exc:
            return encode(("error", f"GuestFault: {exc}"))
        if res.has_effects():
            return encode(self._finish(inst, res))
        REPLY_FRAME.pack_into(self.reply, 0, REPLY_BODY_SIZE, KIND_REPLY, STATUS_OK, res.errors,
                              res.logs_dropped, res.gas_used)
        return self.reply

    def handle(self, req: tuple[Any, ...]) -> tuple[str, Any]:
        op = req[0]
        if op == "setup":
            _, name, ids, shm = req
            inst = self.instances.get(name)
            if inst is None:
                return ("gone", None)
            if shm is not None:
                inst.map_columns(shm[0], shm[1])
            if ids is not None:
                inst.ids = [i.encode() for i in ids]
            return ("ok", None)
        if op == "bind":
            inst = self.instances.get(req[1])
            if inst is None:
                return ("gone", None)
            try:
                inst.bind(req[2])
            except (OSError, ValueError) as exc:
                return ("error", f"{type(exc).__name__}: {exc}")
            return ("ok", None)
        if op == "deliver":
            _, name, messages = req
            inst = self.instances.get(name)
            if inst is None:
                return ("gone", None)
            res = inst.begin()
            inst.deliver(messages)
            return self._finish(inst, res)
        if op == "load":
            return self.load(req[1])
        if op == "unload":
            inst = self.instances.pop(req[1], None)
            if inst is not None:
                self._drop(inst)
            return ("ok", None)
        if op == "nop":
            return ("ok", None)
        if op == "ping":
            return ("ok", {"pid": os.getpid(), "instances": self.loaded, "rss_kb": _rss_kb()})
        raise ValueError(f"unknown request {op!r}")

    def _drop(self, inst: Instance) -> None:
        if self.by_handle.get(inst.handle) is inst:
            del self.by_handle[inst.handle]
        inst.close()

    def _finish(self, inst: Instance, res: CallResult) -> tuple[str, Any]:
        if res.fault is not None:
            if self.instances.get(inst.name) is inst:
                del self.instances[inst.name]
            self._drop(inst)
            return ("fault", res)
        return ("ok", res)

    def load(self, spec: LoadSpec) -> tuple[str, Any]:
        old = self.instances.pop(spec.name, None)
        if old is not None:
            self._drop(old)
        self.loaded += 1
        try:
            inst = Instance(spec, self.host_request)
        except (RuntimeError, SystemError, ValueError) as exc:
            return ("refused", str(exc))
        self.instances[spec.name] = inst
        self.by_handle[spec.handle] = inst
        res = inst.begin()
        if spec.call_init and "edge_init" in inst.exports:
            rc = inst.call("edge_init")
            if res.fault is None and rc:
                res.fault = ("init_failed", "edge_init", f"edge_init returned {rc}")
        return self._finish(inst, res)


def _rss_kb() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except OSError:
        return 0


def _map_column(path: str, ino: int, nbytes: int) -> mmap.mmap:
    """Map ``nbytes`` of a world column file, checking it is the file the runtime meant."""
    fd = os.open(path, os.O_RDWR)
    try:
        st = os.fstat(fd)
        if st.st_ino != ino:
            raise ValueError(f"{path} is not the column file the runtime named")
        if st.st_size < nbytes:
            raise ValueError(f"{path} holds {st.st_size} bytes, {nbytes} expected")
        return mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)


def _read_exact(inp: BinaryIO, view: memoryview) -> bool:
    """Fill ``view`` from ``inp``; False at end of input."""
    got = 0
    size = len(view)
    while got < size:
        k = inp.readinto(view[got:])  # type: ignore[attr-defined]
        if not k:
            return False
        got += k
    return True


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer requests from ``inp`` on ``out`` until end of input.

    The tick hot path allocates nothing of note: the frame is read into a reused buffer,
    unpacked with a precompiled struct and answered from a reused reply buffer.
    """
    worker = Worker()
    worker.inp, worker.out = inp, out
    head = memoryview(bytearray(HEADER.size))
    buf = memoryview(bytearray(READ_BUFFER_BYTES))
    backlog = worker.backlog
    while True:
        if backlog:
            body = memoryview(backlog.popleft())
        else:
            if not _read_exact(inp, head):
                return
            (size,) = HEADER.unpack(head)
            if size > MAX_FRAME or size == 0:
                raise ValueError(f"request frame of {size} bytes")
            body = buf[:size] if size <= len(buf) else memoryview(bytearray(size))
            if not _read_exact(inp, body):
                return
        if body[0] == KIND_HOST_REPLY:
            continue  # a host reply outside a call answers nothing: no reply of our own
        try:
            if body[0] == KIND_TICK:
                _, flags, handle, n, dt = _TICK_BODY.unpack(body)
                reply: bytes | bytearray = worker.tick(flags, handle, n, dt)
            else:
                reply = encode(worker.handle(pickle.loads(body)))
        except Exception as exc:  # noqa: BLE001 - report, keep serving other components
            reply = encode(("error", f"{type(exc).__name__}: {exc}"))
        out.write(reply)
        out.flush()


def _die_with_parent() -> None:
    """Get SIGKILLed when the runtime exits (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        except (OSError, AttributeError):
            pass
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):
        sys.exit(0)  # the runtime died before we could ask


def main() -> None:
    """Entry point: protocol on the original stdout, fd 1 redirected to stderr."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runtime decides when we stop
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out = os.fdopen(proto_fd, "wb", buffering=1 << 16)
    inp = os.fdopen(os.dup(0), "rb", buffering=1 << 16)
    try:
        serve(inp, out)
    except (BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
