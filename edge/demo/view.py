"""The demo's console view: prints the fleet (position, speed, battery) every few seconds."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from edge.layer import DeviceContext
from edge.tasks import cancel_and_wait
from edge.world.store import World

VIEW_INTERVAL = 2.0  # seconds between console views

ComponentsStatus = Callable[[], list[dict[str, Any]]]


class FleetView:
    """Prints the demo fleet (position, speed, battery) to stdout every few seconds."""

    name = "view"

    def __init__(self, components: ComponentsStatus, interval: float = VIEW_INTERVAL) -> None:
        self.components = components
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self, ctx: DeviceContext) -> None:
        self._task = asyncio.create_task(self._run(ctx.world), name="edge.demo.view")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def status(self) -> dict[str, Any]:
        return {}

    async def _run(self, world: World) -> None:
        while True:
            await asyncio.sleep(self.interval)
            sys.stdout.write(render_fleet(world, self.components()) + "\n")
            sys.stdout.flush()

def render_fleet(world: World, components: list[dict[str, Any]]) -> str:
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
    states = ", ".join(f"{c['name']}={c.get('state', '?')}" for c in components)
    lines.append(f"components: {states}")
    return "\n".join(lines)
