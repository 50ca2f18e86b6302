"""A GPS receiver speaking NMEA 0183 on a serial port.

:class:`NMEAGPSDriver` splits the byte stream into sentences and parses them with pynmea2
(checksums enforced):

- GGA -> ``geo{lat, lon deg, alt m AMSL}`` (only with a fix) and
  ``gps{fix_quality, satellites, hdop}``
- RMC -> ``gps{fix_quality: 0}`` when the receiver says the data is void (status V); with
  ``velocity = true``, a valid RMC also sets ``velocity{x east, y north}`` from speed and course.

Lines that are not valid NMEA (bad checksum, binary noise, overlong) are counted in
``bad_lines`` and dropped; parsing continues with the next line. Valid sentences of other types
(GSV, GSA, VTG, TXT, a receiver's proprietary ``$P...`` such as u-blox ``$PUBX``, or a type
pynmea2 does not know) are counted in ``ignored``: they are not bad lines, and they show that the
receiver is there. No valid sentence for ``timeout_s`` fails the driver. ``details()``
(``edge status``): ``sentences``, ``bad_lines``, ``ignored``.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, ClassVar

from drivers.base import Driver
from drivers.config import REQUIRED, Table
from drivers.serial.link import SerialLink

DEFAULT_BAUD = 9600
DEFAULT_TIMEOUT_S = 5.0  # seconds without a valid sentence before the receiver is lost
MAX_LINE = 120  # bytes; NMEA allows 82, some receivers send a little more
KNOTS_TO_MPS = 1852.0 / 3600.0  # m/s per knot (one nautical mile, 1852 m, per hour)


class NMEAGPSDriver(Driver):
    kind: ClassVar[str] = "nmea_gps"

    def __init__(self, name: str, entity: str, *, port: str, baudrate: int = DEFAULT_BAUD,
                 timeout_s: float = DEFAULT_TIMEOUT_S, velocity: bool = False,
                 link: SerialLink | None = None, publish_telemetry: bool = True) -> None:
        super().__init__(name, entity, publish_telemetry=publish_telemetry)
        self.port = port
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self.velocity = velocity
        self._given_link = link
        self.link: SerialLink | None = None
        self.sentences = 0
        self.bad_lines = 0
        self.ignored = 0  # valid sentences of a type this driver does not use
        self.last_valid = 0.0
        self._buf = bytearray()

    @property
    def where(self) -> str:
        return self.port

    async def _open(self) -> None:
        self._buf = bytearray()
        self.link = self._given_link or SerialLink(self.port, self.baudrate)
        await self.link.open()
        self.last_valid = time.monotonic()

    async def _close(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            await link.close()

    async def _run(self) -> None:
        self._spawn(self._watchdog(), "watchdog")
        assert self.link is not None
        while True:
            self._buf += await self.link.read()
            *lines, rest = self._buf.split(b"\n")
            self._buf = bytearray(rest)
            if len(self._buf) > MAX_LINE:
                self._bad("overlong line")
                self._buf.clear()
            for raw in lines:
                await self._line(bytes(raw).strip())

    async def _watchdog(self) -> None:
        from edge.errors import DriverError

        while True:
            await asyncio.sleep(self.timeout_s / 4)
            silent = time.monotonic() - self.last_valid
            if silent > self.timeout_s:
                raise DriverError(f"GPS on {self.port}: no valid NMEA for {silent:.1f} s",
                                  device=self.port, cause="no data")

    def _bad(self, why: str) -> None:
        self.bad_lines += 1
        self._error(why)

    async def _line(self, raw: bytes) -> None:
        import pynmea2  # lazy: hardware extra

        if not raw:
            return
        start = raw.rfind(b"$")
        if len(raw) > MAX_LINE or start < 0:
            self._bad("not an NMEA sentence")
            return
        if start > 0:  # noise before the sentence on the same line
            self._bad(f"{start} bytes of noise before a sentence")
            raw = raw[start:]
        try:
            msg = pynmea2.parse(raw.decode("ascii"), check=True)
        except pynmea2.SentenceTypeError:  # checksum right, a type pynmea2 does not know
            self._valid()
            self.ignored += 1
            return
        except (UnicodeDecodeError, pynmea2.ParseError, ValueError) as exc:
            self._bad(f"{type(exc).__name__}: {str(exc)[:80]}")
            return
        self._valid()
        kind = getattr(msg, "sentence_type", None)  # proprietary sentences have none
        if kind not in ("GGA", "RMC"):
            self.ignored += 1
            return
        try:
            await self._handle(msg, kind)
        except (TypeError, ValueError, AttributeError) as exc:  # valid checksum, odd fields
            self._bad(f"unusable {kind}: {exc}")

    def _valid(self) -> None:
        self.sentences += 1
        self.last_valid = time.monotonic()

    def details(self) -> dict[str, Any]:
        return {"sentences": self.sentences, "bad_lines": self.bad_lines, "ignored": self.ignored}

    async def _handle(self, msg: Any, kind: str) -> None:
        if kind == "GGA":
            quality = int(msg.gps_qual or 0)
            sats = int(msg.num_sats or 0)
            hdop = float(msg.horizontal_dil) if msg.horizontal_dil else 99.99
            self._sample()
            if quality > 0:
                geo = {"lat": float(msg.latitude), "lon": float(msg.longitude)}
                if msg.altitude not in (None, ""):  # an empty altitude is unknown, not 0 m AMSL
                    geo["alt"] = float(msg.altitude)
                await self._emit("geo", geo)
            await self._emit("gps", {"fix_quality": quality, "satellites": sats, "hdop": hdop})
        elif kind == "RMC":
            if msg.status != "A":
                await self._emit("gps", {"fix_quality": 0})
            elif self.velocity and msg.spd_over_grnd is not None:
                speed = float(msg.spd_over_grnd) * KNOTS_TO_MPS
                course = math.radians(float(msg.true_course or 0.0))
                await self._emit("velocity", {"x": speed * math.sin(course), "y": speed * math.cos(course)})


def from_config(t: Table) -> NMEAGPSDriver:
    return NMEAGPSDriver(
        t.name, t.entity, port=str(t.path("port", REQUIRED)),
        baudrate=t.integer("baud", DEFAULT_BAUD, lo=1200, hi=921600),
        timeout_s=t.number("timeout_s", DEFAULT_TIMEOUT_S, lo=0.5, hi=600.0),
        velocity=t.flag("velocity", False), publish_telemetry=t.publish,
    )
