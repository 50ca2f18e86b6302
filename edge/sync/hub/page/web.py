"""The fleet page's web server: one HTML page, its script, a JSON snapshot and live updates (SSE).

Routes (GET only; anything else is 405, unknown paths 404):

* ``/``            the page (``static/index.html``; no external scripts, fonts or map tiles)
* ``/fleet.js``    its script, ``/fleet.css`` its style
* ``/api/fleet``   the latest snapshot as JSON (:meth:`FleetCollector.poll`)
* ``/api/events``  Server-Sent Events: the current snapshot at once, then one ``fleet`` event per
  poll; at most ``max_clients`` streams at a time (more get 503)

:class:`FleetPage` connects to the hub as a client (``hub_url``), polls every ``refresh_s`` and
serves on ``host:port`` (port 0 picks a free one; :attr:`FleetPage.url` tells which). It needs
``aiohttp`` (the ``hub`` extra), imported only when the page starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any

from edge.errors import ConfigError, EdgeError, NatsError
from edge.sync.hub.page.collect import FleetCollector
from edge.tasks import cancel_and_wait

if TYPE_CHECKING:
    from aiohttp import web
    from nats.aio.client import Client

log = logging.getLogger("edge.sync.hub.page")

DEFAULT_REFRESH_S = 1.0
MIN_REFRESH_S = 0.1
DEFAULT_MAX_CLIENTS = 64
DEFAULT_CONNECT_TIMEOUT_S = 10.0  # the hub must answer the first connect within this
SSE_KEEPALIVE_S = 15.0
SHUTDOWN_TIMEOUT_S = 2.0  # seconds open requests get when the page stops
STATIC = {"/": ("index.html", "text/html"), "/fleet.js": ("fleet.js", "text/javascript"),
          "/fleet.css": ("fleet.css", "text/css")}


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``PORT``, on 127.0.0.1) -> (host, port); ConfigError naming ``--page``."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"page address {text!r} is not HOST:PORT", key="--page") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"page port {number} is outside 0..65535", key="--page")
    return (host.strip("[]") or "127.0.0.1"), number


class FleetPage:
    """Serves the fleet page for the hub at ``hub_url``."""

    name = "page"

    def __init__(self, hub_url: str, *, host: str = "127.0.0.1", port: int = 0,
                 refresh_s: float = DEFAULT_REFRESH_S, max_clients: int = DEFAULT_MAX_CLIENTS,
                 down_after_s: float | None = None, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        if refresh_s < MIN_REFRESH_S:
            raise ConfigError(f"page refresh {refresh_s} s is below {MIN_REFRESH_S} s", key="refresh_s")
        if max_clients < 1:
            raise ConfigError("the page needs max_clients >= 1", key="max_clients")
        self.hub_url = hub_url
        self.host = host
        self.port = port
        self.refresh_s = refresh_s
        self.max_clients = max_clients
        self.down_after_s = down_after_s
        self.connect_timeout_s = connect_timeout_s
        self.snapshot: dict[str, Any] = {"t": 0.0, "hub": "starting", "devices": [], "counts": {}}
        self.clients = 0
        self.refused = 0
        self._encoded = json.dumps(self.snapshot).encode()
        self._changed = asyncio.Event()
        self._closing = False
        self._nc: Client | None = None
        self._collector: FleetCollector | None = None
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._static: dict[str, bytes] = {}

    @property
    def _hub_address(self) -> str:
        return self.hub_url.split("@")[-1]  # without the login

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        try:
            from aiohttp import web
        except ImportError as err:
            raise EdgeError("the fleet page needs aiohttp: pip install 'edge-runtime[hub]'") from err
        import nats

        self._closing = False
        files = resources.files("edge.sync.hub.page") / "static"
        self._static = {path: (files / name).read_bytes() for path, (name, _) in STATIC.items()}
        try:  # nats-py retries a first connect forever with unlimited reconnects: bound it here
            self._nc = await asyncio.wait_for(
                nats.connect(self.hub_url, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                             connect_timeout=min(5.0, self.connect_timeout_s), name="edge-fleet-page",
                             error_cb=self._nats_error),
                self.connect_timeout_s)
        except Exception as err:
            raise NatsError(f"the fleet page cannot reach the hub at {self._hub_address} "
                            f"within {self.connect_timeout_s:.0f} s: {str(err) or type(err).__name__}") from None
        try:
            self._collector = FleetCollector(self._nc.jetstream(), down_after_s=self.down_after_s)
            await self._refresh()
            self._task = asyncio.create_task(self._loop(), name="edge.sync.hub.page")
            app = web.Application()
            for path, (_, ctype) in STATIC.items():
                app.router.add_get(path, self._static_handler(path, ctype))
            app.router.add_get("/api/fleet", self._fleet)
            app.router.add_get("/api/events", self._events)
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                         shutdown_timeout=SHUTDOWN_TIMEOUT_S)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            try:
                await site.start()
            except OSError as err:
                raise EdgeError(f"cannot serve the fleet page on {self.host}:{self.port}: {err.strerror or err}",
                                host=self.host, port=self.port) from None
        except BaseException:
            await self.stop()
            raise
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("fleet page on %s (hub %s)", self.url, self._hub_address)

    async def stop(self) -> None:
        self._closing = True
        self._changed.set()  # live streams end now instead of holding the shutdown
        await cancel_and_wait(self._task)
        self._task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._nc is not None:
            try:
                await self._nc.close()
            except Exception as err:  # the hub already gone: nothing left to flush
                log.debug("closing the hub connection: %s", err)
            self._nc = None

    async def _nats_error(self, err: Exception) -> None:
        log.debug("hub connection: %s", err)  # the snapshot says "unreachable"; no traceback per retry

    def status(self) -> dict[str, Any]:
        return {"url": self.url, "clients": self.clients, "refused": self.refused,
                "collector": self._collector.status() if self._collector else {}}

    async def _refresh(self) -> None:
        assert self._collector is not None
        self.snapshot = await self._collector.poll()
        self._encoded = json.dumps(self.snapshot, separators=(",", ":")).encode()
        self._changed.set()
        self._changed = asyncio.Event()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self._refresh()
            except Exception as err:  # never let one bad poll end the page
                log.warning("fleet page refresh failed: %s", err)

    def _static_handler(self, path: str, ctype: str) -> Any:
        from aiohttp import web

        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=self._static[path], content_type=ctype, charset="utf-8",
                                headers={"Cache-Control": "no-cache"})

        return handler

    async def _fleet(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.Response(body=self._encoded, content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        if self.clients >= self.max_clients:
            self.refused += 1
            return web.Response(status=503, text=f"at most {self.max_clients} live clients\n",
                                headers={"Retry-After": "5"})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        self.clients += 1
        try:
            await resp.prepare(request)
            await resp.write(b"retry: 1000\n")
            sent: bytes | None = None
            while not self._closing:
                if self._encoded is not sent:
                    sent = self._encoded
                    await resp.write(b"event: fleet\ndata: " + sent + b"\n\n")
                changed = self._changed
                try:
                    await asyncio.wait_for(changed.wait(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
        except ConnectionResetError:
            pass
        finally:
            self.clients -= 1
        return resp
