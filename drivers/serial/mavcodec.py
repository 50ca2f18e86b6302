"""MAVLink 2 encoding/decoding shared by the flight-controller driver and its emulator.

Wraps pymavlink's generated ``ardupilotmega`` dialect (a superset of ``common``). ``feed()``
frames bytes itself: it looks for a start marker (0xFD MAVLink 2, 0xFE MAVLink 1), takes the
length from the header and lets pymavlink decode and check the CRC; a frame that does not check
out costs one byte (counted in ``bad_bytes``) and the search resumes at the next marker, so
garbage never swallows the valid frame after it (pymavlink's own robust mode drops it). A frame
still incomplete is waited for only while no complete valid frame follows its marker: a noise
0xFD whose length byte runs past the data does not hold up the frames behind it.
``encode()`` packs a message with this end's system/component id and sequence number. Also holds
the ArduCopter flight-mode table (custom_mode numbers).
"""

from __future__ import annotations

from typing import Any

from pymavlink.dialects.v20 import ardupilotmega as mavlink

__all__ = ["COPTER_MODES", "COPTER_MODE_NAMES", "NOT_AUTOPILOT_TYPES", "PX4_MODES", "MavCodec", "enum_name", "mavlink",
           "px4_custom_mode", "px4_mode_name"]

# ArduCopter custom_mode numbers (ArduPilot's Copter mode enum).
COPTER_MODES: dict[str, int] = {
    "STABILIZE": 0, "ACRO": 1, "ALT_HOLD": 2, "AUTO": 3, "GUIDED": 4, "LOITER": 5, "RTL": 6,
    "CIRCLE": 7, "LAND": 9, "DRIFT": 11, "SPORT": 13, "FLIP": 14, "AUTOTUNE": 15, "POSHOLD": 16,
    "BRAKE": 17, "THROW": 18, "AVOID_ADSB": 19, "GUIDED_NOGPS": 20, "SMART_RTL": 21,
}
COPTER_MODE_NAMES = {v: k for k, v in COPTER_MODES.items()}

# PX4 modes as (main mode, sub mode); HEARTBEAT.custom_mode carries main in bits 16-23 and sub
# in bits 24-31 (PX4's px4_custom_mode union). Sub mode 0 = none.
PX4_MODES: dict[str, tuple[int, int]] = {
    "MANUAL": (1, 0), "ALTCTL": (2, 0), "POSCTL": (3, 0), "AUTO.READY": (4, 1),
    "AUTO.TAKEOFF": (4, 2), "AUTO.LOITER": (4, 3), "AUTO.MISSION": (4, 4), "AUTO.RTL": (4, 5),
    "AUTO.LAND": (4, 6), "AUTO.FOLLOW_TARGET": (4, 8), "AUTO.PRECLAND": (4, 9), "ACRO": (5, 0),
    "OFFBOARD": (6, 0), "STABILIZED": (7, 0),
}
_PX4_NAMES = {v: k for k, v in PX4_MODES.items()}


def px4_custom_mode(name: str) -> int:
    """The HEARTBEAT/SET_MODE ``custom_mode`` of a PX4 mode name (KeyError if unknown)."""
    main, sub = PX4_MODES[name]
    return (main << 16) | (sub << 24)


def px4_mode_name(custom_mode: int) -> str:
    """``"OFFBOARD"``, ``"AUTO.LOITER"``, ... for a PX4 ``custom_mode``; ``custom:<n>`` if unknown."""
    main, sub = (custom_mode >> 16) & 0xFF, (custom_mode >> 24) & 0xFF
    name = _PX4_NAMES.get((main, sub)) or (_PX4_NAMES.get((main, 0)) if main != 4 else None)
    return name or f"custom:{custom_mode}"


def enum_name(enum: str, value: int, prefix: str) -> str:
    """``enum_name("MAV_RESULT", 0, "MAV_RESULT_")`` -> ``"ACCEPTED"``."""
    entry = mavlink.enums.get(enum, {}).get(value)
    return entry.name.removeprefix(prefix) if entry is not None else str(value)


