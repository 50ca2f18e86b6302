"""One sandbox worker process as seen from the runtime (asyncio side of the pipe protocol).

:class:`WorkerProcess` starts ``python -m edge.wasm.worker`` (or a test-only ``command``),
sends request frames, decodes every frame the worker writes with the checked fixed format of
:mod:`edge.wasm.wire` (never a pickle), resolves one future per request in first-in first-out
order, logs the worker's stderr (wasm3 trap
backtraces) at DEBUG with a rate limit, and kills the process with SIGKILL when the request at
the head of the queue runs past the wall-clock deadline. Nested host requests the worker makes
during a call (``infer``) go to the ``on_host_request`` callback; the deadline clock of the
running call is paused while one is outstanding (the host bounds it with its own timeout). It
reports the process's end through the ``on_exit`` callback; supervision (what to restart) is
:mod:`edge.wasm.supervision`'s job.

A frame that fails to decode, a reply of the wrong kind, a reply nobody asked for or a host
request outside a call is a *protocol violation*: the worker is hostile or broken. The process
is killed at once, the rest of what it wrote is ignored, and its end is reported with reason
``protocol``.

The worker runs in its own session (a Ctrl-C or ``timeout`` aimed at the runtime's process group
does not reach it: the runtime stops it in order) and dies with the runtime (it asks the kernel
for SIGKILL when its parent exits, and exits at the end of its input).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import SandboxError
from edge.wasm.protocol import (
    HEADER,
    KIND_REPLY,
    MAX_FRAME,
    PARENT_PID_ENV,
    STATUS_GONE,
    STATUS_OK,
    CallResult,
    encode,
    encode_host_reply,
)
from edge.wasm.stderr import log_stderr
from edge.wasm.wire import (
    EXPECT_PING,
    EXPECT_RESULT,
    EXPECT_TICK,
    KIND_HOST_REQUEST,
    REPLY,
    ProtocolError,
    decode_answer,
    decode_host_request,
)

log = logging.getLogger("edge.wasm.pool")

#: How often the deadline watchdog looks at the head request (seconds).
WATCHDOG_INTERVAL_S = 0.05
#: How long a worker may take to start and answer its first ping (seconds).
START_TIMEOUT_S = 15.0
#: How long a worker may take to exit after its stdin is closed (seconds).
STOP_TIMEOUT_S = 2.0
#: Bytes read from the reply pipe per call (a larger os.read allocates that much every time).
READ_CHUNK_BYTES = 64 * 1024
#: Largest reply frame the runtime accepts from a worker (bytes).
MAX_REPLY_FRAME = MAX_FRAME

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
#: How a worker is started: ``python -P -m edge.wasm.worker`` (``-P``: the working directory is
#: not put on ``sys.path``, so an ``edge/`` there cannot replace the worker; ``PYTHONPATH``
#: names this package).
DEFAULT_WORKER_COMMAND = (sys.executable, "-P", "-m", "edge.wasm.worker")


class WorkerGone(SandboxError):
    """The worker process ended before answering a request."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(f"sandbox worker {pid} exited", reason="crashed")
        self.pid = pid


@dataclass
class Pending:
    """A request the worker has not answered yet."""

    component: str | None
    export: str
    future: asyncio.Future[tuple[str, Any]]
    sent_at: float = field(default_factory=time.monotonic)
    expect: frozenset[int] = EXPECT_RESULT  # reply kinds this request accepts
    host_s: float = 0.0  # time spent waiting for the host on nested requests (seconds)


ExitCallback = Callable[["WorkerProcess", "Pending | None", str, int | None], None]


@dataclass(frozen=True)
class HostRequest:
    """A nested request the worker made during a call (see :mod:`edge.wasm.protocol`)."""

    worker: WorkerProcess
    call: Pending | None  # the call that made it (the head of the queue)
    op: int
    out_cap: int
    model: str
    data: bytes


#: Called (synchronously, in the event loop) for each nested host request; it must arrange for
#: exactly one :meth:`WorkerProcess.reply_host` (the worker blocks until then).
HostRequestCallback = Callable[[HostRequest], None]


