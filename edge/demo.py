"""The embedded demo device: a small drone fleet moved by the demo WebAssembly systems.

``edge run`` with no config starts it. Drones patrol squares (``patrol`` steers ``velocity``),
``physics`` integrates ``position``, ``battery`` drains ``battery.level`` and publishes a low-battery
event. A console view prints the fleet every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from edge.tasks import cancel_and_wait
from edge.config import DeviceConfig, EntitySpec
from edge.errors import ConfigError, EdgeError

log = logging.getLogger("edge.demo")

DEMO_COMPONENTS = ("physics", "patrol", "battery")
VIEW_INTERVAL = 2.0  # seconds between console views


def components_dir() -> Path:
    """Where the built-in components live: $EDGE_COMPONENTS_DIR, else the source tree's components/."""
    env = os.environ.get("EDGE_COMPONENTS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "components"


def demo_entities(drones: int) -> list[EntitySpec]:
    out = []
    for i in range(drones):
        side = 15.0 + 5.0 * i
        out.append(
            EntitySpec(
                id=f"drone-{i + 1}",
                kind="drone",
                labels={"fleet": "demo"},
                components={
                    "position": {"x": 10.0 * i, "y": 0.0, "z": 10.0 + i},
                    "velocity": {"x": 0.0, "y": 0.0, "z": 0.0},
                    "battery": {"voltage": 16.8, "current": 0.0, "level": 1.0 - 0.1 * i, "drain": 0.002},
                    "patrol": {"cx": 10.0 * i, "cy": 0.0, "half": side, "speed": 4.0 + i, "leg": 0.0},
                },
            )
        )
    return out


def apply_demo(cfg: DeviceConfig) -> DeviceConfig:
    """Add the demo fleet and the demo components to ``cfg``."""
    root = components_dir()
    for name in DEMO_COMPONENTS:
        manifest = root / name / "manifest.toml"
        if not manifest.exists():
            raise ConfigError(
                f"demo component '{name}' not found at {manifest}; run `make components`"
                " or set EDGE_COMPONENTS_DIR",
                key="components",
            )
        if manifest not in cfg.components:
            cfg.components.append(manifest)
    known = {e.id for e in cfg.entities}
    cfg.entities.extend(e for e in demo_entities(cfg.demo_drones) if e.id not in known)
    if "drone-0" not in known:
        cfg.entities.append(EntitySpec(id="drone-0", kind="drone", labels={"fleet": "demo", "hardware": "emulated"}))
    face = _face_model()
    if face is not None and not cfg.models:
        cfg.models.append({"name": "face", "path": str(face)})
        cfg.vision.append({"model": "face", "entity": "drone-0"})
    return cfg


def _face_model() -> Path | None:
    """The demo's detection model, if the optional `demo` extra is installed."""
    try:
        from edge.inference.blazeface import face_model_path

        return face_model_path()
    except EdgeError as err:
        log.info("demo runs without vision: %s", err.message)
        return None


class FleetView:
    """Prints the demo fleet (position, speed, battery) to stdout every few seconds."""

    status_section = ""

    def __init__(self, interval: float = VIEW_INTERVAL) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self, runtime: Any) -> None:
        self._task = asyncio.create_task(self._run(runtime), name="edge.demo.view")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def status(self) -> dict[str, Any]:
        return {}

    async def _run(self, runtime: Any) -> None:
        while True:
            await asyncio.sleep(self.interval)
            sys.stdout.write(render_fleet(runtime) + "\n")
            sys.stdout.flush()

def render_fleet(runtime: Any) -> str:
    world = runtime.world
    lines = [f"{'entity':<10} {'x':>8} {'y':>8} {'z':>6} {'speed':>6} {'battery':>8}"]
    hardware = []
    for meta in world.entities(kind="drone"):
        comps = world.components_of(meta.id)
        if "geo" in comps:
            hardware.append(meta.id)
            continue
        if "position" not in comps:
            continue
        p = world.get(meta.id, "position")
        v = world.get(meta.id, "velocity") if "velocity" in comps else {"x": 0.0, "y": 0.0, "z": 0.0}
        b = world.get(meta.id, "battery")["level"] if "battery" in comps else float("nan")
        speed = (v["x"] ** 2 + v["y"] ** 2 + v["z"] ** 2) ** 0.5
        lines.append(f"{meta.id:<10} {p['x']:>8.1f} {p['y']:>8.1f} {p['z']:>6.1f} {speed:>6.1f} {b:>7.0%}")
    for entity in hardware:
        g = world.get(entity, "geo")
        line = f"{entity:<10} lat {g['lat']:.6f} lon {g['lon']:.6f} alt {g['alt']:.1f} m"
        if world.has(entity, "flight"):
            f = world.get(entity, "flight")
            line += f"  {f['mode'] or '?'}{' ARMED' if f['armed'] else ''}"
        if world.has(entity, "battery"):
            line += f"  {world.get(entity, 'battery')['voltage']:.1f} V"
        if world.has(entity, "detections"):
            line += f"  faces {world.get(entity, 'detections')['count']}"
        lines.append(line)
    states = ", ".join(f"{c['name']}={c.get('state', '?')}" for c in runtime.components_status())
    lines.append(f"components: {states}")
    return "\n".join(lines)
