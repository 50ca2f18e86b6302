"""Shared helpers of the agent and tools tests: a runtime-less host and a message collector."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from edge.world.store import World

DEVICE = "dev1"


@dataclass
class FakeRuntime:
    """The attributes extras read from a runtime: device id, world, NATS connection."""

    device: str
    world: World
    nc: Client | None
    components: dict[str, Any] = field(default_factory=dict)
    extras: list[Any] = field(default_factory=list)


class Collector:
    """Records (subject, decoded JSON) of every message on a subject pattern."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Any]] = []

    async def on_msg(self, msg: Msg) -> None:
        self.messages.append((msg.subject, json.loads(msg.data) if msg.data else None))

    def on(self, subject: str) -> list[Any]:
        return [m for s, m in self.messages if s == subject]

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met in {timeout} s; got {self.messages!r}")
            await asyncio.sleep(0.01)


async def wait_until(pred: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s")
        await asyncio.sleep(0.01)
