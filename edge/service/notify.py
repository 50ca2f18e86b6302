"""The systemd notify protocol (sd_notify) spoken by ``edge run`` under ``Type=notify``.

Standard library only: one ``AF_UNIX`` datagram per message to ``$NOTIFY_SOCKET`` (a path, or an
abstract socket when it starts with ``@``). Without ``$NOTIFY_SOCKET`` (not started by systemd)
every call does nothing. Messages:

- ``READY=1`` once the device is ready (its layers started), with a ``STATUS=`` line;
- ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC``, sent by a task *on the event loop*: a loop that
  is blocked stops feeding the watchdog and systemd kills and restarts the service;
- ``STOPPING=1`` when a shutdown begins.

A send that fails (the socket went away) is logged and counted, never raised: the device keeps
running without its supervisor's notifications.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

from edge.errors import EdgeError

log = logging.getLogger("edge.service.notify")

#: The environment variables of the protocol; removed from this process's environment once read,
#: so the runtime's children (nats-server, sandbox workers) do not inherit them.
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class NotifyError(EdgeError):
    """$NOTIFY_SOCKET or $WATCHDOG_USEC is malformed."""

    def __init__(self, message: str, *, variable: str) -> None:
        super().__init__(message, variable=variable)
        self.variable = variable


class Notifier:
    """Sends notify messages to the service manager; inert when there is none."""

    def __init__(self, socket_path: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address: str | bytes | None = None
        if socket_path:
            if socket_path.startswith("@"):
                self.address = b"\0" + socket_path[1:].encode()
            elif socket_path.startswith("/"):
                self.address = socket_path
            else:
                raise NotifyError(f"NOTIFY_SOCKET {socket_path!r} is neither a path nor an abstract socket",
                                  variable="NOTIFY_SOCKET")
        self.watchdog_usec = watchdog_usec
        self.sent = 0
        self.failed = 0
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None,
                 unset: bool = True) -> Notifier:
        """The notifier systemd asked for in the environment (``os.environ`` by default, then
        removed from it when ``unset``)."""
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC")
        if raw:
            try:
                usec = int(raw)
            except ValueError:
                raise NotifyError(f"WATCHDOG_USEC {raw!r} is not an integer", variable="WATCHDOG_USEC") from None
            if usec <= 0:
                raise NotifyError(f"WATCHDOG_USEC {raw!r} must be positive", variable="WATCHDOG_USEC")
            owner = env.get("WATCHDOG_PID")
            if owner and owner.isdigit() and int(owner) != (os.getpid() if pid is None else pid):
                usec = None  # the watchdog is meant for another process
        if unset and environ is None:
            for name in NOTIFY_ENV:
                os.environ.pop(name, None)
        return cls(path, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings: half the watchdog timeout (as sd_watchdog_enabled advises)."""
        return None if self.watchdog_usec is None or not self.enabled else self.watchdog_usec / 2e6

    def send(self, **fields: str | int) -> bool:
        """Send one message (``ready=1`` -> ``READY=1``); False if there is no manager or it failed."""
        if self.address is None:
            return False
        text = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode(), self.address)
        except OSError as err:
            self.failed += 1
            log.warning("service manager notification %r failed: %s", text.split("\n")[0], err)
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(ready=1, **({"status": status} if status else {}))

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(stopping=1, status=status)

    def watchdog(self) -> bool:
        return self.send(watchdog=1)

    async def feed_watchdog(self) -> None:
        """Ping the watchdog from the event loop until cancelled (returns at once without one)."""
        interval = self.watchdog_interval
        if interval is None:
            return
        log.debug("feeding the service watchdog every %.1f s", interval)
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    async def ready_when(self, is_ready: Callable[[], bool], status: Callable[[], str], *,
                         poll: float = 0.05) -> None:
        """Send READY=1 (with ``status()``) as soon as ``is_ready()`` holds."""
        if not self.enabled:
            return
        while not is_ready():
            await asyncio.sleep(poll)
        self.ready(status())

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
