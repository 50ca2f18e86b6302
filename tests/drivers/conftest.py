"""Fixtures for driver tests: a real nats-server and a NATS-backed DriverContext."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import nats
import pytest
from nats.aio.client import Client
from rigs.events import CoreEvents
from nats.aio.msg import Msg

from drivers.base import CommandHandler, Handler, Unsubscribe, Value
from edge.nats.commands import CommandRequest, CommandRouter

@pytest.fixture
def drv_nats_url(nats_url: str) -> str:
    """A fresh nats-server with JetStream (the suite's one server fixture, tests/conftest.py)."""
    return nats_url


class NatsContext:
    """A DriverContext over a real NATS connection and a command router; component state is kept
    in a dict."""

    def __init__(self, nc: Client, device: str) -> None:
        self.nc = nc
        self.device = device
        self.state: dict[tuple[str, str], dict[str, Value]] = {}
        self.updates = 0
        self.router = CommandRouter(nc, device, CoreEvents(nc))

    def update(self, entity: str, component: str, values: Mapping[str, Value]) -> None:
        self.updates += 1
        self.state.setdefault((entity, component), {}).update(values)

    async def publish(self, subject: str, payload: bytes) -> None:
        await self.nc.publish(subject, payload)

    async def subscribe(self, subject: str, handler: Handler) -> Unsubscribe:
        async def cb(msg: Msg) -> None:
            await handler(msg.subject, msg.data)

        sub = await self.nc.subscribe(subject, cb=cb)

        async def unsubscribe() -> None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

        return unsubscribe

    async def serve(self, entity: str, verb: str, handler: CommandHandler) -> Unsubscribe:
        await self.router.start()

        async def run(request: CommandRequest) -> dict[str, object]:
            return await handler(request.args)

        unregister = self.router.register(entity, verb, run, owner=f"a driver of {entity}")

        async def unserve() -> None:
            unregister()

        return unserve


@pytest.fixture
async def nats_ctx(drv_nats_url: str) -> AsyncIterator[NatsContext]:
    nc = await nats.connect(drv_nats_url, connect_timeout=2)
    try:
        yield NatsContext(nc, "dev1")
    finally:
        await asyncio.wait_for(nc.drain(), 5)


@pytest.fixture
async def nats_client(drv_nats_url: str) -> AsyncIterator[Client]:
    """A second, independent client (the "ground station")."""
    nc = await nats.connect(drv_nats_url, connect_timeout=2)
    try:
        yield nc
    finally:
        await asyncio.wait_for(nc.drain(), 5)


