"""The embedded demo's closed loop: drone-0 arms and takes off through its (emulated) flight
controller, the camera looking down from it sees the face off-centre, the follow agent's velocity
commands fly it (MAVLink setpoints), and the face converges to the frame centre."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import pytest

from edge.config import NatsConfig, embedded_default
from edge.demo.fleet import apply_demo
from edge.demo.hardware import DEMO_FOLLOW_TARGET
from edge.runtime import Runtime

pytestmark = pytest.mark.timeout(120)


def offset(det: dict[str, Any]) -> float | None:
    items = det.get("items") or []
    if not items:
        return None
    x0, y0, x1, y1 = items[0]["box"]
    return max(abs((x0 + x1) / 2 - 0.5), abs((y0 + y1) / 2 - 0.5))


async def test_drone_0_takes_off_and_centres_the_face(tmp_path: Path, nats_url: str) -> None:
    cfg = apply_demo(embedded_default(data_dir=tmp_path / "demo", drones=0))
    cfg.nats = NatsConfig(url=nats_url)
    rt = Runtime(cfg)
    await rt.start()
    try:
        world = rt.world

        def comp(name: str) -> dict[str, Any]:
            return world.get("drone-0", name) if "drone-0" in world and world.has("drone-0", name) else {}

        first_off: float | None = None
        centred_after: float | None = None
        start_pos: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            flight, pos = comp("flight"), comp("position")
            off = offset(comp("detections")) if comp("detections") else None
            if off is None or not flight.get("armed") or pos.get("z", 0) < 2.0:
                continue
            if first_off is None:
                first_off, t_off, start_pos = off, time.monotonic(), dict(pos)
                assert off > 0.15, f"the face should appear off-centre at first, got {off:.2f}"
            elif off < 0.10:
                centred_after = time.monotonic() - t_off
                break
        assert first_off is not None, f"no face seen from the air: flight {comp('flight')} position {comp('position')}"
        assert centred_after is not None, "the face never came within 10 % of the frame centre"
        pos = comp("position")
        # it moved because of the agent's commands: toward the target, from where it first saw it
        moved = math.hypot(pos["x"] - start_pos["x"], pos["y"] - start_pos["y"])
        assert moved > 2.0
        assert math.hypot(pos["x"] - DEMO_FOLLOW_TARGET[0], pos["y"] - DEMO_FOLLOW_TARGET[1]) < 2.0
        status = rt.status()
        pilot = status["demo_pilot"]
        assert pilot["launched"]
        fc = next(d for d in status["drivers"] if d["name"] == "fc")
        if pilot["serves_velocity"]:  # before the driver had its own velocity verb
            assert pilot["applied"] > 0 and pilot["setpoints_sent"] > 0
        else:  # the agent's commands went through the safety envelope and the driver's setpoint stream
            assert fc["details"]["setpoints_sent"] > 0 and pilot["applied"] == 0
        assert comp("flight")["mode"] == "GUIDED"
        print(f"face centred {centred_after:.1f} s after it was first seen {first_off:.2f} off centre")
    finally:
        await rt.stop()
