"""The device's publishing path: acknowledged events, best-effort telemetry, every loss counted.

:class:`DeviceEvents` is what every layer gets as ``ctx.events`` (the :class:`~edge.layer.Events`
contract): ``emit`` hands events, detections, command answers and decision records to the one
:class:`~edge.nats.publisher.EventPublisher` (message ids, deduplicated by the stream, retried
across JetStream outages, bounded in memory with the drop counted); ``telemetry`` is a core
publish through :class:`~edge.nats.publisher.TelemetryPublisher` (captured by the ``TELE``
stream; drops while disconnected or backlogged are counted). Its status is the ``events``
section of ``edge status``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nats.aio.client import Client

from edge.nats.outbox import EventPublisher, TelemetryPublisher
from edge.nats.publisher import DEFAULT_MAX_PENDING, DEFAULT_STOP_TIMEOUT_S


class DeviceEvents:
    """One device's event publisher and telemetry publisher behind the ``Events`` contract."""

    def __init__(self, nc: Client, device: str, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.publisher = EventPublisher(nc, device=device, max_pending=max_pending)
        self.tele = TelemetryPublisher(nc)

    async def start(self) -> None:
        await self.publisher.start()

    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Flush what the outbox holds for up to ``timeout`` seconds; the rest is counted dropped."""
        await self.publisher.stop(timeout)

    def emit(self, subject: str, data: bytes, *, msg_id: str | None = None,
             headers: Mapping[str, str] | None = None) -> None:
        self.publisher.emit(subject, data, msg_id=msg_id, headers=headers)

    async def telemetry(self, subject: str, data: bytes) -> None:
        await self.tele.publish(subject, data)

    def status(self) -> dict[str, Any]:
        return {**self.publisher.status(), "rejections": self.publisher.rejections,
                "telemetry": self.tele.status()}
