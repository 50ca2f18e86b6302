"""The safety envelope: pure, synchronous decisions on one motion command.

Key components
- :class:`EnvelopeConfig`: one entity's limits (speed limits, geofence, altitude floor and
  ceiling, battery reserve, the modes that take setpoints, the command-stream failsafe).
- :class:`VehicleState`: what is known of the vehicle when the command arrives (armed, mode,
  local position, heading, battery, geo position); ``None`` is unknown.
- :func:`check`: ``(verb, args, state, config) -> Verdict``: the command passes unchanged, passes
  clamped (the clamp reported), is refused, or is converted to ``hold``, always with a reason.
- :func:`clamp_velocity`: the speed clamp on its own (horizontal norm and vertical magnitude,
  direction preserved).

Conventions (the device's): local positions are metres east/north/up (``x``, ``y``, ``z``) from the
autopilot's origin; velocities m/s in the same axes (``frame = "local"``) or forward/left/up
(``frame = "body"``); yaw and yaw rates in degrees, clockwise from north. The fence is a circle or
a polygon in local x/y; a point exactly on its edge is inside, an altitude exactly at the floor or
the ceiling is inside, a battery level exactly at the reserve is not below it.

Nothing here does I/O: the layer (:mod:`edge.safety.layer`) reads the state from the world, calls
:func:`check`, answers the sender and records the event.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from edge.world.schema import is_finite_number, shown_value

__all__ = [
    "ALWAYS_ALLOWED", "DEFAULTS", "GUARDED_VERBS", "SETPOINT_VERBS", "Decision", "EnvelopeConfig", "Fence",
    "VehicleState", "Verdict", "check", "clamp_velocity",
]

DEFAULT_MAX_HORIZONTAL_SPEED = 5.0  # m/s, norm of the horizontal velocity
DEFAULT_MAX_VERTICAL_SPEED = 2.0  # m/s, up or down
DEFAULT_MAX_YAW_RATE = 90.0  # deg/s
DEFAULT_CEILING = 120.0  # m above the origin
DEFAULT_LOOKAHEAD_S = 2.0  # s: a velocity is checked at where it takes the vehicle in this time
DEFAULT_BATTERY_RESERVE = 0.2  # fraction of charge; below it motion is refused and RTL offered
DEFAULT_FAILSAFE_S = 2.0  # s without a fresh motion command before the layer holds; 0 = off
DEFAULT_MOTION_MODES = ("GUIDED", "OFFBOARD")
EARTH_RADIUS_M = 6_371_000.0

#: Verbs that make the vehicle move toward a target or at a rate: checked in full.
SETPOINT_VERBS = frozenset({"velocity", "position", "goto", "yaw", "yaw_rate"})
#: Verbs that make it safer or change nothing in the air: they always pass.
ALWAYS_ALLOWED = frozenset({"hold", "land", "rtl", "disarm", "set_mode"})
#: Every verb the envelope decides on (others are not motion and are not its concern).
GUARDED_VERBS = SETPOINT_VERBS | ALWAYS_ALLOWED | {"takeoff", "arm"}


class Decision(enum.StrEnum):
    PASS = "pass"  # unchanged
    CLAMPED = "clamped"  # run with the limited arguments in ``Verdict.args``
    REFUSED = "refused"  # not run
    HOLD = "hold"  # not run as asked: the vehicle is told to hold instead


@dataclass(frozen=True, slots=True)
class Fence:
    """A horizontal geofence in local metres: a circle (``radius`` around ``center``) or a polygon
    (``points``, at least 3, in order)."""

    radius: float | None = None
    center: tuple[float, float] = (0.0, 0.0)
    points: tuple[tuple[float, float], ...] = ()

    def contains(self, x: float, y: float) -> bool:
        """Whether ``(x, y)`` is inside or exactly on the edge."""
        return self.outside_by(x, y) <= 0.0

    def outside_by(self, x: float, y: float) -> float:
        """Metres outside the fence (0 inside or on the edge)."""
        if self.radius is not None:
            return max(0.0, math.hypot(x - self.center[0], y - self.center[1]) - self.radius)
        if _on_edge(self.points, x, y) or _inside_polygon(self.points, x, y):
            return 0.0
        return min(_segment_distance(a, b, (x, y)) for a, b in _edges(self.points))

    def segment_inside(self, a: tuple[float, float], b: tuple[float, float]) -> bool:
        """Whether the straight path from ``a`` to ``b`` stays inside (edges count as inside)."""
        if not (self.contains(*a) and self.contains(*b)):
            return False
        if self.radius is not None:  # a disc is convex: both ends inside is enough
            return True
        return not any(_crosses(a, b, p, q) for p, q in _edges(self.points))

    def describe(self) -> str:
        if self.radius is not None:
            return f"circle of {self.radius:g} m around ({self.center[0]:g}, {self.center[1]:g})"
        return f"polygon of {len(self.points)} points"


def _edges(points: Sequence[tuple[float, float]]) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    return [(points[i], points[(i + 1) % len(points)]) for i in range(len(points))]


def _inside_polygon(points: Sequence[tuple[float, float]], x: float, y: float) -> bool:
    inside = False
    for (x1, y1), (x2, y2) in _edges(points):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _segment_distance(a: tuple[float, float], b: tuple[float, float], p: tuple[float, float]) -> float:
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    n = dx * dx + dy * dy
    t = 0.0 if n == 0 else max(0.0, min(1.0, ((p[0] - ax) * dx + (p[1] - ay) * dy) / n))
    return math.hypot(p[0] - (ax + t * dx), p[1] - (ay + t * dy))


def _on_edge(points: Sequence[tuple[float, float]], x: float, y: float) -> bool:
    return any(_segment_distance(a, b, (x, y)) <= 1e-9 for a, b in _edges(points))


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _crosses(a: tuple[float, float], b: tuple[float, float], p: tuple[float, float], q: tuple[float, float]) -> bool:
    """Whether segment ab properly crosses segment pq (touching does not count)."""
    d1, d2 = _cross(p, q, a), _cross(p, q, b)
    d3, d4 = _cross(a, b, p), _cross(a, b, q)
    return d1 * d2 < 0 and d3 * d4 < 0


@dataclass(frozen=True, slots=True)
class EnvelopeConfig:
    """One entity's envelope (defaults in docs/safety.md)."""

    max_horizontal_speed: float = DEFAULT_MAX_HORIZONTAL_SPEED
    max_vertical_speed: float = DEFAULT_MAX_VERTICAL_SPEED
    max_yaw_rate: float = DEFAULT_MAX_YAW_RATE
    fence: Fence | None = None
    floor: float | None = None
    ceiling: float | None = DEFAULT_CEILING
    fence_action: str = "hold"  # "hold" or "refuse": what a velocity leaving the fence becomes
    lookahead_s: float = DEFAULT_LOOKAHEAD_S
    battery_reserve: float = DEFAULT_BATTERY_RESERVE
    failsafe_s: float = DEFAULT_FAILSAFE_S
    motion_modes: tuple[str, ...] = DEFAULT_MOTION_MODES
    require_armed: bool = True
    enabled: bool = True

    def with_(self, **changes: Any) -> EnvelopeConfig:
        return replace(self, **changes)


