"""The worker's request loop: decode requests, run them on instances, write the replies.

Requests come from the runtime (trusted: pickles, or the ``T`` tick struct; see
:mod:`edge.wasm.protocol`); every reply is written in the fixed format of
:mod:`edge.wasm.wire`. The tick hot path allocates nothing of note: the frame is read into a
reused buffer, unpacked with a precompiled struct and answered from a reused reply buffer.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections import deque
from typing import Any, BinaryIO

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
    TICK_FRAME,
    CallResult,
    LoadSpec,
)
from edge.wasm.wire import encode_clock_reply, encode_host_request, encode_ping, encode_result
from edge.wasm.worker.imports import GuestFault
from edge.wasm.worker.instance import Instance, ModuleRefused

#: Tick request body (the frame minus its length header).
_TICK_BODY = struct.Struct("<" + TICK_FRAME.format[2:])
#: Host reply body (the frame minus its length header).
_HOST_REPLY_BODY = struct.Struct("<" + HOST_REPLY.format[2:])
#: Request bodies up to this size are read into a reused buffer (bytes).
READ_BUFFER_BYTES = 64 * 1024


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
            if not read_exact(inp, head):
                raise GuestFault("the runtime closed the pipe during a host request")
            (size,) = HEADER.unpack(head)
            if size > MAX_FRAME or size == 0:
                raise ValueError(f"request frame of {size} bytes")
            body = bytearray(size)
            if not read_exact(inp, memoryview(body)):
                raise GuestFault("the runtime closed the pipe during a host request")
            if body[0] == KIND_HOST_REPLY:
                _, code, hint = _HOST_REPLY_BODY.unpack_from(body, 0)
                return code, hint, bytes(body[_HOST_REPLY_BODY.size:])
            self.backlog.append(bytes(body))

    def tick(self, flags: int, handle: int, n: int, dt: float) -> bytes | bytearray:
        """Run a tick request; the reply frame (compact when the call only counted)."""
        inst = self.by_handle.get(handle)
        if inst is None:
            REPLY_FRAME.pack_into(self.reply, 0, REPLY_BODY_SIZE, KIND_REPLY, STATUS_GONE, 0, 0,
                                  0, 0)
            return self.reply
        res = inst.result
        res.reset()
        try:
            inst.tick(n, dt, bool(flags & FLAG_SHARED))
        except GuestFault as exc:
            return encode_result("error", text=f"GuestFault: {exc}")
        if res.has_effects():
            if res.has_effects(clocks=False):
                return self._finish(inst, res)
            return encode_clock_reply(res)  # recorded or replayed: only the clock reads
        REPLY_FRAME.pack_into(self.reply, 0, REPLY_BODY_SIZE, KIND_REPLY, STATUS_OK, res.errors,
                              res.logs_dropped, res.gas_used, res.written)
        return self.reply

    def handle(self, req: tuple[Any, ...]) -> bytes:
        """Run one pickled request; its reply frame."""
        op = req[0]
        if op == "setup":
            _, name, ids, shm = req
            inst = self.instances.get(name)
            if inst is None:
                return encode_result("gone")
            if shm is not None:
                inst.map_columns(shm[0], shm[1])
            if ids is not None:
                inst.ids = [i.encode() for i in ids]
            return encode_result("ok")
        if op == "bind":
            inst = self.instances.get(req[1])
            if inst is None:
                return encode_result("gone")
            try:
                inst.bind(req[2])
            except (OSError, ValueError) as exc:
                return encode_result("error", text=f"{type(exc).__name__}: {exc}")
            return encode_result("ok")
        if op == "deliver":
            _, name, messages = req
            inst = self.instances.get(name)
            if inst is None:
                return encode_result("gone")
            res = inst.begin()
            inst.deliver(messages)
            return self._finish(inst, res)
        if op == "health":  # edge_health under its own gas; a fault keeps the instance
            _, name, gas = req
            inst = self.instances.get(name)
            if inst is None or "edge_health" not in inst.exports:
                return encode_result("gone")
            res = inst.begin()
            inst.health(int(gas))
            return encode_result("fault" if res.fault is not None else "ok", res)
        if op == "load":
            return self.load(req[1])
        if op == "unload":
            inst = self.instances.pop(req[1], None)
            if inst is not None:
                self._drop(inst)
            return encode_result("ok")
        if op == "clock":  # replay: the values the next calls' clock reads answer
            inst = self.instances.get(req[1])
            if inst is None:
                return encode_result("gone")
            inst.clock_feed = [(int(k), int(v)) for k, v in req[2]]
            inst.clock_next = 0
            return encode_result("ok")
        if op == "nop":
            return encode_result("ok")
        if op == "ping":
            return encode_ping(os.getpid(), self.loaded, _rss_kb())
        raise ValueError(f"unknown request {op!r}")

    def _drop(self, inst: Instance) -> None:
        if self.by_handle.get(inst.handle) is inst:
            del self.by_handle[inst.handle]
        inst.close()

    def _finish(self, inst: Instance, res: CallResult) -> bytes:
        if res.fault is not None:
            if self.instances.get(inst.name) is inst:
                del self.instances[inst.name]
            self._drop(inst)
            return encode_result("fault", res)
        return encode_result("ok", res)

    def load(self, spec: LoadSpec) -> bytes:
        old = self.instances.pop(spec.name, None)
        if old is not None:
            self._drop(old)
        self.loaded += 1
        try:
            inst = Instance(spec, self.host_request)
        except (RuntimeError, SystemError, ValueError) as exc:
            return encode_result("refused", text=str(exc))
        res = inst.begin()
        if spec.clock_feed:  # replay: what the start function's and edge_init's reads answer
            inst.clock_feed = list(spec.clock_feed)
            inst.clock_next = 0
        try:
            started = inst.start()  # runs the module's start function, if it has one
        except ModuleRefused as exc:
            inst.close()
            return encode_result("refused", text=str(exc))
        self.instances[spec.name] = inst
        self.by_handle[spec.handle] = inst
        if started and spec.call_init and "edge_init" in inst.exports:
            # the start function and edge_init are one call: one gas budget, one publish quota
            rc = inst.call("edge_init", fresh=False)
            if res.fault is None and rc:
                res.fault = ("init_failed", "edge_init", f"edge_init returned {rc}")
        return self._finish(inst, res)


def _rss_kb() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except OSError:
        return 0


def read_exact(inp: BinaryIO, view: memoryview) -> bool:
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
    """Answer requests from ``inp`` on ``out`` until end of input."""
    worker = Worker()
    worker.inp, worker.out = inp, out
    head = memoryview(bytearray(HEADER.size))
    buf = memoryview(bytearray(READ_BUFFER_BYTES))
    backlog = worker.backlog
    while True:
        if backlog:
            body = memoryview(backlog.popleft())
        else:
            if not read_exact(inp, head):
                return
            (size,) = HEADER.unpack(head)
            if size > MAX_FRAME or size == 0:
                raise ValueError(f"request frame of {size} bytes")
            body = buf[:size] if size <= len(buf) else memoryview(bytearray(size))
            if not read_exact(inp, body):
                return
        if body[0] == KIND_HOST_REPLY:
            continue  # a host reply outside a call answers nothing: no reply of our own
        try:
            if body[0] == KIND_TICK:
                _, flags, handle, n, dt = _TICK_BODY.unpack(body)
                reply: bytes | bytearray = worker.tick(flags, handle, n, dt)
            else:
                reply = worker.handle(pickle.loads(body))
        except Exception as exc:  # noqa: BLE001 - report, keep serving other components
            reply = encode_result("error", text=f"{type(exc).__name__}: {exc}")
        out.write(reply)
        out.flush()
