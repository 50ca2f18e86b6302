"""Small helpers for the background tasks every long-lived part owns."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished; its errors are not re-raised."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


#: Seconds a timed-out step gets for its cancellation to land before it is left behind.
CANCEL_GRACE_S = 1.0


async def bounded(aw: Any, timeout: float, *, grace: float = CANCEL_GRACE_S) -> None:
    """Await ``aw`` for at most ``timeout`` seconds, then cancel it and give the cancellation
    ``grace`` seconds; raises TimeoutError either way. Unlike ``asyncio.wait_for``, which waits
    for a cancelled awaitable however long it takes, this returns: a step that swallows its
    cancellation (nats-py does inside a publish that waits for buffer space) is left behind,
    not waited for. The step's own exception is re-raised."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if task in done:
        task.result()
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=grace)
    if task not in done:  # left behind: its outcome is retrieved, never reported as unhandled
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
    raise TimeoutError(f"did not finish within {timeout:g} s")
