"""The embedded nats-server: config rendering, process supervision and test helpers.

Public API: :class:`NatsServer`, :class:`ServerOptions`, :class:`LeafRemote`, :class:`TlsFiles`,
:func:`find_nats_server`. Test helpers live in :mod:`edge.natsd.testing`.
"""

from edge.natsd.server import (
    LeafRemote,
    NatsServer,
    ServerOptions,
    TlsFiles,
    find_nats_server,
    pick_free_port,
)

__all__ = [
    "LeafRemote",
    "NatsServer",
    "ServerOptions",
    "TlsFiles",
    "find_nats_server",
    "pick_free_port",
]
