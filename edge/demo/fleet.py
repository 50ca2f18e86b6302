"""The embedded demo device's config: a small drone fleet moved by the demo WebAssembly systems.

``edge run`` with no config starts it. Drones patrol squares (``patrol`` steers ``velocity``),
``physics`` integrates ``position``, ``battery`` drains ``battery.level`` and publishes a low-battery
event. ``drone-0`` is the emulated hardware drone (see :mod:`edge.demo.hardware`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from edge.agents.config import parse_agents
from edge.config import DeviceConfig, EntitySpec
from edge.inference.config import ModelSpec, VisionSpec
from edge.errors import ConfigError, EdgeError

if TYPE_CHECKING:
    from drivers.base import Driver
    from edge.layer import Layer

log = logging.getLogger("edge.demo")

DEMO_COMPONENTS = ("physics", "patrol", "battery")
DEMO_HW_ENTITY = "drone-0"  # the demo drone whose components come from emulated hardware


def components_dir() -> Path:
    """Where the built-in components live: $EDGE_COMPONENTS_DIR, else the ones built into the
    installed wheel (``edge/data/components``), else the source tree's components/."""
    env = os.environ.get("EDGE_COMPONENTS_DIR")
    if env:
        return Path(env)
    packaged = Path(__file__).resolve().parents[1] / "data" / "components"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "components"


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
    if DEMO_HW_ENTITY not in known:
        cfg.entities.append(EntitySpec(id=DEMO_HW_ENTITY, kind="drone", labels={"fleet": "demo", "hardware": "emulated"}))
    if not cfg.agents:
        cfg.agents.extend(parse_agents([{"kind": "follow", "entity": DEMO_HW_ENTITY}]))
    face = _face_model()
    if face is not None and not cfg.models:
        cfg.models.append(ModelSpec(name="face", path=str(face)))
        cfg.vision.append(VisionSpec(model="face", camera=None, entity=DEMO_HW_ENTITY))
    return cfg


def _face_model() -> Path | None:
    """The demo's detection model, if the optional `demo` extra is installed."""
    try:
        from edge.inference.blazeface import face_model_path

        return face_model_path()
    except EdgeError as err:
        log.info("demo runs without vision: %s", err.message)
        return None


def demo_parts(device: str, data_dir: Path) -> tuple[list[Driver], list[Layer]]:
    """What the demo adds to the composition: the emulated drone's drivers (flight controller,
    GPS, IMU, power monitor, camera), the stand-in actuator of the simulated fleet and, with the
    emulated flight controller, the pilot that launches drone-0 and flies its velocity commands
    (:func:`velocity_via` says through what)."""
    from edge.demo.actuator import SimActuator
    from edge.demo.hardware import EmulatorsDriver, demo_hardware

    drivers = demo_hardware(device, DEMO_HW_ENTITY, rundir=str(data_dir / "emulators"))
    layers: list[Layer] = [SimActuator()]
    emu = next((d for d in drivers if isinstance(d, EmulatorsDriver)), None)
    if emu is not None:
        from edge.demo.pilot import DemoPilot

        via = velocity_via(drivers)
        layers.append(DemoPilot(DEMO_HW_ENTITY, lambda: emu.companion_port, serve_velocity=via == "pilot"))
    return drivers, layers


def velocity_via(drivers: list[Driver]) -> str:
    """Who flies drone-0's ``velocity`` commands: ``"driver"`` once the flight-controller driver
    declares the verb itself, else ``"pilot"`` (setpoints on the emulator's companion port). The
    integration point for the MAVLink driver's own velocity command."""
    fc = next((d for d in drivers if d.kind == "mavlink"), None)
    return "driver" if fc is not None and "velocity" in fc.commands() else "pilot"
