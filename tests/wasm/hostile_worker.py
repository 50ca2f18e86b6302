"""A hostile sandbox worker, for tests only (started through ``SandboxPool(worker_command=...)``).

It plays a worker that a component has taken over: it answers ``ping``, ``load`` and ``bind``
like the real one (``bind`` maps the world's columns with the real worker's read-only mapping),
and answers each tick with the attack named in the file ``argv[1]`` (read at every tick, so a
test can change it between ticks). ``ok`` answers honestly (a tick that wrote nothing).

Usage: ``python hostile_worker.py ATTACK_FILE``
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import struct
import sys
from typing import Any, BinaryIO

import numpy as np

from edge.wasm.manifest import DEFAULT_KV_KEYS
from edge.wasm.protocol import HEADER, KIND_TICK, TICK_FRAME, BindSpec, CallResult
from edge.wasm.wire import (
    HOST_REQUEST,
    KIND_HOST_REQUEST,
    KIND_RESULT,
    REPLY,
    RESULT_HEAD,
    STATUS_OK,
    encode_ping,
    encode_reply,
    encode_result,
)
from edge.wasm.worker.columns import map_column

_TICK_BODY = struct.Struct("<" + TICK_FRAME.format[2:])


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def result_head(n_pub: int = 0, n_kv: int = 0, status: int = STATUS_OK) -> bytes:
    return RESULT_HEAD.pack(KIND_RESULT, status, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n_pub, n_kv, 0,
                            0, 0)


class Hostile:
    def __init__(self, attack_file: str, out: BinaryIO) -> None:
        self.attack_file = attack_file
        self.out = out
        self.bind: BindSpec | None = None
        self.nwrite = 0

    def attack(self) -> str:
        with open(self.attack_file) as f:
            return f.read().strip()

    def send(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()

    def handle(self, req: tuple[Any, ...]) -> None:
        op = req[0]
        if op == "ping":
            self.send(encode_ping(os.getpid(), 0, 0))
        elif op == "load":
            self.nwrite = len(req[1].writable)
            self.send(encode_result("ok"))
        elif op == "bind":
            spec: BindSpec = req[2]
            for path, ino, nbytes in spec.columns:  # the real worker's mapping: read-only
                map_column(path, ino, nbytes)
            self.bind = spec
            self.send(encode_result("ok"))
        else:
            self.send(encode_result("ok"))

    def tick(self, n: int) -> None:
        attack = self.attack()
        print(f"hostile worker {os.getpid()}: {attack}", file=sys.stderr, flush=True)
        if attack == "ok":
            self.send(encode_reply(STATUS_OK, 0, 0, 0, 0))
        elif attack == "random":  # a plausible length, then noise
            self.send(HEADER.pack(64) + os.urandom(64))
        elif attack == "huge_length":
            self.send(HEADER.pack(0xFFFF_FFF0) + b"R" * 64)
        elif attack == "unknown_kind":
            self.send(frame(b"Z" + bytes(REPLY.size - 1)))
        elif attack == "bad_status":
            self.send(frame(REPLY.pack(0x52, 9, 0, 0, 0, 0)))
        elif attack == "truncated_items":  # claims 3 publishes, carries none
            self.send(frame(result_head(n_pub=3) + struct.pack("<I", 0)))
        elif attack == "huge_item":  # a publish payload length far past the frame
            body = result_head(n_pub=1) + struct.pack("<HI", 3, 0x7FFF_FFFF) + b"a.b"
            self.send(frame(body + struct.pack("<I", 0)))
        elif attack == "unsolicited":  # an answer, then an answer to a call never made
            self.send(encode_reply(STATUS_OK, 0, 0, 0, 0) * 2)
        elif attack == "wrong_kind":  # a ping reply to a tick
            self.send(encode_ping(1, 2, 3))
        elif attack == "host_request_bad_op":
            self.send(frame(HOST_REQUEST.pack(KIND_HOST_REQUEST, 7, 16, 0)))
        elif attack == "infer_not_granted":
            self.send(frame(HOST_REQUEST.pack(KIND_HOST_REQUEST, 0, 16, 6) + b"secret"))
        elif attack == "publish_outside_grant":
            res = CallResult(publishes=[("edge.other-device.cmd.arm", b"boom")])
            self.send(encode_result("ok", res))
        elif attack == "kv_outside_limits":
            res = CallResult(kv_puts=[("../escape", b"x")])
            self.send(encode_result("ok", res))
        elif attack == "kv_over_quota":  # each put within the limits, together past the quota
            res = CallResult(kv_puts=[(f"k{i}", b"x") for i in range(DEFAULT_KV_KEYS + 1)])
            self.send(encode_result("ok", res))
        elif attack == "write_bits_outside":  # claims a write column the manifest lacks
            self.send(encode_reply(STATUS_OK, 0, 0, 0, 1 << self.nwrite))
        elif attack == "garbage_in_own_write_set":  # allowed: its own write columns and rows
            assert self.bind is not None and self.bind.output is not None
            path, capacity = self.bind.output
            fd = os.open(path, os.O_RDWR)
            out = mmap.mmap(fd, self.nwrite * capacity * 8)
            os.close(fd)
            np.frombuffer(out, dtype=np.float64)[:] = -6.66e66  # every row, batch or not
            self.send(encode_reply(STATUS_OK, 0, 0, 0, (1 << self.nwrite) - 1))
        elif attack == "write_read_only":
            assert self.bind is not None
            path, ino, nbytes = self.bind.columns[-1]  # a read-only column (velocity.z)
            fd = os.open(path, os.O_RDONLY)
            try:
                mmap.mmap(fd, nbytes, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except PermissionError as exc:
                print(f"hostile: writable mapping refused: {exc.strerror}", file=sys.stderr,
                      flush=True)
            m = map_column(path, ino, nbytes)
            addr = np.frombuffer(m, dtype=np.uint8).ctypes.data
            print("hostile: storing into the read-only mapping", file=sys.stderr, flush=True)
            ctypes.memset(addr, 0xFF, nbytes)  # SIGSEGV
            print("hostile: the store went through", file=sys.stderr, flush=True)
            self.send(encode_reply(STATUS_OK, 0, 0, 0, 0))
        else:
            raise SystemExit(f"unknown attack {attack!r}")


def main() -> None:
    proto = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = os.fdopen(os.dup(0), "rb")
    hostile = Hostile(sys.argv[1], proto)
    while True:
        head = inp.read(HEADER.size)
        if len(head) < HEADER.size:
            return
        (size,) = HEADER.unpack(head)
        body = inp.read(size)
        if body[0] == KIND_TICK:
            _, _flags, _handle, n, _dt = _TICK_BODY.unpack(body)
            hostile.tick(n)
        elif body[0] == 0x80:
            hostile.handle(pickle.loads(body))  # a test program trusting the test's runtime


if __name__ == "__main__":
    main()