DEFAULTS = EnvelopeConfig()


@dataclass(frozen=True, slots=True)
class VehicleState:
    """The vehicle as last reported; ``None`` = unknown."""

    armed: bool | None = None
    mode: str | None = None
    x: float | None = None  # m east of the origin
    y: float | None = None  # m north
    z: float | None = None  # m up
    yaw: float | None = None  # heading, degrees clockwise from north
    battery: float | None = None  # fraction of charge 0..1
    lat: float | None = None  # deg
    lon: float | None = None  # deg

    @property
    def position(self) -> tuple[float, float, float] | None:
        if self.x is None or self.y is None or self.z is None:
            return None
        return (self.x, self.y, self.z)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What becomes of one command. ``args`` is what runs (the clamped arguments, or ``{}`` for
    the hold); ``code`` names the rule (``speed``, ``fence``, ``altitude``, ``battery``,
    ``disarmed``, ``mode``, ``unknown``, ``bad-request``; ``""`` when it passed untouched)."""

    decision: Decision
    verb: str
    args: dict[str, Any]
    reason: str = ""
    code: str = ""
    offer: str | None = None  # a verb the sender may send instead (``rtl`` on a low battery)
    clamps: tuple[str, ...] = ()  # the fields that were limited
    requested: dict[str, Any] = field(default_factory=dict)

    @property
    def runs(self) -> bool:
        return self.decision is not Decision.REFUSED

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decision": str(self.decision)}
        if self.code:
            out["rule"] = self.code
        if self.reason:
            out["reason"] = self.reason
        if self.offer:
            out["offer"] = self.offer
        if self.decision is Decision.CLAMPED:
            out["requested"] = self.requested
            out["applied"] = self.args
            out["clamped"] = list(self.clamps)
        return out


class _Bad(ValueError):
    pass


def _num(args: Mapping[str, Any], key: str, default: float | None = None) -> float:
    value = args.get(key, default)
    if value is None:
        raise _Bad(f"'{key}' is required (a number)")
    if not is_finite_number(value):
        raise _Bad(f"'{key}' must be a finite number, got {shown_value(value)}")
    return float(value)


def clamp_velocity(x: float, y: float, z: float, max_h: float, max_v: float) -> tuple[float, float, float]:
    """``(x, y, z)`` with the horizontal norm at most ``max_h`` (x and y scaled together, so the
    direction is kept) and ``|z|`` at most ``max_v``. Values within the limits come back as given."""
    h = math.hypot(x, y)
    if h > max_h:
        s = max_h / h
        x, y = x * s, y * s
    if abs(z) > max_v:
        z = math.copysign(max_v, z)
    return x, y, z


def _refused(verb: str, args: dict[str, Any], code: str, reason: str, offer: str | None = None) -> Verdict:
    return Verdict(Decision.REFUSED, verb, {}, reason, code, offer, requested=args)


def check(verb: str, args: Mapping[str, Any], state: VehicleState, config: EnvelopeConfig = DEFAULTS) -> Verdict:
    """The envelope's verdict on command ``verb`` with ``args`` for a vehicle in ``state``."""
    given = dict(args)
    if not config.enabled or verb not in GUARDED_VERBS or verb in ALWAYS_ALLOWED:
        return Verdict(Decision.PASS, verb, given)
    try:
        return _check(verb, given, state, config)
    except _Bad as err:
        return _refused(verb, given, "bad-request", f"{verb}: {err}")


