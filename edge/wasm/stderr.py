"""A worker's stderr (wasm3 trap backtraces, stray output), logged at DEBUG with a rate limit.

wasm3 prints a backtrace on fd 2 for every trap (thousands of lines for a stack overflow), and a
hostile worker may write anything there: lines are read as they come, logged on
``edge.wasm.worker`` at most ``STDERR_LINES_PER_S`` a second, and the rest counted.
"""

from __future__ import annotations

import asyncio
import logging
import time

stderr_log = logging.getLogger("edge.wasm.worker")

#: Worker stderr lines logged per second (burst of the same size); the rest are counted.
STDERR_LINES_PER_S = 50.0


async def log_stderr(stream: asyncio.StreamReader, pid: int) -> None:
    """Log ``stream`` (a worker's stderr) until its end."""
    tokens = STDERR_LINES_PER_S
    at = time.monotonic()
    suppressed = 0
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line longer than the stream limit
            line = b"<long line>\n"
        if not line:
            break
        now = time.monotonic()
        tokens = min(STDERR_LINES_PER_S, tokens + (now - at) * STDERR_LINES_PER_S)
        at = now
        if tokens < 1.0:
            suppressed += 1
            continue
        tokens -= 1.0
        if suppressed:
            stderr_log.debug("worker %d: (%d lines suppressed)", pid, suppressed)
            suppressed = 0
        stderr_log.debug("worker %d: %s", pid, line.decode(errors="replace").rstrip())
    if suppressed:
        stderr_log.debug("worker %d: (%d lines suppressed)", pid, suppressed)
