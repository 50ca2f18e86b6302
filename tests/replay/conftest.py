"""Fixtures of the replay tests: the repository's compiled components, a client connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client


@pytest.fixture(autouse=True)
def built(components_dir: Path) -> Path:
    """Every test runs the repository's compiled components (built once per session)."""
    return components_dir


@pytest.fixture
async def js_nc(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()
