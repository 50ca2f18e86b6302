"""Small helpers around a started :class:`edge.runtime.Runtime` in tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import nats
from nats.aio.client import Client

from edge.config import load_config
from edge.layer import Layer
from edge.runtime import Runtime


def url_of(rt: Runtime) -> str:
    """The URL of the runtime's nats-server, for a second client."""
    assert rt.nc is not None and rt.nc.connected_url is not None
    return rt.nc.connected_url.geturl()


@contextlib.asynccontextmanager
async def device_from_files(tmp_path: Path, files: dict[str, str],
                            layers: Sequence[Layer] = ()) -> AsyncIterator[tuple[Runtime, Client]]:
    """A runtime started from ``files`` written into ``tmp_path`` (``device.toml`` the config),
    and a second client connected to its nats-server, as an outside caller; both stopped after."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    rt = Runtime(load_config(tmp_path / "device.toml", data_dir=tmp_path / "data"), layers=list(layers))
    await rt.start()
    nc = await nats.connect(url_of(rt))
    try:
        yield rt, nc
    finally:
        await nc.close()
        await rt.stop()
