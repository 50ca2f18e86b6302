"""MAVLink telemetry into component readings: which component is the autopilot, battery packs,
unknown sentinels, per-message rate counters (no I/O; the MAVLink driver feeds it).

Key components
- :class:`TelemetryDecoder`: ``decode(msg)`` returns the component readings one message gives.
  The autopilot is the component ``target_component`` (0 = the first component whose HEARTBEAT
  has an ``autopilot`` other than MAV_AUTOPILOT_INVALID); only its HEARTBEAT sets ``flight`` and
  feeds the link watchdog, and only its messages set position, velocity, attitude and battery.
  Gimbals, cameras and companion computers on the same system id are listed in ``components``.
- Battery packs: BATTERY_STATUS ``id`` 0 -> component ``battery``, id N -> ``battery_N``;
  SYS_STATUS feeds ``battery`` only until a BATTERY_STATUS id 0 is seen (then that pack is the
  one source). Each reading carries ``unknown``: the comma-separated fields (``voltage``,
  ``current``, ``level``, ``temperature``) the autopilot sent as MAVLink's "unknown" sentinel
  (UINT16_MAX, -1, INT16_MAX);
  those fields are left out of the reading, never recorded as zero.
- Float fields sent as NaN (unknown): a position, velocity or attitude reading with a NaN is not
  recorded (counted in ``unknown_values``).
- :class:`MessageRates`: a count and a rate for every message type received from the system.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from drivers.base import RateMeter, Value
from drivers.serial.mavcodec import NOT_AUTOPILOT_TYPES, COPTER_MODE_NAMES, enum_name, mavlink, px4_mode_name

UINT16_MAX = 65535
INT16_MAX = 32767
COPTER_TYPES = frozenset({
    mavlink.MAV_TYPE_QUADROTOR, mavlink.MAV_TYPE_HEXAROTOR, mavlink.MAV_TYPE_OCTOROTOR,
    mavlink.MAV_TYPE_TRICOPTER, mavlink.MAV_TYPE_HELICOPTER, mavlink.MAV_TYPE_COAXIAL,
    mavlink.MAV_TYPE_DODECAROTOR, mavlink.MAV_TYPE_DECAROTOR,
})
#: Components besides the autopilot whose BATTERY_STATUS counts (smart batteries).
BATTERY_COMPONENTS = frozenset({mavlink.MAV_COMP_ID_BATTERY, mavlink.MAV_COMP_ID_BATTERY2})

Reading = tuple[str, dict[str, Value]]


def battery_component(pack_id: int) -> str:
    """``battery`` for pack 0, ``battery_<id>`` for the others."""
    return "battery" if pack_id == 0 else f"battery_{pack_id}"


def mode_name(autopilot: int, vehicle_type: int, custom_mode: int) -> str:
    """The flight mode's name: ArduCopter names, PX4 names (``OFFBOARD``, ``AUTO.LOITER``...),
    else ``custom:<n>``."""
    if autopilot == mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA and vehicle_type in COPTER_TYPES:
        return COPTER_MODE_NAMES.get(custom_mode, f"custom:{custom_mode}")
    if autopilot == mavlink.MAV_AUTOPILOT_PX4:
        return px4_mode_name(custom_mode)
    return f"custom:{custom_mode}"


class MessageRates:
    """Per message type: how many were received and at what rate recently."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._meters: dict[str, RateMeter] = {}

    def tick(self, msg_type: str) -> None:
        self.counts[msg_type] = self.counts.get(msg_type, 0) + 1
        meter = self._meters.get(msg_type)
        if meter is None:
            meter = self._meters[msg_type] = RateMeter()
        meter.tick()

    def rate(self, msg_type: str) -> float:
        meter = self._meters.get(msg_type)
        return meter.rate() if meter is not None else 0.0

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {t: {"count": n, "rate_hz": round(self.rate(t), 2)} for t, n in sorted(self.counts.items())}


@dataclass
class ComponentSeen:
    """A component of the vehicle's system heard through its HEARTBEAT."""

    component: int
    type: str
    autopilot: str
    heartbeats: int = 0
    last: float = 0.0  # monotonic

    def to_dict(self, now: float) -> dict[str, Any]:
        return {"type": self.type, "autopilot": self.autopilot, "heartbeats": self.heartbeats,
                "age_s": round(now - self.last, 2)}


