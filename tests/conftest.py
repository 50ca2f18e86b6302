"""Fixtures shared by every test suite: a real nats-server per test, on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from edge.nats.server import NatsServer
from rigs.nats import ServerFactory, server_factory


@pytest.fixture
async def nats_servers(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """A factory of started servers (``await nats_servers("hub", ...)``), all stopped afterwards."""
    async with server_factory(tmp_path) as make:
        yield make


@pytest.fixture
async def nats_server(nats_servers: ServerFactory) -> NatsServer:
    """One JetStream-enabled nats-server with a temp store."""
    return await nats_servers("edge")


@pytest.fixture
async def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.close()


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def components_dir() -> Path:
    """The repository's components/, built (incrementally) with components/build.py."""
    import subprocess
    import sys

    subprocess.run([sys.executable, str(ROOT / "components" / "build.py")], check=True, capture_output=True)
    return ROOT / "components"


def pytest_configure(config: pytest.Config) -> None:
    """Property tests check behaviour, not speed: no per-example wall-clock deadline (on a
    loaded 2-core machine one slow example made hypothesis fail a correct test as flaky)."""
    from hypothesis import settings

    settings.register_profile("edge", deadline=None)
    settings.load_profile("edge")
