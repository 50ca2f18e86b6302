"""A lightweight device heartbeat publisher for tests and the fleet benchmark.

:class:`HeartbeatPublisher` publishes the device heartbeat (the body of
:func:`edge.sync.device.heartbeat.heartbeat_message`, on the same subject the runtime's
``HeartbeatLayer`` uses) from a plain NATS client on the device's server, where a full runtime per
device would not fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from nats.aio.client import Client as NATS

from edge.sync.device.heartbeat import heartbeat_message, heartbeat_subject


class HeartbeatPublisher:
    """Publishes a heartbeat every ``interval_s`` until :meth:`stop`."""

    def __init__(self, nc: NATS, device: str, *, interval_s: float = 0.5, ttl_s: float | None = None,
                 positions: list[dict[str, Any]] | None = None, summary: dict[str, Any] | None = None) -> None:
        self.nc = nc
        self.device = device
        self.interval_s = interval_s
        self.ttl_s = ttl_s if ttl_s is not None else 3 * interval_s
        self.positions = positions or []
        self.summary = summary or {}
        self.seq = 0
        self._t0 = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def beat(self) -> None:
        self.seq += 1
        await self.nc.publish(heartbeat_subject(self.device), heartbeat_message(
            self.device, self.seq, interval_s=self.interval_s, ttl_s=self.ttl_s,
            uptime_s=time.monotonic() - self._t0, summary=self.summary, positions=self.positions))

    def start(self) -> HeartbeatPublisher:
        async def run() -> None:
            while True:
                with contextlib.suppress(Exception):
                    await self.beat()
                await asyncio.sleep(self.interval_s)

        self._task = asyncio.create_task(run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
