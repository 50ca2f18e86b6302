"""A hub-side task that runs a pass every ``interval_s`` seconds until stopped.

Used by the repairer (:mod:`edge.sync.hub.repair`) and the source watch
(:mod:`edge.sync.hub.reattach`). A failing pass is counted and logged, never ends the loop.
:meth:`Periodic.stop` also ends a loop whose cancellation a library swallowed (nats-py's
``Subscription.next_msg`` turns a cancellation into a timeout): the loop checks a stop flag
between passes, and ``stop`` cancels again until the task is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("edge.sync.hub")

STOP_RETRY_S = 0.1


class Periodic:
    """Subclasses implement :meth:`run_once`; ``errors`` counts failed passes."""

    name = "edge-hub-periodic"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.passes = 0
        self.errors = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> object:
        raise NotImplementedError

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.run_once()
                self.passes += 1
            except Exception as err:  # the hub not answering (restarting): next pass
                self.errors += 1
                log.debug("%s pass failed: %r", self.name, err)
            if not self._stopping:
                await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._stopping = True
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=STOP_RETRY_S)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
