"""A serial port for asyncio: pyserial in a reader thread, chunks handed to the event loop.

Key components
- :class:`SerialLink`: ``open()`` opens the port in a thread (pyserial raises if the device is
  missing), a daemon reader thread reads whatever is available and queues it to the loop,
  ``read()`` awaits the next chunk (or raises the error that ended the reader: a port that
  disappears raises ``SerialException``/``OSError``), ``write()`` writes from a thread.
  ``backlog_bytes`` is what the thread has read and the driver has not consumed yet: a driver
  keeping up keeps it near zero. It is bounded: above ``max_backlog`` bytes the reader pauses
  until the driver catches up, so the kernel/UART buffer fills and drops instead of our memory
  growing.
- :func:`open_pty`: a raw pseudo-terminal pair for the emulated devices.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import tty
from typing import Any

log = logging.getLogger("edge.drivers.serial")

READ_TIMEOUT_S = 0.05  # seconds a blocking read waits, bounds how long close() takes
READ_CHUNK = 4096  # bytes per read at most
DEFAULT_MAX_BACKLOG = 256 * 1024  # bytes read but not yet consumed before the reader pauses
DEFAULT_BAUD = 57600


def open_pty() -> tuple[int, int, str]:
    """``(master_fd, slave_fd, slave_path)`` of a new raw pty; the master is non-blocking."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


def link_pty(target: str, link: str) -> None:
    """Point the symlink ``link`` at ``target`` (replacing an old link): a stable port path."""
    tmp = f"{link}.new"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


class SerialLink:
    """One serial port. ``open_port`` may replace pyserial (it must return an object with
    ``read(n)``, ``write(b)``, ``in_waiting`` and ``close()``)."""

    def __init__(self, port: str, baudrate: int = DEFAULT_BAUD, *, open_port: Any = None,
                 max_backlog: int = DEFAULT_MAX_BACKLOG) -> None:
        self.port = port
        self.max_backlog = max_backlog
        self._room = threading.Condition()
        self._pending = 0  # bytes handed to the loop and not yet consumed (guarded by _room)
        self.reader_pauses = 0
        self.baudrate = baudrate
        self._open_port = open_port
        self._serial: Any = None
        self._queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._write_lock = asyncio.Lock()
        self.bytes_in = 0
        self.bytes_out = 0
        self.max_backlog_bytes = 0

    def _make(self) -> Any:
        if self._open_port is not None:
            return self._open_port()
        import serial  # lazy: pyserial is a hardware extra

        return serial.Serial(self.port, self.baudrate, timeout=READ_TIMEOUT_S, write_timeout=1.0)

    async def open(self) -> None:
        self._serial = await asyncio.to_thread(self._make)
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._pending = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._reader, args=(loop, self._serial),
                                        name=f"serial:{self.port}", daemon=True)
        self._thread.start()
        log.info("opened %s at %d baud", self.port, self.baudrate)

    @property
    def backlog_bytes(self) -> int:
        """Bytes read from the port that the driver has not consumed yet."""
        return self._pending

    def _deliver(self, item: bytes | BaseException) -> None:
        self._queue.put_nowait(item)

    def _reader(self, loop: asyncio.AbstractEventLoop, ser: Any) -> None:
        try:
            while not self._stop.is_set():
                with self._room:
                    if self._pending > self.max_backlog:
                        self.reader_pauses += 1
                        self._room.wait_for(
                            lambda: self._pending <= self.max_backlog // 2 or self._stop.is_set(),
                            READ_TIMEOUT_S)
                        continue
                data = ser.read(min(max(1, ser.in_waiting), READ_CHUNK))
                if data:
                    with self._room:
                        self._pending += len(data)
                        self.max_backlog_bytes = max(self.max_backlog_bytes, self._pending)
                    loop.call_soon_threadsafe(self._deliver, bytes(data))
        except Exception as exc:  # noqa: BLE001 - handed to the reading task
            if not self._stop.is_set():
                try:
                    loop.call_soon_threadsafe(self._deliver, exc)
                except RuntimeError:  # loop closed
                    pass

    async def read(self) -> bytes:
        """The next chunk read from the port; raises the error that stopped the reader."""
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self.bytes_in += len(item)
        with self._room:
            self._pending -= len(item)
            if self._pending <= self.max_backlog // 2:
                self._room.notify()
        return item

    async def write(self, data: bytes) -> None:
        ser = self._serial
        if ser is None:
            raise OSError(f"serial port {self.port} is not open")
        async with self._write_lock:
            await asyncio.to_thread(ser.write, data)
        self.bytes_out += len(data)

    async def close(self) -> None:
        self._stop.set()
        with self._room:
            self._room.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 2 * READ_TIMEOUT_S + 1.0)
        ser, self._serial = self._serial, None
        if ser is not None:
            await asyncio.to_thread(ser.close)