class WorkerProcess:
    """A worker process and its request queue."""

    def __init__(self, deadline_s: float, on_exit: ExitCallback, index: int = 0,
                 on_host_request: HostRequestCallback | None = None,
                 command: Sequence[str] = DEFAULT_WORKER_COMMAND) -> None:
        self.deadline_s = deadline_s
        self.command = tuple(command)
        self.violation: str | None = None  # the protocol violation it was killed for
        self.starting = False
        self.on_exit = on_exit
        self.on_host_request = on_host_request
        self.host_since: float | None = None  # a nested host request is outstanding since
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.pending: deque[Pending] = deque()
        self.hosted: set[str] = set()
        self.instances = 0  # instantiations sent to this process (wasm3 never frees them)
        self.reserved_bytes = 0  # memory those instantiations took, live or leaked
        self.rss_floor = 0  # its RSS at start, or after it took over a recycled worker's components
        self.alive = False
        self.stopping = False
        self.killed_for_deadline: Pending | None = None
        self.last_done = time.monotonic()
        self.window: asyncio.Semaphore | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._rfd = -1
        self._rbuf = bytearray()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self, max_in_flight: int) -> None:
        if self.proc is not None:
            raise SandboxError("this sandbox worker was already started; a WorkerProcess runs "
                               "one process, make a new one to start another", reason="usage")
        env = dict(os.environ)
        env["PYTHONPATH"] = _PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env[PARENT_PID_ENV] = str(os.getpid())
        # Replies come through a pipe we read with loop.add_reader: one callback parses every
        # complete frame and resolves futures directly (far fewer loop round trips than a
        # StreamReader, which matters on the tick path).
        rfd, wfd = os.pipe()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE, stdout=wfd,
                stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
            )
        except BaseException:
            os.close(rfd)
            raise
        finally:
            os.close(wfd)
        os.set_blocking(rfd, False)
        self._rfd = rfd
        self.alive = True
        self.window = asyncio.Semaphore(max_in_flight)
        asyncio.get_running_loop().add_reader(rfd, self._on_readable)
        proc = self.proc
        if proc.stderr is None:  # pragma: no cover - stderr=PIPE above
            raise SandboxError("sandbox worker started without a stderr pipe", reason="start")
        self._tasks = [
            asyncio.create_task(log_stderr(proc.stderr, proc.pid), name=f"sandbox-stderr-{self.pid}"),
            asyncio.create_task(self._watchdog(), name=f"sandbox-watchdog-{self.pid}"),
        ]
        self.starting = True  # the first ping is bounded by START_TIMEOUT_S, not the deadline
        try:
            await asyncio.wait_for(self.send(("ping",), None, "ping"), START_TIMEOUT_S)
        except (TimeoutError, SandboxError) as exc:
            await self.stop()
            raise SandboxError(f"sandbox worker did not start: {exc}", reason="start") from exc
        finally:
            self.starting = False
        log.debug("sandbox worker %d started", self.pid)

    def send(
        self, request: tuple[Any, ...] | bytes, component: str | None, export: str
    ) -> asyncio.Future[tuple[str, Any]]:
        """Write one request (a tuple to pickle, or a ready tick frame from
        :func:`~edge.wasm.protocol.encode_tick`); the future resolves to the worker's decoded
        ``(status, payload)`` reply or fails with :class:`WorkerGone`."""
        fut: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        if not self.alive or self.proc is None or self.proc.stdin is None:
            fut.set_exception(WorkerGone(self.pid))
            return fut
        now = time.monotonic()
        if not self.pending:
            self.last_done = now
        if isinstance(request, bytes):
            expect = EXPECT_TICK
        else:
            expect = EXPECT_PING if request[0] == "ping" else EXPECT_RESULT
        self.pending.append(Pending(component, export, fut, now, expect=expect))
        try:
            self.proc.stdin.write(request if isinstance(request, bytes) else encode(request))
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass  # the reader sees the end of the process and fails every pending future
        return fut

    def reply_host(self, code: int, hint: int = 0, payload: bytes = b"") -> None:
        """Answer the outstanding nested host request; resumes the deadline clock."""
        since = self.host_since
        self.host_since = None
        if since is not None:
            waited = time.monotonic() - since
            if self.pending:  # the call's deadline does not count the host's time
                head = self.pending[0]
                head.sent_at += waited
                head.host_s += waited
            self.last_done += waited
        if not self.alive or self.proc is None or self.proc.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            self.proc.stdin.write(encode_host_reply(code, hint, payload))

    def _host_request(self, view: memoryview) -> None:
        if not self.pending or self.host_since is not None:
            raise ProtocolError("host request outside a call, or while one is outstanding")
        frame = decode_host_request(view)
        req = HostRequest(self, self.pending[0], frame.op, frame.out_cap, frame.model,
                          frame.data)
        self.host_since = time.monotonic()
        if self.on_host_request is None:
            self.reply_host(-2)
            return
        try:
            self.on_host_request(req)
        except Exception:
            log.exception("sandbox worker %d: host request failed", self.pid)
            self.reply_host(-5)

    async def ping(self) -> dict[str, Any]:
        status, payload = await self.send(("ping",), None, "ping")
        return dict(payload) if status == "ok" else {}

    async def stop(self) -> None:
        """Close stdin (the worker finishes pending requests and exits), then make sure."""
        self.stopping = True
        proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self._close_reader()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for task in self._tasks:
            if task is not asyncio.current_task():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._fail_pending()
        self.alive = False

    def violate(self, text: str) -> None:
        """Record a protocol violation by this worker and kill it (its end is reported with
        reason ``protocol``)."""
        if self.violation is None:
            self.violation = text
            log.error("sandbox worker %s broke the protocol (%s); killing it", self.pid, text)
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    # -- tasks -------------------------------------------------------------------------------

    def _fail_pending(self) -> None:
        while self.pending:
            p = self.pending.popleft()
            if not p.future.done():
                p.future.set_exception(WorkerGone(self.pid))
                p.future.exception()  # mark retrieved: callers may have given up on it

    def _on_readable(self) -> None:
        try:
            data = os.read(self._rfd, READ_CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_reader()
            if self.proc is not None:
                self._tasks.append(asyncio.create_task(self._finish_exit(self.proc)))
            return
        if self.violation is not None:
            return  # killed for a violation: nothing more it writes is read
        buf = self._rbuf
        buf += data
        pos = 0
        end = len(buf)
        try:
            while end - pos >= HEADER.size:
                (size,) = HEADER.unpack_from(buf, pos)
                if size == 0 or size > MAX_REPLY_FRAME:
                    raise ProtocolError(f"frame of {size} bytes")
                if end - pos - HEADER.size < size:
                    break
                start = pos + HEADER.size
                kind = buf[start]
                if kind == KIND_REPLY and size == REPLY.size and self.pending:
                    self._compact(buf, start)  # the tick hot path: no memoryview, no copy
                    pos = start + size
                    continue
                with memoryview(buf) as view:
                    body = view[start:start + size]
                    try:
                        if kind == KIND_HOST_REQUEST:
                            self._host_request(body)
                        else:
                            self._answer(kind, body)
                    finally:
                        body.release()
                pos = start + size
        except ProtocolError as exc:
            self.violate(exc.message)
            pos = end
        del buf[:pos]

    def _compact(self, buf: bytearray, start: int) -> None:
        head = self.pending[0]
        if KIND_REPLY not in head.expect:
            raise ProtocolError(f"a reply of kind {KIND_REPLY:#04x} to {head.export}")
        _, status, errors, logs_dropped, gas, written = REPLY.unpack_from(buf, start)
        if status == STATUS_OK:
            name = "ok"
        elif status == STATUS_GONE:
            name = "gone"
        else:
            raise ProtocolError(f"compact reply with status code {status}")
        self.last_done = time.monotonic()
        self.pending.popleft()
        if not head.future.done():
            head.future.set_result((name, CallResult(gas_used=gas, errors=errors,
                                                     logs_dropped=logs_dropped, written=written)))

    def _answer(self, kind: int, body: memoryview) -> None:
        if not self.pending:
            raise ProtocolError("a reply to no request")
        head = self.pending[0]
        if kind not in head.expect:
            raise ProtocolError(f"a reply of kind {kind:#04x} to {head.export}")
        reply = decode_answer(kind, body)
        self.last_done = time.monotonic()
        p = self.pending.popleft()
        if not p.future.done():
            p.future.set_result(reply)

    def _close_reader(self) -> None:
        if self._rfd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._rfd)
            os.close(self._rfd)
            self._rfd = -1

    async def _finish_exit(self, proc: asyncio.subprocess.Process) -> None:
        self.alive = False
        culprit = self.pending[0] if self.pending else None
        code = await proc.wait()
        reason = "deadline" if self.killed_for_deadline is not None else "crashed"
        if self.killed_for_deadline is not None:
            culprit = self.killed_for_deadline
        if self.violation is not None:
            reason = "protocol"
        if not self.stopping:
            self.on_exit(self, culprit, reason, code)  # before callers see their requests fail
        self._fail_pending()

    async def _watchdog(self) -> None:
        while self.alive:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            if (not self.pending or self.killed_for_deadline is not None or self.starting
                    or self.host_since is not None):
                continue
            head = self.pending[0]
            started = max(head.sent_at, self.last_done)
            if time.monotonic() - started > self.deadline_s:
                log.error(
                    "sandbox worker %d: %s of component '%s' ran past the %.1f s deadline; "
                    "killing the worker",
                    self.pid,
                    head.export,
                    head.component,
                    self.deadline_s,
                )
                self.killed_for_deadline = head
                self.kill()
