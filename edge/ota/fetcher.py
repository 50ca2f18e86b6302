"""TUF's fetcher over JetStream: metadata and artifacts come from the hub's object store.

python-tuf's client (``tuf.ngclient.Updater``) is synchronous and asks a
:class:`~tuf.ngclient.FetcherInterface` for bytes by URL. :class:`JetStreamFetcher` maps the URL
``nats:<object name>`` to an object of the hub's ``edge-ota`` object store and fetches it on the
device's event loop (the updater runs in a worker thread). A missing object is a 404 (how the
client learns there is no newer root). The object's size, from its info, is checked against the
length the signed metadata allows before any chunk is fetched; the client checks it again while
reading. Bytes fetched are counted (``bytes_in``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import IO, Any

from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

log = logging.getLogger("edge.ota.fetcher")

SCHEME = "nats:"
CHUNK = 64 * 1024
FETCH_TIMEOUT_S = 30.0  # seconds one object may take over the link


class JetStreamFetcher(FetcherInterface):
    """Fetches ``nats:<name>`` from object store ``obs`` (a nats-py ObjectStore) on ``loop``."""

    def __init__(self, obs: Any, loop: asyncio.AbstractEventLoop, *, timeout: float = FETCH_TIMEOUT_S) -> None:
        self.obs = obs
        self.loop = loop
        self.timeout = timeout
        self.bytes_in = 0
        self.objects = 0
        self._limit = threading.local()

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        self._limit.value = max_length
        try:
            with super().download_file(url, max_length) as f:
                yield f
        finally:
            self._limit.value = None

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout)

    def _fetch(self, url: str) -> Iterator[bytes]:
        from nats.js.errors import NotFoundError

        if not url.startswith(SCHEME):
            raise exceptions.DownloadError(f"not a JetStream url: {url}")
        name = url[len(SCHEME):]
        try:
            info = self._run(self.obs.get_info(name))
        except NotFoundError as err:
            raise exceptions.DownloadHTTPError(f"{name} not found", 404) from err
        limit = getattr(self._limit, "value", None)
        if limit is not None and (info.size or 0) > limit:
            raise exceptions.DownloadLengthMismatchError(
                f"{name} is {info.size} bytes, over the {limit} bytes its signed metadata allows")
        data = self._run(self._chunks(info, limit))
        self.bytes_in += len(data)
        self.objects += 1
        return iter([data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""])

    async def _chunks(self, info: Any, limit: int | None) -> bytes:
        """The object's chunks through an ordered consumer on its stream (named, so the device
        needs no stream lookup on the hub), stopped as soon as they pass ``limit``; the
        object store's own SHA-256 is checked (TUF checks its signed hash afterwards)."""
        import base64
        import hashlib

        if not info.size:
            return b""
        bucket = self.obs._name
        sub = await self.obs._js.subscribe(f"$O.{bucket}.C.{info.nuid}", stream=f"OBJ_{bucket}",
                                           ordered_consumer=True)
        out = bytearray()
        try:
            while True:
                msg = await sub.next_msg(timeout=self.timeout)
                out += msg.data
                if limit is not None and len(out) > limit:
                    raise exceptions.DownloadLengthMismatchError(
                        f"{info.name}: more than the {limit} bytes its signed metadata allows")
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        digest = (info.digest or "").split("=", 1)[-1]
        if digest and base64.urlsafe_b64decode(digest + "=" * (-len(digest) % 4)) != hashlib.sha256(out).digest():
            raise exceptions.DownloadError(f"{info.name}: chunks do not match the store's digest")
        return bytes(out)