def _check(verb: str, args: dict[str, Any], s: VehicleState, c: EnvelopeConfig) -> Verdict:
    low = s.battery is not None and s.battery < c.battery_reserve
    if low:
        return _refused(verb, args, "battery",
                        f"battery at {s.battery:.0%} is below the reserve of {c.battery_reserve:.0%}: "
                        f"no {verb}; send 'rtl' to return", offer="rtl")
    if verb == "arm":
        return Verdict(Decision.PASS, verb, args)
    if c.require_armed and s.armed is not True:
        what = "disarmed" if s.armed is False else "not known to be armed (no flight state yet)"
        return _refused(verb, args, "disarmed", f"the vehicle is {what}: no {verb}")
    if verb == "takeoff":
        return _takeoff(args, s, c)
    if s.mode is None or s.mode.upper() not in {m.upper() for m in c.motion_modes}:
        return _refused(verb, args, "mode",
                        f"mode {s.mode or 'unknown'} does not take {verb} setpoints "
                        f"(one of {', '.join(c.motion_modes)} does: set_mode first)")
    if verb == "velocity":
        return _velocity(args, s, c)
    if verb == "position":
        x, y, z = _num(args, "x"), _num(args, "y"), _num(args, "z")
        return _target(verb, args, (x, y, z), s, c)
    if verb == "goto":
        return _goto(args, s, c)
    if verb == "yaw_rate":
        return _yaw_rate(verb, args, c)
    _num(args, "yaw")  # yaw: an angle; its turn rate (optional) is limited
    return _yaw_rate(verb, args, c) if "rate" in args else Verdict(Decision.PASS, verb, args)


