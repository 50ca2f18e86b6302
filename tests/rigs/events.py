"""A test event sink: the ``Events`` contract over core publishes, for suites without streams.

The device's real path (:class:`edge.nats.events.DeviceEvents`) needs the JetStream streams that
capture each subject; unit suites of drivers, agents and tools run against a bare server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

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


class ListEvents:
    """``emit`` into a list of ``(subject, decoded JSON)``; telemetry is not expected (it fails)."""

    def __init__(self) -> None:
        self.out: list[tuple[str, dict[str, Any]]] = []

    def emit(self, subject: str, data: bytes, *, msg_id: str | None = None,
             headers: Mapping[str, str] | None = None) -> None:
        self.out.append((subject, json.loads(data)))

    async def telemetry(self, subject: str, data: bytes) -> None:
        raise AssertionError("not telemetry")


class StepClock:
    """A clock a test moves by hand (``clock.t += 5``)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
