"""``FollowAgent``: the demo drone follows a detected target, holds when it loses it, and returns to
launch on low battery.

Inputs (all optional; the freshest source wins):

* detections: ``edge.<d>.evt.<entity>.detections`` or ``edge.<d>.tele.<entity>.detections``
  (JSON ``{"items": [{"label", "score", "box": [x0, y0, x1, y1]}, ...]}``, boxes normalised to the
  frame, origin top-left) or the entity's ``detections`` world component (a new set is recognised
  by a new ``t``);
* battery: ``tele.<entity>.battery`` / the ``battery`` world component (``level`` 0..1), or the
  demo battery component's ``edge.<d>.evt.battery.low`` event (``{"entity", "level_pct"}``); the
  lowest level heard from any source in the last 30 s counts.

Camera convention: looking down, image right = +x (east), image up = +y (north). The velocity
command is proportional to the target's offset from the frame centre, with a dead band.

Hysteresis: the target must be seen in ``acquire_frames`` consecutive detection sets before the
drone starts following; once following, missing sets are tolerated until ``lost_timeout`` s have
passed without the target (then one ``velocity`` 0 command: hold). A new velocity command is sent
only when it differs by ``min_delta`` m/s from the last one or ``refresh_s`` has passed (then with the
next detection set: every command answers a frame, none repeats stale data from a timer tick). Below
``battery_low`` it sends ``rtl`` once and stops following until the level is back above
``battery_resume``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from edge.nats import subjects
from edge.agents.base import Agent, Command, Decision, subject_key
from edge.world.store import World

DEFAULT_GAIN = 4.0  # m/s per unit of normalised offset from the frame centre
DEFAULT_MAX_SPEED = 3.0  # m/s per axis
DEFAULT_DEADBAND = 0.05  # normalised offset treated as centred
DEFAULT_MIN_SCORE = 0.5
DEFAULT_LOST_TIMEOUT_S = 1.5
DEFAULT_ACQUIRE_FRAMES = 2
DEFAULT_MIN_DELTA = 0.2  # m/s
DEFAULT_REFRESH_S = 1.0
DEFAULT_BATTERY_LOW = 0.2  # fraction of charge
DEFAULT_BATTERY_RESUME = 0.3  # fraction of charge
DEFAULT_INTERVAL_S = 0.2
DETECTION_KEYS = ("evt.detections", "tele.detections", "world.detections")
BATTERY_STALE_S = 30.0  # a battery reading older than this is ignored
BATTERY_KEYS = ("tele.battery", "world.battery", "battery_low_event")

IDLE, FOLLOWING, HOLDING, RTL = "idle", "following", "holding", "rtl"


@dataclass(frozen=True)
class FollowParams:
    target_label: str = ""  # empty: any label
    min_score: float = DEFAULT_MIN_SCORE
    gain: float = DEFAULT_GAIN
    max_speed: float = DEFAULT_MAX_SPEED
    deadband: float = DEFAULT_DEADBAND
    lost_timeout: float = DEFAULT_LOST_TIMEOUT_S
    acquire_frames: int = DEFAULT_ACQUIRE_FRAMES
    min_delta: float = DEFAULT_MIN_DELTA
    refresh_s: float = DEFAULT_REFRESH_S
    battery_low: float = DEFAULT_BATTERY_LOW
    battery_resume: float = DEFAULT_BATTERY_RESUME


def _box_of(item: Any) -> tuple[float, float, float, float] | None:
    if not isinstance(item, Mapping):
        return None
    box = item.get("box")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        return None
    return (float(box[0]), float(box[1]), float(box[2]), float(box[3]))


class FollowAgent(Agent):
    """Follow a detected target; hold when lost; RTL on low battery (see the module docstring)."""

    kind: ClassVar[str] = "follow"
    world_components: ClassVar[tuple[str, ...]] = ("battery",)

    def __init__(
        self,
        entity: str,
        params: FollowParams = FollowParams(),
        *,
        name: str | None = None,
        interval: float = DEFAULT_INTERVAL_S,
    ) -> None:
        super().__init__(entity, name=name, interval=interval)
        self.params = params
        self.state = IDLE
        self.last_seen: float | None = None  # monotonic time of the last set containing the target
        self._hits = 0
        self._latest: tuple[str, float, dict[str, Any] | None] | None = None  # key, arrival, target
        self._last_world_t: float | None = None
        self._last_cmd: tuple[float, float] | None = None
        self._last_cmd_at = 0.0
        self._evaluated = -1.0  # arrival time of the newest detection set _follow has looked at

    # -- inputs -------------------------------------------------------------------------------

    def subjects(self, device: str) -> list[str]:
        return [*super().subjects(device), subjects.event(device, "battery", "low")]

    def observe(self, subject: str, payload: Any, now: float) -> bool:
        if subject == subjects.event(self.device, "battery", "low"):
            if not isinstance(payload, Mapping) or payload.get("entity") != self.entity:
                return False
            pct = payload.get("level_pct")
            level = float(pct) / 100.0 if isinstance(pct, (int, float)) else 0.0
            self.context.set("battery_low_event", {"level": level}, now)
            return True
        wake = super().observe(subject, payload, now)
        key = subject_key(self.device, subject)
        if key in DETECTION_KEYS:
            self._on_detections(key or "", payload, now)
        return wake

    def read_world(self, world: World, now: float) -> None:
        super().read_world(world, now)
        if self.entity in world and world.has(self.entity, "detections"):
            det = world.get(self.entity, "detections")
            t = float(det.get("t") or 0.0)
            if t != self._last_world_t:  # a new detection set; its arrival time is now
                self._last_world_t = t
                self.context.set("world.detections", det, now)
                self._on_detections("world.detections", det, now)

    def _on_detections(self, key: str, value: Any, now: float) -> None:
        """Count one detection set (each set counts once, however often decide runs)."""
        items = value.get("items") if isinstance(value, Mapping) else None
        target = self._target(items)
        self._latest = (key, now, target)
        if target is not None:
            self._hits += 1
            self.last_seen = now
        elif self.state != FOLLOWING:
            self._hits = 0

    def battery_level(self, now: float) -> tuple[float | None, str | None]:
        """The lowest level among sources heard within ``BATTERY_STALE_S`` (safety first)."""
        best: tuple[float, str] | None = None
        for key in BATTERY_KEYS:
            age = self.context.age(key, now)
            value = self.context.get(key)
            if age is None or age > BATTERY_STALE_S or not isinstance(value, Mapping):
                continue
            level = value.get("level")
            if "level" in str(value.get("unknown") or "").split(","):
                continue  # the source could not estimate it (MAVLink's -1): not an empty battery
            if isinstance(level, bool) or not isinstance(level, (int, float)) or math.isnan(level):
                continue
            if best is None or level < best[0]:
                best = (float(level), key)
        return (None, None) if best is None else best

    def _target(self, items: Any) -> dict[str, Any] | None:
        """The best-scoring matching detection of a set, or None."""
        p = self.params
        best: dict[str, Any] | None = None
        for item in items if isinstance(items, list) else []:
            box = _box_of(item)
            if box is None:
                continue
            score = item.get("score", 0.0)
            if isinstance(score, bool) or not isinstance(score, (int, float)) or score < p.min_score:
                continue
            if p.target_label and item.get("label") != p.target_label:
                continue
            if best is None or score > best["score"]:
                best = {"label": str(item.get("label", "")), "score": float(score), "box": list(box)}
        return best

    def velocity_for(self, box: Sequence[float]) -> tuple[float, float]:
        p = self.params
        ex = (box[0] + box[2]) / 2.0 - 0.5
        ey = (box[1] + box[3]) / 2.0 - 0.5

        def axis(err: float) -> float:
            if abs(err) < p.deadband:
                return 0.0
            return max(-p.max_speed, min(p.max_speed, p.gain * err))

        return axis(ex), axis(-ey)

    # -- decisions ----------------------------------------------------------------------------

    async def decide(self, now: float) -> Sequence[Decision]:
        p = self.params
        level, level_src = self.battery_level(now)
        battery_in = {"battery_level": level, "battery_source": level_src}
        if self.state == RTL:
            if level is not None and level >= p.battery_resume:
                self.state = IDLE
                self._hits = 0
                return [Decision("resume", f"battery {level:.0%} >= resume {p.battery_resume:.0%}",
                                 {**battery_in, "state": RTL})]
            return []
        if level is not None and level < p.battery_low:
            previous, self.state = self.state, RTL
            return [Decision(
                "rtl", f"battery {level:.0%} < {p.battery_low:.0%}: returning to launch",
                {**battery_in, "state": previous},
                Command("rtl", {"reason": "battery_low", "level": round(level, 4)}),
            )]
        latest = self._latest
        if latest is not None and latest[2] is not None and now - latest[1] <= p.lost_timeout:
            return self._follow(now, latest[2], latest[0], now - latest[1], battery_in)
        if self.state == FOLLOWING and self.last_seen is not None and now - self.last_seen > p.lost_timeout:
            self.state = HOLDING
            self._hits = 0
            self._last_cmd = (0.0, 0.0)
            self._last_cmd_at = now
            lost = now - self.last_seen
            return [Decision(
                "hold", f"target lost for {lost:.1f} s > {p.lost_timeout:.1f} s: holding position",
                {**battery_in, "lost_s": round(lost, 3), "state": FOLLOWING},
                Command("velocity", {"x": 0.0, "y": 0.0, "z": 0.0}),
            )]
        return []

    def _follow(
        self, now: float, target: dict[str, Any], key: str, age: float, battery_in: dict[str, Any]
    ) -> Sequence[Decision]:
        p = self.params
        if self.state != FOLLOWING and self._hits < p.acquire_frames:
            return []
        vx, vy = self.velocity_for(target["box"])
        starting = self.state != FOLLOWING
        self.state = FOLLOWING
        last = self._last_cmd
        changed = last is None or max(abs(vx - last[0]), abs(vy - last[1])) >= p.min_delta
        arrival = now - age
        new_set = arrival > self._evaluated  # not yet looked at: this decide answers its arrival
        self._evaluated = max(self._evaluated, arrival)
        if not starting and not changed and (now - self._last_cmd_at < p.refresh_s or not new_set):
            return []  # a refresh goes out with the next detection set, never from a timer tick
        self._last_cmd = (vx, vy)
        self._last_cmd_at = now
        cx = (target["box"][0] + target["box"][2]) / 2.0
        cy = (target["box"][1] + target["box"][3]) / 2.0
        what = target["label"] or "target"
        return [Decision(
            "follow",
            f"{what} ({target['score']:.2f}) at ({cx:.2f}, {cy:.2f}) of the frame: "
            f"steering ({vx:+.2f}, {vy:+.2f}) m/s",
            {**battery_in, "target": target, "detections_source": key, "detections_age_s": round(age, 3)},
            Command("velocity", {"x": round(vx, 4), "y": round(vy, 4), "z": 0.0}),
        )]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "state": self.state}