def _yaw_rate(verb: str, args: dict[str, Any], c: EnvelopeConfig) -> Verdict:
    rate = _num(args, "rate")
    if abs(rate) <= c.max_yaw_rate:
        return Verdict(Decision.PASS, verb, args)
    out = {**args, "rate": math.copysign(c.max_yaw_rate, rate)}
    return Verdict(Decision.CLAMPED, verb, out, f"yaw rate {abs(rate):g} deg/s limited to {c.max_yaw_rate:g} deg/s",
                   "speed", clamps=("rate",), requested=args)


def _need_position(verb: str, args: dict[str, Any], s: VehicleState, c: EnvelopeConfig) -> Verdict | None:
    if (c.fence is not None or c.floor is not None or c.ceiling is not None) and s.position is None:
        return _refused(verb, args, "unknown",
                        f"the vehicle's position is unknown: {verb} cannot be checked against the fence")
    return None


def _altitude_outside(z: float, c: EnvelopeConfig) -> str | None:
    if c.ceiling is not None and z > c.ceiling:
        return f"{z:g} m is above the ceiling of {c.ceiling:g} m"
    if c.floor is not None and z < c.floor:
        return f"{z:g} m is below the floor of {c.floor:g} m"
    return None


def _takeoff(args: dict[str, Any], s: VehicleState, c: EnvelopeConfig) -> Verdict:
    alt = _num(args, "alt")
    high = _altitude_outside(alt, c)
    if high:
        return _refused("takeoff", args, "altitude", f"takeoff to {high}")
    if c.fence is not None:
        missing = _need_position("takeoff", args, s, c)
        if missing:
            return missing
        assert s.x is not None and s.y is not None
        if not c.fence.contains(s.x, s.y):
            return _refused("takeoff", args, "fence",
                            f"the vehicle is {c.fence.outside_by(s.x, s.y):.1f} m outside the fence "
                            f"({c.fence.describe()})")
    return Verdict(Decision.PASS, "takeoff", args)


