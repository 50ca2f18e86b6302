"""The ``[safety]`` section: envelope defaults for every guarded entity, ``[safety.<entity>]`` overrides.

Key components
- :class:`SafetyConfig`: the defaults (an :class:`~edge.safety.envelope.EnvelopeConfig`) and the
  per-entity envelopes; :meth:`SafetyConfig.for_entity` is the one an entity gets.
- :func:`read_safety`: reads the section with the one config reader; every value has a range and
  every error names the key and the file.

Example::

    [safety]                       # defaults for every guarded entity
    max_horizontal_speed = 5.0     # m/s
    ceiling = 120.0                # m above the origin

    [safety.drone-0]               # this entity: overrides, and it is guarded even without a driver
    fence_radius = 50.0            # m around fence_center (default [0, 0])
    battery_reserve = 0.25
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from edge.config.table import Table
from edge.nats import subjects
from edge.safety.envelope import DEFAULTS, EnvelopeConfig, Fence

MAX_POLYGON_POINTS = 64
FENCE_ACTIONS = ("hold", "refuse")


@dataclass(frozen=True)
class SafetyConfig:
    defaults: EnvelopeConfig = DEFAULTS
    entities: dict[str, EnvelopeConfig] = field(default_factory=dict)

    def for_entity(self, entity: str) -> EnvelopeConfig:
        return self.entities.get(entity, self.defaults)


def _points(t: Table, name: str) -> tuple[tuple[float, float], ...] | None:
    raw = t.items(name, None)
    if raw is None:
        return None
    pts: list[tuple[float, float]] = []
    for p in raw:
        if (not isinstance(p, (list, tuple)) or len(p) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)):
            raise t.error(name, f"expected a list of [x, y] points in metres, got {p!r}")
        pts.append((float(p[0]), float(p[1])))
    if not 3 <= len(pts) <= MAX_POLYGON_POINTS:
        raise t.error(name, f"a fence polygon needs 3..{MAX_POLYGON_POINTS} points, got {len(pts)}")
    return tuple(pts)


def _envelope(t: Table, base: EnvelopeConfig) -> EnvelopeConfig:
    """``base`` with the keys given in ``t`` (each checked)."""
    changes: dict[str, Any] = {}

    def num(name: str, lo: float, hi: float, unit: str) -> None:
        v = t.number(name, None, lo=lo, hi=hi, unit=unit)
        if v is not None:
            changes[name] = v

    num("max_horizontal_speed", 0.1, 50.0, "m/s")
    num("max_vertical_speed", 0.1, 20.0, "m/s")
    num("max_yaw_rate", 1.0, 360.0, "deg/s")
    num("lookahead_s", 0.0, 30.0, "s")
    num("battery_reserve", 0.0, 0.9, "")
    num("failsafe_s", 0.0, 60.0, "s")
    for name in ("floor", "ceiling"):
        if t.has(name):
            v = t.raw(name)
            if v is False:  # floor = false / ceiling = false: none
                changes[name] = None
            else:
                num(name, -1000.0, 10000.0, "m")
    action = t.choice("fence_action", FENCE_ACTIONS, None)
    if action is not None:
        changes["fence_action"] = action
    flag = t.flag("require_armed", None)
    if flag is not None:
        changes["require_armed"] = flag
    enabled = t.flag("enabled", None)
    if enabled is not None:
        changes["enabled"] = enabled
    if t.has("motion_modes"):
        modes = t.strings("motion_modes")
        if not modes:
            raise t.error("motion_modes", "expected at least one mode name")
        changes["motion_modes"] = tuple(m.upper() for m in modes)
    radius = t.number("fence_radius", None, lo=1.0, hi=100_000.0, unit="m")
    center = t.items("fence_center", None)
    polygon = _points(t, "fence_polygon")
    if radius is not None and polygon is not None:
        raise t.error("fence_polygon", "a fence is a circle (fence_radius) or a polygon (fence_polygon), not both")
    if center is not None:
        if radius is None:
            raise t.error("fence_center", "fence_center needs fence_radius")
        if (len(center) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                         and math.isfinite(v) for v in center)):
            raise t.error("fence_center", f"expected [x, y] in metres, got {center!r}")
    if radius is not None:
        c = (float(center[0]), float(center[1])) if center is not None else (0.0, 0.0)
        changes["fence"] = Fence(radius=radius, center=c)
    elif polygon is not None:
        changes["fence"] = Fence(points=polygon)
    out = base.with_(**changes)
    if out.floor is not None and out.ceiling is not None and out.floor >= out.ceiling:
        raise t.error("floor", f"the floor ({out.floor:g} m) must be below the ceiling ({out.ceiling:g} m)")
    return out


def read_safety(t: Table) -> SafetyConfig:
    """The ``[safety]`` table: its scalar keys are the defaults, each sub-table an entity's overrides."""
    entity_tables = [k for k, v in t.data.items() if isinstance(v, dict)]
    t.mark(*entity_tables)
    defaults = _envelope(t, DEFAULTS)
    t.finish()
    entities: dict[str, EnvelopeConfig] = {}
    for name in entity_tables:
        key = t.key(name)
        subjects.check_id(name, "entity", key=key, file=t.file)
        sub = t.table(name, label=f"safety of '{name}'")
        entities[name] = _envelope(sub, defaults)
        sub.finish()
    return SafetyConfig(defaults, entities)
