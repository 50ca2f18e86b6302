"""Helpers for test suites that need a real nats-server.

``async with running_server(tmp_path) as srv:`` starts a JetStream-enabled server on a free
loopback port with its store under ``tmp_path`` and stops it afterwards.
``async with server_factory(tmp_path) as make:`` gives ``await make("name", **opts)`` for tests
that need several servers (hub + leaves); all are stopped on exit.
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from edge.nats.server import NatsServer, ServerOptions


class ServerFactory:
    """Creates started servers under one base directory and stops them all on :meth:`close`."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = Path(base_dir)
        self.servers: list[NatsServer] = []

    async def __call__(
        self, name: str = "edge", *, supervise: bool = False, start: bool = True, **opts: Any
    ) -> NatsServer:
        opts.setdefault("server_name", name)
        store = Path(opts.pop("store_dir", self.base_dir / f"nats-{name}"))
        srv = NatsServer(ServerOptions(store_dir=store, **opts))
        self.servers.append(srv)
        if start:
            await srv.start(supervise=supervise)
        return srv

    async def close(self) -> None:
        for srv in reversed(self.servers):
            with contextlib.suppress(Exception):
                await srv.stop()
        self.servers.clear()


@contextlib.asynccontextmanager
async def server_factory(base_dir: Path) -> AsyncIterator[ServerFactory]:
    factory = ServerFactory(base_dir)
    try:
        yield factory
    finally:
        await factory.close()


@contextlib.asynccontextmanager
async def running_server(
    base_dir: Path, *, supervise: bool = False, **opts: Any
) -> AsyncIterator[NatsServer]:
    """A started server (JetStream on, loopback, free port) stored under ``base_dir``."""
    async with server_factory(base_dir) as make:
        yield await make(opts.pop("server_name", "edge"), supervise=supervise, **opts)


def free_port_run(n: int, host: str = "127.0.0.1") -> int:
    """The first of ``n`` consecutive free TCP ports below the kernel's ephemeral range (a cluster
    numbers its nodes' ports from a base; ports from the ephemeral range are taken by outgoing
    connections at any moment under load, and a port one above a free one need not be free)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - n)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports on {host}")
