"""The drivers as a runtime layer (``edge status`` section ``drivers``).

Key components
- :func:`build_drivers`: drivers from the config's ``[[drivers]]`` entries (lazily importing only
  the kinds used, so a device without a flight controller never imports pymavlink).
- :class:`HardwareLayer`: starts, supervises and stops the drivers; registers each driver's verbs
  with the device's command router (answered with the driver's state while it is down); picks
  one source per component (:mod:`edge.hardware.sources`) and tells the world who wrote what;
  exposes camera frame slots to the composition root (which hands them to inference and tools).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from drivers.base import Driver, DriverState
from drivers.config import DriverSpec
from drivers.supervisor import DriverSupervisor
from edge.hardware.context import RuntimeDriverContext
from edge.hardware.sources import SourceArbiter, SourceInfo
from edge.layer import DeviceContext

if TYPE_CHECKING:
    from drivers.camera.frames import LatestFrame

log = logging.getLogger("edge.hardware")


def build_drivers(specs: Sequence[DriverSpec]) -> list[Driver]:
    """Drivers from the config's validated ``[[drivers]]`` entries (importing each kind's module now)."""
    return [spec.build() for spec in specs]


class HardwareLayer:
    """Starts, supervises and stops the device's drivers."""

    name = "drivers"

    def __init__(self, drivers: Sequence[Driver]) -> None:
        self.drivers = list(drivers)
        self.supervisor: DriverSupervisor | None = None
        self.context: RuntimeDriverContext | None = None

    async def start(self, ctx: DeviceContext) -> None:
        self.context = RuntimeDriverContext(ctx.device, ctx.world, ctx.nc, ctx.events, ctx.commands)
        by_name = {d.name: d for d in self.drivers}
        self.context.sources = SourceArbiter(
            [SourceInfo(d.name, i, d.primary, d.stale_after_s) for i, d in enumerate(self.drivers)],
            lambda name: name in by_name and by_name[name].state is DriverState.RUNNING)
        ctx.world.provenance = self.context.sources.provenance
        self.supervisor = DriverSupervisor(self.context, self.drivers)
        for driver in self.drivers:  # every verb answered from now on: by the driver or with its state
            self.context.own(driver, self.supervisor.status_of)
        await self.supervisor.start()
        log.info("%d drivers started", len(self.drivers))

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.context is not None:
            self.context.disown_all()

    def status(self) -> list[dict[str, Any]]:
        if self.supervisor is None:
            return []
        by_name = {d.name: d for d in self.drivers}
        rows = []
        for st in self.supervisor.status():
            row = st.to_dict()
            driver = by_name.get(st.name)
            extra = driver.details() if driver is not None else {}
            if extra:
                row["details"] = extra
            rows.append(row)
        return rows

    def frames(self, camera: str | None = None) -> LatestFrame | None:
        """The latest-frame slot of a camera driver (the first camera if no name is given)."""
        for d in self.drivers:
            slot = d.frame_slot()
            if slot is not None and (camera is None or d.name == camera):
                return slot
        return None
