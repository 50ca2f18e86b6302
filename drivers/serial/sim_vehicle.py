"""Vehicle dynamics and battery packs of the emulated flight controller (no I/O, no protocol).

Key components
- :class:`Limits`: speed and acceleration limits, drag, yaw rate.
- :class:`Body`: the vehicle's kinematic state in the home-relative local frame (north, east,
  up in metres; velocities in m/s; yaw in rad clockwise from north) and :meth:`Body.step`, which
  moves it toward a wanted velocity (:class:`Want`) within the limits.
- :class:`Pack`: one battery pack that drains with the load and sags under current.

Model
    The flight controller's position and velocity loops decide a wanted ground velocity (and a
    wanted yaw or yaw rate). The vehicle accelerates toward it with a first-order response
    (``RESPONSE_S``) whose commanded acceleration is capped at ``max_accel_h`` horizontally and
    ``max_accel_v`` vertically. Wind acts as air drag toward the wind's velocity
    (``drag * (wind - v)``); the controller compensates it from the same acceleration budget, so
    wind is invisible while the budget lasts and pushes the vehicle when it does not (flying fast
    upwind in strong wind, the vehicle falls short of the wanted speed). The horizontal part of
    the commanded acceleration tilts the vehicle (pitch forward, roll right; ``atan(a/g)``), which
    is what the ATTITUDE telemetry reports. On the ground (``up == 0``) the vehicle does not move
    horizontally. The load (thrust relative to hover) sets the battery current.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GRAVITY = 9.80665  # m/s2
RESPONSE_S = 0.4  # s: time constant of the velocity loop
MAX_STEP_S = 0.05  # s: longer steps are integrated in pieces of at most this
GROUND_M = 0.02  # m: at or below this height the vehicle is on the ground


@dataclass(frozen=True)
class Limits:
    """Vehicle limits (defaults: a small quadcopter, ArduCopter-like)."""

    max_speed_h: float = 10.0  # m/s horizontal
    max_speed_up: float = 2.5  # m/s
    max_speed_down: float = 1.5  # m/s
    max_accel_h: float = 3.0  # m/s2 horizontal (about 17 degrees of tilt)
    max_accel_v: float = 2.0  # m/s2
    max_yaw_rate: float = math.radians(90.0)  # rad/s
    drag: float = 0.25  # 1/s: drag acceleration per m/s of airspeed


@dataclass
class Want:
    """What the flight controller's loops ask for: a ground velocity (NED-free: north, east, up)
    and optionally a yaw angle or a yaw rate (the angle wins)."""

    vn: float = 0.0
    ve: float = 0.0
    vu: float = 0.0
    yaw: float | None = None
    yaw_rate: float | None = None


def wrap_pi(angle: float) -> float:
    """``angle`` in (-pi, pi]."""
    a = math.fmod(angle + math.pi, 2 * math.pi)
    if a <= 0:
        a += 2 * math.pi
    return a - math.pi


def clamp_norm(x: float, y: float, limit: float) -> tuple[float, float]:
    n = math.hypot(x, y)
    if n <= limit or n == 0.0:
        return x, y
    return x * limit / n, y * limit / n


def approach(error: float, speed_limit: float, accel: float, gain: float = 1.0) -> float:
    """A speed toward closing ``error`` metres: proportional near the goal, limited by the
    stopping distance (``sqrt(2 a d)``) and by ``speed_limit``."""
    d = abs(error)
    speed = min(speed_limit, gain * d, math.sqrt(2.0 * accel * d))
    return math.copysign(speed, error)


@dataclass
class Body:
    north: float = 0.0  # m from home
    east: float = 0.0
    up: float = 0.0  # m above home
    vn: float = 0.0  # m/s
    ve: float = 0.0
    vu: float = 0.0
    yaw: float = 0.0  # rad, clockwise from north, in (-pi, pi]
    yaw_rate: float = 0.0  # rad/s
    roll: float = 0.0  # rad
    pitch: float = 0.0  # rad
    load: float = 0.0  # thrust / hover thrust (0 when the motors are off)

    @property
    def on_ground(self) -> bool:
        return self.up <= GROUND_M

    def step(self, dt: float, want: Want | None, limits: Limits, wind: tuple[float, float] = (0.0, 0.0)) -> None:
        """Advance ``dt`` seconds. ``want`` None means the motors are off (disarmed): on the
        ground the vehicle rests; in the air it falls."""
        while dt > 1e-9:
            h = min(dt, MAX_STEP_S)
            self._step(h, want, limits, wind)
            dt -= h

    def _step(self, dt: float, want: Want | None, lim: Limits, wind: tuple[float, float]) -> None:
        if want is None:
            self.roll = self.pitch = self.yaw_rate = self.load = 0.0
            if self.on_ground:
                self.vn = self.ve = self.vu = 0.0
                self.up = 0.0
                return
            self.vu -= GRAVITY * dt  # motors off in the air: it falls
            self._move(dt)
            return
        # vertical
        vu_want = max(-lim.max_speed_down, min(lim.max_speed_up, want.vu))
        au = max(-lim.max_accel_v, min(lim.max_accel_v, (vu_want - self.vu) / RESPONSE_S))
        # horizontal: drag toward the wind, compensated from the acceleration budget
        dn = lim.drag * (wind[0] - self.vn)
        de = lim.drag * (wind[1] - self.ve)
        grounded = self.on_ground and vu_want <= 0.0
        if grounded:
            want_n = want_e = 0.0
        else:
            want_n, want_e = clamp_norm(want.vn, want.ve, lim.max_speed_h)
        an, ae = clamp_norm((want_n - self.vn) / RESPONSE_S - dn, (want_e - self.ve) / RESPONSE_S - de,
                            lim.max_accel_h)
        if grounded:
            self.vn = self.ve = 0.0
            an = ae = dn = de = 0.0
        self.vn += (an + dn) * dt
        self.ve += (ae + de) * dt
        self.vu += au * dt
        # yaw
        if want.yaw is not None:
            err = wrap_pi(want.yaw - self.yaw)
            rate = max(-lim.max_yaw_rate, min(lim.max_yaw_rate, 2.0 * err))
        elif want.yaw_rate is not None:
            rate = max(-lim.max_yaw_rate, min(lim.max_yaw_rate, want.yaw_rate))
        else:
            rate = 0.0
        if grounded:
            rate = 0.0
        self.yaw_rate = rate
        self.yaw = wrap_pi(self.yaw + rate * dt)
        # attitude from the commanded horizontal acceleration (body frame)
        fwd = an * math.cos(self.yaw) + ae * math.sin(self.yaw)
        right = -an * math.sin(self.yaw) + ae * math.cos(self.yaw)
        self.pitch = -math.atan2(fwd, GRAVITY)
        self.roll = math.atan2(right, GRAVITY)
        self.load = 0.15 if grounded else math.hypot(GRAVITY + au, math.hypot(an, ae)) / GRAVITY
        self._move(dt)

    def _move(self, dt: float) -> None:
        self.north += self.vn * dt
        self.east += self.ve * dt
        self.up += self.vu * dt
        if self.up < 0.0:  # touchdown: the ground stops it
            self.up = 0.0
            self.vu = max(0.0, self.vu)
            if self.vu == 0.0:
                self.vn = self.ve = 0.0


HOVER_CURRENT_A = 12.0  # A for the whole vehicle at hover (load 1)
IDLE_CURRENT_A = 0.6  # A with the motors off (electronics)
FULL_CELL_V = 4.2
EMPTY_CELL_V = 3.5
INTERNAL_OHMS_PER_CELL = 0.006


@dataclass
class Pack:
    """One battery pack: ``cells`` in series, ``capacity_ah``; ``used_ah`` grows with the current."""

    cells: int = 3
    capacity_ah: float = 5.0
    used_ah: float = 0.0
    current: float = IDLE_CURRENT_A

    @property
    def remaining(self) -> float:
        """Fraction of the charge left, 0..1."""
        return max(0.0, 1.0 - self.used_ah / self.capacity_ah)

    @property
    def voltage(self) -> float:
        """Terminal voltage: open-circuit (linear in the charge) minus the sag under the motors' current."""
        ocv = self.cells * (EMPTY_CELL_V + (FULL_CELL_V - EMPTY_CELL_V) * self.remaining)
        return max(0.0, ocv - max(0.0, self.current - IDLE_CURRENT_A) * INTERNAL_OHMS_PER_CELL * self.cells)

    def drain(self, amps: float, dt: float) -> None:
        self.current = amps
        self.used_ah = min(self.capacity_ah, self.used_ah + amps * dt / 3600.0)


def vehicle_current(load: float, armed: bool) -> float:
    """The vehicle's total current: electronics, plus motors at ``load`` (power ~ thrust^1.5)."""
    if not armed:
        return IDLE_CURRENT_A
    return IDLE_CURRENT_A + HOVER_CURRENT_A * float(max(0.0, load) ** 1.5)
