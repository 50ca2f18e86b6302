"""The envelope's decisions at their boundaries, and properties of the speed clamp."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.safety.envelope import (
    DEFAULTS, Decision, EnvelopeConfig, Fence, VehicleState, check, clamp_velocity,
)

FLYING = VehicleState(armed=True, mode="GUIDED", x=0.0, y=0.0, z=10.0, yaw=0.0, battery=0.8,
                      lat=47.0, lon=8.0)
CIRCLE = EnvelopeConfig(fence=Fence(radius=50.0), floor=2.0, ceiling=100.0)


def at(**kw: float | bool | str | None) -> VehicleState:
    fields = {f: getattr(FLYING, f) for f in FLYING.__slots__}  # type: ignore[attr-defined]
    fields.update(kw)
    return VehicleState(**fields)


# -- speed limits --------------------------------------------------------------------------------

def test_velocity_within_the_limit_passes_unchanged() -> None:
    v = check("velocity", {"x": 3.0, "y": 4.0, "z": 0.0}, FLYING)  # exactly 5 m/s horizontal
    assert v.decision is Decision.PASS
    assert v.args == {"x": 3.0, "y": 4.0, "z": 0.0}


def test_velocity_just_over_the_speed_limit_is_clamped_and_reported() -> None:
    v = check("velocity", {"x": 5.001, "y": 0.0, "z": 0.0}, FLYING)
    assert v.decision is Decision.CLAMPED
    assert v.args["x"] == pytest.approx(5.0)
    assert v.clamps == ("x", "y")
    d = v.to_dict()
    assert d["requested"]["x"] == 5.001 and d["applied"]["x"] == pytest.approx(5.0)
    assert "limited to 5 m/s" in d["reason"]


def test_vertical_speed_is_clamped_on_its_own() -> None:
    v = check("velocity", {"x": 1.0, "z": -2.5}, FLYING)
    assert v.decision is Decision.CLAMPED
    assert v.args["z"] == -2.0 and v.args["x"] == 1.0
    assert v.clamps == ("z",)


def test_yaw_rate_is_clamped() -> None:
    v = check("yaw_rate", {"rate": -120.0}, FLYING)
    assert v.decision is Decision.CLAMPED and v.args["rate"] == -90.0


# -- geofence ------------------------------------------------------------------------------------

def test_position_exactly_at_the_fence_passes_and_just_beyond_is_refused() -> None:
    assert check("position", {"x": 50.0, "y": 0.0, "z": 10.0}, FLYING, CIRCLE).decision is Decision.PASS
    v = check("position", {"x": 50.001, "y": 0.0, "z": 10.0}, FLYING, CIRCLE)
    assert v.decision is Decision.REFUSED and v.code == "fence"
    assert "outside the fence" in v.reason


def test_altitude_exactly_at_floor_and_ceiling_passes() -> None:
    for z in (2.0, 100.0):
        assert check("position", {"x": 0.0, "y": 0.0, "z": z}, FLYING, CIRCLE).decision is Decision.PASS
    for z in (1.999, 100.001):
        v = check("position", {"x": 0.0, "y": 0.0, "z": z}, FLYING, CIRCLE)
        assert v.decision is Decision.REFUSED and v.code == "altitude"


def test_velocity_that_would_leave_the_fence_becomes_hold() -> None:
    # at 45 m east, 3 m/s east for the 2 s lookahead ends 1 m outside
    v = check("velocity", {"x": 3.0}, at(x=45.0), CIRCLE)
    assert v.decision is Decision.HOLD and v.verb == "hold" and v.args == {}
    assert v.code == "fence"
    # 2.5 m/s ends exactly on the fence: passes
    assert check("velocity", {"x": 2.5}, at(x=45.0), CIRCLE).decision is Decision.PASS


def test_velocity_back_toward_the_fence_from_outside_passes() -> None:
    assert check("velocity", {"x": -2.0}, at(x=60.0), CIRCLE).decision is Decision.PASS
    assert check("velocity", {"x": 2.0}, at(x=60.0), CIRCLE).decision is Decision.HOLD


def test_fence_action_refuse() -> None:
    v = check("velocity", {"x": 3.0}, at(x=45.0), CIRCLE.with_(fence_action="refuse"))
    assert v.decision is Decision.REFUSED and v.code == "fence"


def test_climb_through_the_ceiling_becomes_hold_and_descent_through_floor_too() -> None:
    assert check("velocity", {"z": 1.0}, at(z=99.0), CIRCLE).decision is Decision.HOLD
    assert check("velocity", {"z": 0.5}, at(z=99.0), CIRCLE).decision is Decision.PASS  # ends at 100
    assert check("velocity", {"z": -1.0}, at(z=3.0), CIRCLE).decision is Decision.HOLD


def test_body_frame_velocity_is_rotated_by_the_heading() -> None:
    # heading east (90 deg): forward is +x east
    assert check("velocity", {"x": 3.0, "frame": "body"}, at(x=45.0, yaw=90.0), CIRCLE).decision is Decision.HOLD
    # heading north: forward is +y, far from the eastern edge
    assert check("velocity", {"x": 3.0, "frame": "body"}, at(x=45.0, yaw=0.0), CIRCLE).decision is Decision.PASS
    # heading unknown with a fence: refused
    v = check("velocity", {"x": 1.0, "frame": "body"}, at(yaw=None), CIRCLE)
    assert v.decision is Decision.REFUSED and v.code == "unknown"


def test_polygon_fence_and_a_path_that_leaves_it() -> None:
    # an L shape: the straight line from one arm to the other cuts the corner outside
    poly = Fence(points=((0, 0), (40, 0), (40, 10), (10, 10), (10, 40), (0, 40)))
    cfg = EnvelopeConfig(fence=poly)
    assert poly.contains(40.0, 5.0) and poly.contains(10.0, 25.0) and not poly.contains(20.0, 20.0)
    assert check("position", {"x": 35.0, "y": 5.0, "z": 10.0}, at(x=5.0, y=5.0), cfg).decision is Decision.PASS
    v = check("position", {"x": 5.0, "y": 35.0, "z": 10.0}, at(x=35.0, y=5.0), cfg)
    assert v.decision is Decision.REFUSED and "path" in v.reason


def test_goto_is_checked_against_the_fence_in_metres() -> None:
    north_40m = 47.0 + math.degrees(40.0 / 6_371_000.0)
    north_60m = 47.0 + math.degrees(60.0 / 6_371_000.0)
    assert check("goto", {"lat": north_40m, "lon": 8.0, "alt": 10.0}, FLYING, CIRCLE).decision is Decision.PASS
    assert check("goto", {"lat": north_60m, "lon": 8.0, "alt": 10.0}, FLYING, CIRCLE).code == "fence"


def test_unknown_position_with_a_fence_is_refused() -> None:
    v = check("velocity", {"x": 1.0}, at(x=None), CIRCLE)
    assert v.decision is Decision.REFUSED and v.code == "unknown"


# -- battery, armed, mode ------------------------------------------------------------------------

def test_battery_exactly_at_the_reserve_passes_and_below_is_refused_with_rtl_offered() -> None:
    assert check("velocity", {"x": 1.0}, at(battery=0.2)).decision is Decision.PASS
    v = check("velocity", {"x": 1.0}, at(battery=0.1999))
    assert v.decision is Decision.REFUSED and v.code == "battery" and v.offer == "rtl"
    assert v.to_dict()["offer"] == "rtl"
    for verb, args in (("takeoff", {"alt": 5.0}), ("arm", {}), ("goto", {"lat": 47.0, "lon": 8.0, "alt": 5.0})):
        assert check(verb, args, at(battery=0.1)).decision is Decision.REFUSED
    for verb in ("rtl", "land", "hold", "disarm"):
        assert check(verb, {}, at(battery=0.05)).decision is Decision.PASS


def test_motion_while_disarmed_or_in_a_mode_that_will_not_take_it_is_refused() -> None:
    v = check("velocity", {"x": 1.0}, at(armed=False))
    assert v.decision is Decision.REFUSED and v.code == "disarmed"
    assert check("velocity", {"x": 1.0}, at(armed=None)).code == "disarmed"
    v = check("velocity", {"x": 1.0}, at(mode="STABILIZE"))
    assert v.decision is Decision.REFUSED and v.code == "mode" and "STABILIZE" in v.reason
    assert check("velocity", {"x": 1.0}, at(mode="OFFBOARD")).decision is Decision.PASS
    assert check("takeoff", {"alt": 5.0}, at(armed=False)).code == "disarmed"
    assert check("velocity", {"x": 1.0}, at(armed=False), DEFAULTS.with_(require_armed=False)).runs


def test_takeoff_above_the_ceiling_is_refused() -> None:
    assert check("takeoff", {"alt": 100.0}, at(z=0.0), CIRCLE).decision is Decision.PASS
    assert check("takeoff", {"alt": 100.5}, at(z=0.0), CIRCLE).code == "altitude"


def test_bad_arguments_are_refused_with_the_key_named() -> None:
    for args in ({"x": "fast"}, {"x": math.nan}, {"x": True}, {"frame": "world"}):
        v = check("velocity", args, FLYING)
        assert v.decision is Decision.REFUSED and v.code == "bad-request", args
    assert "'x'" in check("velocity", {"x": "fast"}, FLYING).reason


def test_disabled_envelope_and_other_verbs_pass() -> None:
    assert check("velocity", {"x": 99.0}, at(armed=False), DEFAULTS.with_(enabled=False)).decision is Decision.PASS
    assert check("set_servo", {"x": 99.0}, at(armed=False)).decision is Decision.PASS


# -- properties of the clamp ---------------------------------------------------------------------

speeds = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
limits = st.floats(min_value=0.1, max_value=50.0)


@given(speeds, speeds, speeds, limits, limits)
def test_clamped_output_never_exceeds_the_limits(x: float, y: float, z: float, mh: float, mv: float) -> None:
    cx, cy, cz = clamp_velocity(x, y, z, mh, mv)
    assert math.hypot(cx, cy) <= mh * (1 + 1e-12)
    assert abs(cz) <= mv


@given(speeds, speeds, speeds, limits, limits)
def test_clamp_preserves_direction(x: float, y: float, z: float, mh: float, mv: float) -> None:
    cx, cy, cz = clamp_velocity(x, y, z, mh, mv)
    if math.hypot(x, y) > 1e-9:
        # same horizontal direction: parallel (zero cross product) and not reversed (positive dot)
        assert abs(x * cy - y * cx) <= 1e-9 * max(1.0, math.hypot(x, y) * math.hypot(cx, cy))
        assert x * cx + y * cy > 0
    assert math.copysign(1.0, cz) == math.copysign(1.0, z) or cz == z == 0


@given(speeds, speeds, speeds, limits, limits)
def test_in_limit_input_is_unchanged(x: float, y: float, z: float, mh: float, mv: float) -> None:
    if math.hypot(x, y) <= mh and abs(z) <= mv:
        assert clamp_velocity(x, y, z, mh, mv) == (x, y, z)


@given(speeds, speeds, speeds)
def test_envelope_check_of_any_velocity_stays_within_the_limits(x: float, y: float, z: float) -> None:
    v = check("velocity", {"x": x, "y": y, "z": z}, FLYING)
    assert v.decision in (Decision.PASS, Decision.CLAMPED)
    assert math.hypot(v.args["x"], v.args["y"]) <= DEFAULTS.max_horizontal_speed * (1 + 1e-12)
    assert abs(v.args["z"]) <= DEFAULTS.max_vertical_speed


def test_a_target_altitude_needs_no_position_without_a_fence() -> None:
    unknown = at(x=None, y=None, z=None, lat=None, lon=None)
    assert check("position", {"x": 5.0, "y": 5.0, "z": 10.0}, unknown).decision is Decision.PASS
    assert check("goto", {"lat": 47.0, "lon": 8.0, "alt": 10.0}, unknown).decision is Decision.PASS
    assert check("goto", {"lat": 47.0, "lon": 8.0, "alt": 130.0}, unknown).code == "altitude"
    assert check("goto", {"lat": 47.0, "lon": 8.0, "alt": 10.0}, unknown, CIRCLE).code == "unknown"


coords = st.floats(min_value=-49.0, max_value=49.0)


@given(coords, coords, speeds, speeds, st.floats(min_value=3.0, max_value=99.0), st.floats(min_value=-3.0, max_value=3.0))
def test_a_velocity_that_runs_from_inside_never_ends_outside(px: float, py: float, vx: float, vy: float,
                                                              pz: float, vz: float) -> None:
    if math.hypot(px, py) > 50.0:
        return
    v = check("velocity", {"x": vx, "y": vy, "z": vz}, at(x=px, y=py, z=pz), CIRCLE)
    if v.decision in (Decision.PASS, Decision.CLAMPED):
        t = CIRCLE.lookahead_s
        ex, ny, ez = px + v.args["x"] * t, py + v.args["y"] * t, pz + v.args["z"] * t
        assert math.hypot(ex, ny) <= 50.0 + 1e-6
        assert CIRCLE.floor is not None and CIRCLE.ceiling is not None
        assert CIRCLE.floor - 1e-6 <= ez <= CIRCLE.ceiling + 1e-6  # started between floor and ceiling
    else:
        assert v.decision is Decision.HOLD and v.verb == "hold"
