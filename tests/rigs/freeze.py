"""Freeze a process (SIGSTOP) for a test, and know that it is frozen.

``kill(pid, SIGSTOP)`` returns before every thread of the target has stopped: a thread running
on the other core can still take a message or two. :func:`frozen` waits until each thread of
the process shows state ``T`` in ``/proc`` before the test goes on, and continues the process
(SIGCONT) however the block ends. Used to hold a nats-server's acknowledgements outstanding.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path


def _states(pid: int) -> list[str]:
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):
            states.append(stat.read_text().rpartition(")")[2].split()[0])
    return states


@contextlib.contextmanager
def frozen(pid: int | None, timeout: float = 5.0) -> Iterator[None]:
    assert pid is not None, "the process is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + timeout
        while not all(s in ("T", "t") for s in _states(pid) or ["?"]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {pid} did not stop within {timeout:g} s: {_states(pid)}")
            time.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
