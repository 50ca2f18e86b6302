"""Fixtures of the language tests: a real nats-server with the device's streams and a device
context over it whose events go through the real acknowledged publisher into ``EVT``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from edge.layer import DeviceContext
from edge.nats.commands import CommandRouter
from edge.nats.events import DeviceEvents
from edge.sync.device.streams import DeviceStreamConfig, ensure_device_streams
from edge.world.store import World

DEVICE = "dev1"


@pytest.fixture
async def ctx(nc: Client, tmp_path: Path) -> AsyncIterator[DeviceContext]:
    js = nc.jetstream()
    await ensure_device_streams(js, DeviceStreamConfig(DEVICE, state_bucket=False))
    events = DeviceEvents(nc, DEVICE)
    await events.start()
    router = CommandRouter(nc, DEVICE, events)
    await router.start()
    yield DeviceContext(device=DEVICE, nc=nc, js=js, world=World(), data_dir=tmp_path / "data",
                        events=events, commands=router)
    await router.stop()
    await events.stop(2.0)
