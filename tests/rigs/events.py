"""A test event sink: the ``Events`` contract over core publishes, for suites without streams.

The device's real path (:class:`edge.nats.events.DeviceEvents`) needs the JetStream streams that
capture each subject; unit suites of drivers, agents and tools run against a bare server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from nats.aio.client import Client


class CoreEvents:
    """``emit`` and ``telemetry`` as core publishes (no acks, nothing retried)."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.tasks: set[asyncio.Task[None]] = set()

    def emit(self, subject: str, data: bytes, *, msg_id: str | None = None,
             headers: Mapping[str, str] | None = None) -> None:
        task = asyncio.get_running_loop().create_task(self.nc.publish(subject, data))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def telemetry(self, subject: str, data: bytes) -> None:
        await self.nc.publish(subject, data)
