"""One source per component: which driver's readings land in an entity's component.

Two drivers on one entity may report the same component (a flight controller and a GPS both
give ``geo``). Without a rule the component would interleave both. :class:`SourceArbiter` keeps,
per ``(entity, component)``, the drivers that write it and picks one:

* **Priority**: drivers that list the component in their ``primary`` key come first, then the
  others in the order of the config's ``[[drivers]]``.
* **Fallback**: the active source is the first in that order that is *fresh*: its driver is
  running and its last reading of the component is at most its ``stale_after_s`` old (default
  2 s). When the primary goes stale the next fresh one takes over; when it is fresh again it
  takes back over at its next reading. With no fresh source, the last active one stays.
* **Every source stays visible**: once a component has two sources, each driver's readings are
  also written under ``<component>_<driver>`` (``geo_gps``, ``geo_fc``), with the same fields.
  While a component has a single source nothing is duplicated.

:meth:`SourceArbiter.provenance` is what the world reports per component (``World.freshness``):
``source``, ``stale`` (the source's driver is down or silent beyond its ``stale_after_s``) and the
``others``. A dead driver's values thus read as stale while it is down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("edge.hardware.sources")

DEFAULT_STALE_AFTER_S = 2.0


@dataclass(frozen=True)
class SourceInfo:
    """What the arbiter knows of one driver."""

    name: str
    order: int  # position in the config
    primary: frozenset[str] = frozenset()
    stale_after_s: float = DEFAULT_STALE_AFTER_S


@dataclass
class _Slot:
    last: dict[str, float] = field(default_factory=dict)  # source -> monotonic time of its last reading
    active: str | None = None
    switches: int = 0


class SourceArbiter:
    """Routes driver readings to component names (see the module docstring)."""

    def __init__(self, sources: Sequence[SourceInfo], running: Callable[[str], bool]) -> None:
        self.sources = {s.name: s for s in sources}
        self.running = running
        self._slots: dict[tuple[str, str], _Slot] = {}

    def _rank(self, component: str, name: str) -> tuple[int, int]:
        info = self.sources.get(name)
        if info is None:
            return (1, 1 << 30)
        return (0 if component in info.primary else 1, info.order)

    def _stale_after(self, name: str) -> float:
        info = self.sources.get(name)
        return info.stale_after_s if info is not None else DEFAULT_STALE_AFTER_S

    def fresh(self, slot: _Slot, name: str, now: float) -> bool:
        last = slot.last.get(name)
        return last is not None and now - last <= self._stale_after(name) and self.running(name)

    def route(self, entity: str, component: str, source: str, now: float | None = None) -> list[str]:
        """The component names ``source``'s reading of ``component`` is written to."""
        now = time.monotonic() if now is None else now
        slot = self._slots.setdefault((entity, component), _Slot())
        slot.last[source] = now
        if len(slot.last) == 1:
            slot.active = source
            return [component]
        order = sorted(slot.last, key=lambda n: self._rank(component, n))
        active = next((n for n in order if self.fresh(slot, n, now)), slot.active)
        if active != slot.active:
            log.info("%s.%s: source %s -> %s", entity, component, slot.active, active)
            slot.switches += 1
            slot.active = active
        own = f"{component}_{source}"
        return [own, component] if source == active else [own]

    def provenance(self, entity: str, component: str) -> Mapping[str, Any] | None:
        """``{"source", "stale", "others"}`` of a component a driver writes; for a per-source
        copy (``geo_gps``) its driver and staleness; None for other components."""
        now = time.monotonic()
        slot = self._slots.get((entity, component))
        if slot is not None and slot.active is not None:
            return {"source": slot.active, "stale": not self.fresh(slot, slot.active, now),
                    "others": sorted(n for n in slot.last if n != slot.active), "switches": slot.switches}
        base, _, name = component.rpartition("_")
        slot = self._slots.get((entity, base))
        if base and slot is not None and name in slot.last:
            return {"source": name, "stale": not self.fresh(slot, name, now)}
        return None

    def status(self) -> dict[str, dict[str, Any]]:
        """Per ``entity.component`` with more than one source: the active one and every source's age."""
        now = time.monotonic()
        return {f"{e}.{c}": {"active": s.active, "switches": s.switches,
                             "age_s": {n: round(now - t, 2) for n, t in sorted(s.last.items())}}
                for (e, c), s in sorted(self._slots.items()) if len(s.last) > 1}
