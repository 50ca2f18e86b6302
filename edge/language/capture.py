"""Language that is not in a stream yet, put there: warning log lines and external tool calls.

* :class:`LogCapture`: a logging handler (warning and above, on the ``edge`` and ``drivers``
  loggers) that publishes each line as ``edge.<d>.lang.runtime.log`` ``{t, level, logger, msg}``
  through the device's acknowledged publisher. At most ``rate`` lines a second (burst ``burst``);
  the rest are counted as dropped. Lines of the publishing path and of this package are not
  captured (a failing publisher must not feed itself).
* :class:`ToolCallRecorder`: watches the requests on ``edge.<d>.tools.*`` and publishes each call
  as ``edge.<d>.lang.<entity>.tool_call`` ``{t, tool, caller, args}`` (``<entity>`` is the call's
  ``entity`` argument, else ``tools``). ``schema`` and ``search_knowledge`` calls are not recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from edge.language.stream import lang_subject
from edge.layer import Events
from edge.nats import subjects
from edge.nats.service import loads

LOG_LOGGERS = ("edge", "drivers")
NOT_CAPTURED = ("edge.language", "edge.nats.outbox", "edge.nats.publisher", "edge.nats.events", "nats")
DEFAULT_RATE = 10.0  # log lines a second
DEFAULT_BURST = 50
MAX_LINE_CHARS = 1000
MAX_ARGS_CHARS = 500
NOT_RECORDED_TOOLS = frozenset({"schema", "search_knowledge"})


class LogCapture(logging.Handler):
    """Warning-and-above log lines -> ``lang.runtime.log`` (see the module docstring)."""

    def __init__(self, events: Events, device: str, loop: asyncio.AbstractEventLoop, *,
                 rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST) -> None:
        super().__init__(logging.WARNING)
        self.events = events
        self.subject = lang_subject(device, "runtime", "log")
        self.loop = loop
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._guard = threading.local()
        self._lock = threading.Lock()
        self.captured = 0
        self.dropped = 0

    def install(self) -> None:
        for name in LOG_LOGGERS:
            logging.getLogger(name).addHandler(self)

    def uninstall(self) -> None:
        for name in LOG_LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def _take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(NOT_CAPTURED) or getattr(self._guard, "busy", False):
            return
        self._guard.busy = True
        try:
            if not self._take():
                self.dropped += 1
                return
            body = {"t": record.created, "level": record.levelname.lower(), "logger": record.name,
                    "msg": record.getMessage()[:MAX_LINE_CHARS]}
            data = json.dumps(body, separators=(",", ":"), default=str).encode()
            self.captured += 1
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self.loop:
                self.events.emit(self.subject, data)
            elif not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self.events.emit, self.subject, data)
        except Exception:  # noqa: BLE001  logging must never raise into the caller
            self.dropped += 1
        finally:
            self._guard.busy = False

    def status(self) -> dict[str, Any]:
        return {"captured": self.captured, "dropped": self.dropped, "rate": self.rate}


class ToolCallRecorder:
    """External agents' tool calls -> ``lang.<entity>.tool_call`` (see the module docstring)."""

    def __init__(self, nc: Client, events: Events, device: str) -> None:
        self.nc = nc
        self.events = events
        self.device = device
        self.recorded = 0
        self.malformed = 0
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.tools(self.device, "*"), cb=self._on_call)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001  the connection may be closed already
                pass
            self._sub = None

    async def _on_call(self, msg: Msg) -> None:
        tool = msg.subject.rsplit(".", 1)[-1]
        if tool in NOT_RECORDED_TOOLS:
            return
        try:
            args = loads(msg.data) if msg.data else {}
        except ValueError:
            args = None
        if not isinstance(args, dict):
            self.malformed += 1  # the tools service answers it; its call is still recorded
            args = {"unreadable": True}
        caller = (msg.headers or {}).get(subjects.CALLER_HEADER, "anonymous")
        given = args.get("entity")
        entity = given if isinstance(given, str) and subjects.is_id(given) else "tools"
        shown = json.dumps(args, separators=(",", ":"), default=str)
        if len(shown) > MAX_ARGS_CHARS:
            args = {"truncated": shown[:MAX_ARGS_CHARS]}
        body = {"t": time.time(), "tool": tool, "caller": str(caller)[:64], "args": args}
        self.events.emit(lang_subject(self.device, entity, "tool_call"),
                         json.dumps(body, separators=(",", ":"), default=str).encode())
        self.recorded += 1

    def status(self) -> dict[str, Any]:
        return {"recorded": self.recorded, "unreadable": self.malformed}