def _velocity(args: dict[str, Any], s: VehicleState, c: EnvelopeConfig) -> Verdict:
    x, y, z = _num(args, "x", 0.0), _num(args, "y", 0.0), _num(args, "z", 0.0)
    frame = args.get("frame", "local")
    if frame not in ("local", "body"):
        raise _Bad(f"'frame' must be 'local' or 'body', got {frame!r}")
    cx, cy, cz = clamp_velocity(x, y, z, c.max_horizontal_speed, c.max_vertical_speed)
    clamps: list[str] = []
    notes: list[str] = []
    out = dict(args)
    if (cx, cy) != (x, y):
        clamps += ["x", "y"]
        out["x"], out["y"] = cx, cy
        notes.append(f"horizontal speed {math.hypot(x, y):.3g} m/s limited to {c.max_horizontal_speed:g} m/s")
    if cz != z:
        clamps.append("z")
        out["z"] = cz
        notes.append(f"vertical speed {abs(z):.3g} m/s limited to {c.max_vertical_speed:g} m/s")
    if "yaw_rate" in args:
        rate = _num(args, "yaw_rate")
        if abs(rate) > c.max_yaw_rate:
            clamps.append("yaw_rate")
            out["yaw_rate"] = math.copysign(c.max_yaw_rate, rate)
            notes.append(f"yaw rate {abs(rate):g} deg/s limited to {c.max_yaw_rate:g} deg/s")
    missing = _need_position("velocity", args, s, c)
    if missing:
        return missing
    pos = s.position
    if pos is not None and c.lookahead_s > 0:
        ex, ny = cx, cy
        if frame == "body":
            if s.yaw is None and (cx or cy) and c.fence is not None:
                return _refused("velocity", args, "unknown",
                                "the vehicle's heading is unknown: a body-frame velocity cannot be "
                                "checked against the fence")
            h = math.radians(s.yaw or 0.0)  # forward/left -> east/north, heading clockwise from north
            ex = cx * math.sin(h) - cy * math.cos(h)
            ny = cx * math.cos(h) + cy * math.sin(h)
        t = c.lookahead_s
        px, py, pz = pos[0] + ex * t, pos[1] + ny * t, pos[2] + cz * t
        why = None
        if c.fence is not None:
            now_out = c.fence.outside_by(pos[0], pos[1])
            then_out = c.fence.outside_by(px, py)
            if then_out > 0 and then_out > now_out - 1e-9 and (ex or ny):
                why = (f"in {t:g} s it would be {then_out:.1f} m outside the fence ({c.fence.describe()})")
        if why is None and ((c.ceiling is not None and pz > c.ceiling and cz > 0)
                            or (c.floor is not None and pz < c.floor and cz < 0)):
            why = f"in {t:g} s it would be at {_altitude_outside(pz, c)}"
        if why is not None:
            code = "fence" if "fence" in why else "altitude"
            if c.fence_action == "refuse":
                return _refused("velocity", args, code, f"velocity refused: {why}")
            return Verdict(Decision.HOLD, "hold", {}, f"velocity converted to hold: {why}", code,
                           requested=args)
    if clamps:
        return Verdict(Decision.CLAMPED, "velocity", out, "; ".join(notes), "speed", clamps=tuple(clamps),
                       requested=args)
    return Verdict(Decision.PASS, "velocity", args)


def _target(verb: str, args: dict[str, Any], target: tuple[float, float, float], s: VehicleState,
            c: EnvelopeConfig) -> Verdict:
    high = _altitude_outside(target[2], c)
    if high:
        return _refused(verb, args, "altitude", f"{verb} target at {high}")
    if c.fence is not None:
        pos = s.position
        if pos is None:
            return _refused(verb, args, "unknown",
                            f"the vehicle's position is unknown: {verb} cannot be checked against the fence")
        if not c.fence.contains(target[0], target[1]):
            return _refused(verb, args, "fence", f"{verb} target ({target[0]:.1f}, {target[1]:.1f}) is "
                            f"{c.fence.outside_by(target[0], target[1]):.1f} m outside the fence "
                            f"({c.fence.describe()})")
        if c.fence.contains(pos[0], pos[1]) and not c.fence.segment_inside((pos[0], pos[1]), target[:2]):
            return _refused(verb, args, "fence", f"the straight path to the {verb} target leaves the fence "
                            f"({c.fence.describe()})")
    return Verdict(Decision.PASS, verb, args)


def _goto(args: dict[str, Any], s: VehicleState, c: EnvelopeConfig) -> Verdict:
    lat, lon, alt = _num(args, "lat"), _num(args, "lon"), _num(args, "alt")
    high = _altitude_outside(alt, c)  # alt is above home: no conversion needed
    if high:
        return _refused("goto", args, "altitude", f"goto target at {high}")
    if c.fence is None:
        return Verdict(Decision.PASS, "goto", args)
    if s.lat is None or s.lon is None or s.position is None:
        return _refused("goto", args, "unknown", "the vehicle's position is unknown: goto cannot be checked "
                        "against the fence")
    assert s.x is not None and s.y is not None
    north = math.radians(lat - s.lat) * EARTH_RADIUS_M
    east = math.radians(lon - s.lon) * EARTH_RADIUS_M * math.cos(math.radians(s.lat))
    return _target("goto", args, (s.x + east, s.y + north, alt), s, c)
