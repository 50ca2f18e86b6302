"""An emulated NMEA GPS receiver on a pseudo-terminal.

It writes a GGA and an RMC sentence ``rate_hz`` times a second (with correct checksums) for the
position given by ``position()`` (a callable returning ``(lat, lon, alt)``, e.g. an emulated
flight controller's ``geo``) or the fixed ``position``. ``fix_quality``, ``satellites`` and
``hdop`` can be changed at any time; ``fix_quality = 0`` sends empty position fields and RMC
status V, like a receiver without a fix. Faults: ``inject_garbage(bytes)`` and ``disconnect()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from functools import reduce

from drivers.serial.link import link_pty, open_pty
from drivers.serial.nmea import KNOTS_TO_MPS
from edge.tasks import cancel_and_wait

log = logging.getLogger("edge.drivers.sim_gps")

DEFAULT_POSITION = (47.397742, 8.545594, 488.0)


def checksum(body: str) -> str:
    return f"{reduce(lambda a, c: a ^ ord(c), body, 0):02X}"


def sentence(body: str) -> bytes:
    return f"${body}*{checksum(body)}\r\n".encode("ascii")


def _dm(value: float, lat: bool) -> tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    v = abs(value)
    deg = int(v)
    minutes = (v - deg) * 60
    return (f"{deg:02d}{minutes:09.6f}" if lat else f"{deg:03d}{minutes:09.6f}"), hemi


class SimGPS:
    def __init__(self, *, rate_hz: float = 5.0, position: tuple[float, float, float] = DEFAULT_POSITION,
                 source: Callable[[], tuple[float, float, float]] | None = None,
                 fix_quality: int = 1, satellites: int = 12, hdop: float = 0.8) -> None:
        self.rate_hz = rate_hz
        self.position = position
        self.source = source
        self.fix_quality = fix_quality
        self.satellites = satellites
        self.hdop = hdop
        self.speed_mps = 0.0
        self.course_deg = 0.0
        self.port = ""
        self.sent = 0
        self._master = -1
        self._slave = -1
        self._task: asyncio.Task[None] | None = None

    async def start(self, link: str | None = None) -> str:
        self._master, self._slave, self.port = open_pty()
        if link is not None:
            link_pty(self.port, link)
            self.port = link
        self._task = asyncio.get_running_loop().create_task(self._stream(), name="sim_gps")
        log.info("emulated GPS on %s", self.port)
        return self.port

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self.disconnect()

    def disconnect(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        if self._task is not None:
            self._task.cancel()

    def _write(self, data: bytes) -> None:
        if self._master < 0:
            return
        with contextlib.suppress(BlockingIOError):  # a reader that does not read loses data
            os.write(self._master, data)

    def inject_garbage(self, data: bytes) -> None:
        self._write(data)

    def sentences(self) -> bytes:
        lat, lon, alt = self.source() if self.source is not None else self.position
        utc = time.gmtime()
        hhmmss = time.strftime("%H%M%S", utc) + ".00"
        ddmmyy = time.strftime("%d%m%y", utc)
        if self.fix_quality > 0:
            la, ns = _dm(lat, True)
            lo, ew = _dm(lon, False)
            gga = (f"GPGGA,{hhmmss},{la},{ns},{lo},{ew},{self.fix_quality},{self.satellites:02d},"
                   f"{self.hdop:.1f},{alt:.1f},M,47.0,M,,")
            knots = self.speed_mps / KNOTS_TO_MPS
            rmc = f"GPRMC,{hhmmss},A,{la},{ns},{lo},{ew},{knots:.2f},{self.course_deg % 360:.1f},{ddmmyy},,,A"
        else:
            gga = f"GPGGA,{hhmmss},,,,,0,{self.satellites:02d},99.9,,M,,M,,"
            rmc = f"GPRMC,{hhmmss},V,,,,,,,{ddmmyy},,,N"
        return sentence(gga) + sentence(rmc)

    async def _stream(self) -> None:
        period = 1.0 / self.rate_hz
        while True:
            self._write(self.sentences())
            self.sent += 2
            await asyncio.sleep(period)