# Vehicle components that are never the autopilot, whatever their HEARTBEAT.autopilot says.
NOT_AUTOPILOT_TYPES = frozenset({
    mavlink.MAV_TYPE_GCS, mavlink.MAV_TYPE_GIMBAL, mavlink.MAV_TYPE_CAMERA,
    mavlink.MAV_TYPE_ONBOARD_CONTROLLER, mavlink.MAV_TYPE_ADSB, mavlink.MAV_TYPE_ANTENNA_TRACKER,
})

MAGIC_V2 = 0xFD
MAGIC_V1 = 0xFE
MAX_BUFFER = 1 << 16  # bytes kept while waiting for the rest of a frame


def _frame_length(buf: bytearray, i: int) -> int:
    """Total length of the frame starting at ``buf[i]`` (needs the length byte)."""
    n = buf[i + 1]
    if buf[i] == MAGIC_V1:
        return 6 + n + 2
    signed = buf[i + 2] & 0x01 if len(buf) > i + 2 else 0
    return 10 + n + 2 + (13 if signed else 0)


class MavCodec:
    """One end of a MAVLink link."""

    def __init__(self, system_id: int, component_id: int) -> None:
        self.mav = mavlink.MAVLink(None, srcSystem=system_id, srcComponent=component_id)
        self.messages_in = 0
        self.messages_out = 0
        self.bad_bytes = 0
        self._buf = bytearray()

    def encode(self, msg: Any) -> bytes:
        buf: bytes = msg.pack(self.mav)
        self.mav.seq = (self.mav.seq + 1) % 256
        self.messages_out += 1
        return buf

    def _complete_frame_after(self, buf: bytearray, start: int, end: int) -> bool:
        """True if a complete frame that checks out (known id, CRC) starts in ``buf[start:end]``."""
        j = start
        while j < end:
            hits = [k for k in (buf.find(MAGIC_V2, j, end), buf.find(MAGIC_V1, j, end)) if k >= 0]
            if not hits:
                return False
            j = min(hits)
            if end - j >= 3 and end - j >= _frame_length(buf, j):
                try:
                    msg = self.mav.decode(buf[j:j + _frame_length(buf, j)])
                except Exception:  # noqa: BLE001 - not a frame
                    msg = None
                if msg is not None and not msg.get_type().startswith("UNKNOWN"):
                    return True
            j += 1
        return False

    def feed(self, data: bytes) -> list[Any]:
        """Messages completed by ``data``; bytes that are not part of a valid frame are counted
        in ``bad_bytes`` and dropped."""
        buf = self._buf
        buf += data
        out = []
        i = 0
        end = len(buf)
        while i < end:
            if buf[i] != MAGIC_V2 and buf[i] != MAGIC_V1:
                j = min((k for k in (buf.find(MAGIC_V2, i), buf.find(MAGIC_V1, i)) if k >= 0),
                        default=end)
                self.bad_bytes += j - i
                i = j
                continue
            if end - i < 3:
                break
            n = _frame_length(buf, i)
            if end - i < n:
                if self._complete_frame_after(buf, i + 1, end):  # a noise marker, a length past
                    self.bad_bytes += 1                        # the data: do not wait on it
                    i += 1
                    continue
                break
            try:
                msg = self.mav.decode(buf[i:i + n])
            except Exception:  # noqa: BLE001 - bad CRC, unknown id, bad length: resync
                self.bad_bytes += 1
                i += 1
                continue
            if msg.get_type().startswith("UNKNOWN"):  # no CRC check possible: treat as noise
                self.bad_bytes += 1
                i += 1
                continue
            self.messages_in += 1
            out.append(msg)
            i += n
        del buf[:i]
        if len(buf) > MAX_BUFFER:
            self.bad_bytes += len(buf)
            buf.clear()
        return out
