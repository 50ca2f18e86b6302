"""Entry point of a sandbox worker process (``python -m edge.wasm.worker``).

The worker dies with the runtime: it asks the kernel for SIGKILL when its parent exits, and it
exits at the end of its input, at once: it holds nothing to clean up (the shared-memory files
are the runtime's), so it skips the interpreter's teardown of its modules and wasm3 instances,
which a pool's stop (and a replay's time) would otherwise wait for. It runs in its own session, so a terminal's or ``timeout``'s
signals to the runtime's process group do not reach it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from edge.wasm.protocol import PARENT_PID_ENV
from edge.wasm.worker.dispatch import serve

PR_SET_PDEATHSIG = 1


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
    """Protocol on the original stdout, fd 1 redirected to stderr."""
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
    _exit_now()


def _exit_now() -> None:
    """Exit 0 without the interpreter's teardown (every reply was flushed as it was written)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