class TelemetryDecoder:
    """State of one vehicle's telemetry (see the module docstring)."""

    def __init__(self, target_component: int = 1) -> None:
        self.target_component = target_component
        self.autopilot_component: int | None = None
        self.autopilot = mavlink.MAV_AUTOPILOT_INVALID
        self.components: dict[int, ComponentSeen] = {}
        self.rates = MessageRates()
        self.packs: set[int] = set()
        self.unknown_values = 0
        self.malformed = 0  # messages the driver could not decode or record (counted, dropped)
        self.position_target: dict[str, float] | None = None  # the last POSITION_TARGET_LOCAL_NED

    def is_autopilot_heartbeat(self, msg: Any) -> bool:
        """True for the autopilot's HEARTBEAT (locks in its component on the first one)."""
        comp: int = msg.get_srcComponent()
        if msg.type in NOT_AUTOPILOT_TYPES or msg.autopilot == mavlink.MAV_AUTOPILOT_INVALID:
            return False
        if self.autopilot_component is None:
            if self.target_component not in (0, comp):
                return False
            self.autopilot_component = comp
        return comp == self.autopilot_component

    def _from_autopilot(self, msg: Any) -> bool:
        return self.autopilot_component is not None and msg.get_srcComponent() == self.autopilot_component

    def _note_component(self, msg: Any) -> None:
        comp = msg.get_srcComponent()
        seen = self.components.get(comp)
        if seen is None:
            seen = self.components[comp] = ComponentSeen(
                comp, enum_name("MAV_TYPE", msg.type, "MAV_TYPE_"),
                enum_name("MAV_AUTOPILOT", msg.autopilot, "MAV_AUTOPILOT_"))
        seen.heartbeats += 1
        seen.last = time.monotonic()

    def decode(self, msg: Any) -> list[Reading]:
        """The component readings of one message from the vehicle's system (counted by type)."""
        t = msg.get_type()
        self.rates.tick(t)
        if t == "HEARTBEAT":
            if msg.type == mavlink.MAV_TYPE_GCS:
                return []
            self._note_component(msg)
            if not self.is_autopilot_heartbeat(msg):
                return []
            self.autopilot = msg.autopilot
            return [("flight", {
                "armed": bool(msg.base_mode & mavlink.MAV_MODE_FLAG_SAFETY_ARMED),
                "mode": mode_name(msg.autopilot, msg.type, msg.custom_mode),
                "system_status": enum_name("MAV_STATE", msg.system_status, "MAV_STATE_"),
            })]
        if t == "BATTERY_STATUS":
            if not (self._from_autopilot(msg) or msg.get_srcComponent() in BATTERY_COMPONENTS):
                return []
            self.packs.add(msg.id)
            cells: list[int] = list(msg.voltages)
            ext = [v for v in getattr(msg, "voltages_ext", ()) or () if v not in (0, UINT16_MAX)]
            mv: int | None = None
            if cells and cells[0] != UINT16_MAX:
                mv = sum(v for v in cells if v != UINT16_MAX) + sum(ext)
            known = msg.temperature != INT16_MAX
            return [_battery(battery_component(msg.id), mv, msg.current_battery, msg.battery_remaining,
                             msg.temperature / 100.0 if known else None, temperature_unknown=not known)]
        if not self._from_autopilot(msg):
            return []
        if t == "GLOBAL_POSITION_INT":
            return [("geo", {"lat": msg.lat / 1e7, "lon": msg.lon / 1e7, "alt": msg.alt / 1000.0}),
                    ("velocity", {"x": msg.vy / 100.0, "y": msg.vx / 100.0, "z": -msg.vz / 100.0})]
        if t == "LOCAL_POSITION_NED":
            return self._finite([("position", {"x": msg.y, "y": msg.x, "z": -msg.z})])
        if t == "ATTITUDE":
            return self._finite([("attitude", {"roll": msg.roll, "pitch": msg.pitch, "yaw": msg.yaw})])
        if t == "SYS_STATUS":
            if 0 in self.packs:  # BATTERY_STATUS id 0 is the primary pack's one source
                return []
            mv = None if msg.voltage_battery == UINT16_MAX else msg.voltage_battery
            return [_battery("battery", mv, msg.current_battery, msg.battery_remaining)]
        if t == "POSITION_TARGET_LOCAL_NED":
            self.position_target = {k: float(getattr(msg, k)) for k in (
                "type_mask", "coordinate_frame", "x", "y", "z", "vx", "vy", "vz", "yaw", "yaw_rate")}
        return []

    def _finite(self, readings: Iterable[Reading]) -> list[Reading]:
        out = []
        for name, values in readings:
            if all(not isinstance(v, float) or math.isfinite(v) for v in values.values()):
                out.append((name, values))
            else:
                self.unknown_values += 1
        return out

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "autopilot": None if self.autopilot_component is None else {
                "component": self.autopilot_component,
                "autopilot": enum_name("MAV_AUTOPILOT", self.autopilot, "MAV_AUTOPILOT_")},
            "components": {str(c): s.to_dict(now) for c, s in sorted(self.components.items())},
            "battery_packs": sorted(self.packs),
            "unknown_values": self.unknown_values,
            "malformed": self.malformed,
            "messages": self.rates.to_dict(),
        }


def _battery(name: str, millivolts: int | None, centiamps: int, percent: int,
             temperature: float | None = None, *, temperature_unknown: bool = False) -> Reading:
    """``temperature`` degC (None: not in the message, or sent as unknown: ``temperature_unknown``)."""
    values: dict[str, Value] = {}
    unknown: list[str] = []
    if millivolts is None:
        unknown.append("voltage")
    else:
        values["voltage"] = millivolts / 1000.0
    if centiamps < 0:  # -1: not measured
        unknown.append("current")
    else:
        values["current"] = centiamps / 100.0
    if percent < 0:  # -1: not estimated
        unknown.append("level")
    else:
        values["level"] = percent / 100.0
    if temperature_unknown:
        unknown.append("temperature")
    elif temperature is not None:
        values["temperature"] = temperature
    values["unknown"] = ",".join(unknown)
    return name, values
