"""Helpers of the language tests (the device id, waiting, emitting events)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from edge.layer import DeviceContext

DEV = "dev1"


async def wait_until(pred: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s")
        await asyncio.sleep(0.05)


def emit(ctx: DeviceContext, entity: str, kind: str, body: Any) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    ctx.events.emit(f"edge.{DEV}.evt.{entity}.{kind}", data)
