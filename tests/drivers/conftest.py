"""Fixtures for driver tests: a real nats-server and a NATS-backed DriverContext."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from drivers.base import Handler, Unsubscribe, Value

NATS_SERVER = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "nats-server"
START_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def drv_nats_url(tmp_path: Path) -> Iterator[str]:
    """A fresh nats-server with JetStream on a free loopback port, stopped after the test."""
    binary = str(NATS_SERVER) if NATS_SERVER.exists() else "nats-server"
    port = _free_port()
    store = tmp_path / "js"
    store.mkdir()
    proc = subprocess.Popen([binary, "-js", "-sd", str(store), "-p", str(port), "-a", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("nats-server did not start")
        time.sleep(0.02)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


class NatsContext:
    """A DriverContext over a real NATS connection; component state is kept in a dict."""

    def __init__(self, nc: Client, device: str) -> None:
        self.nc = nc
        self.device = device
        self.state: dict[tuple[str, str], dict[str, Value]] = {}
        self.updates = 0

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


