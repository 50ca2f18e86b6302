"""Small helpers around a started :class:`edge.runtime.Runtime` in tests."""

from __future__ import annotations

from edge.runtime import Runtime


def url_of(rt: Runtime) -> str:
    """The URL of the runtime's nats-server, for a second client."""
    assert rt.nc is not None and rt.nc.connected_url is not None
    return rt.nc.connected_url.geturl()
