"""Fixtures of the agent and tools tests: a small world and a collector of device messages."""

from __future__ import annotations

import pytest
from agent_support import DEVICE, Collector
from nats.aio.client import Client

from edge.world.store import World


@pytest.fixture
def world() -> World:
    w = World()
    w.spawn("drone-1", "drone", {"fleet": "t"}, {
        "position": {"x": 0.0, "y": 0.0, "z": 10.0},
        "velocity": {"x": 0.0, "y": 0.0, "z": 0.0},
        "battery": {"voltage": 16.0, "current": 1.0, "level": 0.9, "drain": 0.0},
    })
    w.spawn("drone-2", "drone", {"fleet": "t"}, {
        "battery": {"voltage": 15.0, "current": 1.0, "level": 0.7, "drain": 0.0},
    })
    return w


@pytest.fixture
async def collector(nc: Client) -> Collector:
    c = Collector()
    await nc.subscribe(f"edge.{DEVICE}.>", cb=c.on_msg)
    await nc.flush()
    return c
