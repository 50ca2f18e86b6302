"""Shared helpers of the agent and tools tests: a runtime-less host and a message collector."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from rigs.events import CoreEvents
from nats.aio.msg import Msg

from edge.layer import DeviceContext
from edge.nats.commands import CommandRouter
from edge.world.store import World

DEVICE = "dev1"
#: How long the waits poll by default: long enough for a loaded 2-core machine (they return as
#: soon as the condition holds; what a test asserts comes after the wait).
DEFAULT_WAIT_S = 10.0


async def device_context(device: str, world: World, nc: Client, tmp: Path | None = None) -> DeviceContext:
    """A device context over a test server's connection (what a layer gets from the runtime),
    with a started command router (stopped with the connection)."""
    events = CoreEvents(nc)
    router = CommandRouter(nc, device, events)
    await router.start()
    return DeviceContext(device=device, nc=nc, js=nc.jetstream(), world=world,
                         data_dir=tmp or Path("/nonexistent"), events=events, commands=router)


class Collector:
    """Records (subject, decoded JSON) of every message on a subject pattern."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Any]] = []

    async def on_msg(self, msg: Msg) -> None:
        self.messages.append((msg.subject, json.loads(msg.data) if msg.data else None))

    def on(self, subject: str) -> list[Any]:
        return [m for s, m in self.messages if s == subject]

    async def wait_for(self, pred: Callable[[], bool], timeout: float = DEFAULT_WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met in {timeout} s; got {self.messages!r}")
            await asyncio.sleep(0.01)


async def wait_until(pred: Callable[[], bool], timeout: float = DEFAULT_WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s")
        await asyncio.sleep(0.01)
