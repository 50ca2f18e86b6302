"""The NATS subject layout of a device (documented in docs/subjects.md)."""

from __future__ import annotations

PREFIX = "edge"


def api(device: str, *parts: str) -> str:
    """Request/reply API: ``edge.<device>.api.<group>.<verb>``."""
    return ".".join((PREFIX, device, "api", *parts))


def telemetry(device: str, entity: str, component: str) -> str:
    return f"{PREFIX}.{device}.tele.{entity}.{component}"


def event(device: str, *parts: str) -> str:
    return ".".join((PREFIX, device, "evt", *parts))


def command(device: str, entity: str, verb: str) -> str:
    return f"{PREFIX}.{device}.cmd.{entity}.{verb}"


def ack(device: str, entity: str, verb: str) -> str:
    return f"{PREFIX}.{device}.ack.{entity}.{verb}"
