"""Building drivers from device-config tables (``[[drivers]]`` in the device's TOML).

Key components
- :class:`Table`: the config reader (:class:`edge.config.table.Table`) for one ``[[drivers]]``
  table, plus the driver's common keys (``name``, ``entity``, ``backend``, ``publish``). A
  factory reads its keys through it; a key no factory read is refused, naming the key and file.
- :class:`DriverSpec` / :func:`read_drivers`: the validated ``[[drivers]]`` entries of a config,
  checked when the config loads; :meth:`DriverSpec.build` makes the driver.
- :func:`build_driver`: ``kind`` selects a factory and runs it.
- :data:`KINDS`: kind -> factory location. Factories are imported only when their kind is used,
  so a device without a camera never imports camera code.

Validation at load (``load_config``): the common keys, and every kind-specific key. For that the
kind's factory runs against the table at load and the driver it returns is dropped (constructors
touch no hardware: buses, ports and pins open in ``start``). A kind whose factory module imports
a heavy library (pymavlink) names a light *check* in :data:`CHECKS` instead, which reads every
key through the same :class:`Table` and builds nothing; its module is imported only when the
hardware layer builds the driver.

Example
    [[drivers]]
    name = "baro"
    kind = "bme280"
    bus = 1
    address = 0x76
    rate_hz = 5
    entity = "drone1"
    backend = "real"        # or "emulated"
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from drivers.base import DEFAULT_STALE_AFTER_S, Driver
from edge.config.table import REQUIRED
from edge.config.table import Table as ConfigTable
from edge.errors import ConfigError
from edge.world.schema import NAME_RE

__all__ = ["BACKENDS", "CHECKS", "COMMON_KEYS", "KINDS", "REQUIRED", "DriverSpec", "Table", "build_driver",
           "read_drivers"]

BACKENDS = ("real", "emulated")
COMMON_KEYS = frozenset({"name", "kind", "entity", "backend", "publish", "primary", "stale_after_s"})

# kind -> "module:function"; the function takes a Table and returns a Driver.
KINDS: dict[str, str] = {
    "bme280": "drivers.i2c.bme280:from_config",
    "bmp280": "drivers.i2c.bme280:from_config",
    "mpu6050": "drivers.i2c.mpu6050:from_config",
    "ina219": "drivers.i2c.ina219:from_config",
    "led": "drivers.gpio.outputs:led_from_config",
    "pwm": "drivers.gpio.outputs:pwm_from_config",
    "button": "drivers.gpio.inputs:from_config",
    "mavlink": "drivers.serial.mavlink:from_config",
    "nmea_gps": "drivers.serial.nmea:from_config",
    "camera": "drivers.camera.driver:from_config",
}

# kind -> "module:function" reading every key of the kind without building (or importing) the
# driver; for kinds whose factory module is heavy to import. Other kinds are checked by building.
CHECKS: dict[str, str] = {
    "mavlink": "drivers.serial.params:mavlink_params",
}


class Table(ConfigTable):
    """One ``[[drivers]]`` table: the config reader with the drivers' common keys. Keys are
    ``drivers[<index>].<key>``; messages start with ``driver '<name>': ``."""

    def __init__(self, name: str, data: Mapping[str, Any], file: str | None, *, index: int = 0,
                 base: Path | None = None) -> None:
        super().__init__(data, key=f"drivers[{index}]", file=file, base=base, label=f"driver {name!r}")
        self.name = name
        self.index = index
        self.mark(*COMMON_KEYS)

    @property
    def kind(self) -> str:
        return str(self.text("kind", REQUIRED))

    @property
    def entity(self) -> str:
        return str(self.text("entity", REQUIRED))

    @property
    def backend(self) -> str:
        return self.choice("backend", BACKENDS, "real")

    @property
    def emulated(self) -> bool:
        return self.backend == "emulated"

    @property
    def publish(self) -> bool:
        return self.flag("publish", True)

    @property
    def primary(self) -> list[str]:
        """Components this driver is the first source of on its entity (docs/drivers/README.md)."""
        names = self.strings("primary", [])
        for n in names:
            if not NAME_RE.match(n):
                raise self.error("primary", f"{n!r} is not a component name ([a-z][a-z0-9_]*)")
        return names

    @property
    def stale_after_s(self) -> float:
        return self.number("stale_after_s", DEFAULT_STALE_AFTER_S, lo=0.05, hi=3600.0, unit="s")

    def finish(self) -> None:
        unknown = self.unread()
        if unknown:
            raise self.error(unknown[0], f"unknown key '{unknown[0]}' for kind {self.data.get('kind')!r}")


def _load(location: str) -> Callable[[Table], Any]:
    module_name, func_name = location.split(":")
    return cast(Callable[[Table], Any], getattr(importlib.import_module(module_name), func_name))


def _common(t: Table, name: str) -> str:
    if "name" in t.data and t.data["name"] != name:
        raise t.error("name", f"name {t.data['name']!r} does not match {name!r}")
    kind = t.kind
    if kind not in KINDS:
        raise t.error("kind", f"unknown driver kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    t.entity  # noqa: B018 - check presence early, with a clear message
    t.backend  # noqa: B018
    t.publish  # noqa: B018
    t.primary  # noqa: B018
    t.stale_after_s  # noqa: B018
    return kind


def _run(t: Table, location: str) -> Any:
    try:
        out = _load(location)(t)
    except ConfigError:
        raise
    except ValueError as exc:
        raise t.error("kind", str(exc)) from exc
    t.finish()
    return out


def build_driver(name: str, table: Mapping[str, Any], *, file: str | None = None, index: int = 0,
                 base: Path | None = None) -> Driver:
    """Build (not start) the driver described by ``table``.

    Common keys: ``kind`` (required), ``entity`` (required), ``backend`` ("real" | "emulated",
    default "real"), ``publish`` (publish telemetry on subjects, default true), ``primary``
    (components this driver is the first source of, default none), ``stale_after_s`` (its
    readings are stale after this many seconds, default 2), ``name`` (if present it must equal
    ``name``). Each kind's keys are in docs/drivers/. Paths are relative
    to ``base`` (the config file's directory). Raises :class:`~edge.errors.ConfigError` naming
    the key (``drivers[<index>].<key>``) and file.
    """
    t = Table(name, table, file, index=index, base=base)
    kind = _common(t, name)
    driver = cast(Driver, _run(t, KINDS[kind]))
    driver.primary = frozenset(t.primary)
    driver.stale_after_s = t.stale_after_s
    return driver


@dataclass(frozen=True)
class DriverSpec:
    """One validated ``[[drivers]]`` entry. The table is kept so that the hardware layer builds
    the driver (importing its module) only when the device is assembled."""

    name: str
    kind: str
    entity: str
    backend: str
    table: Mapping[str, Any]
    file: str | None = None
    index: int = 0
    base: Path | None = None

    def build(self) -> Driver:
        return build_driver(self.name, self.table, file=self.file, index=self.index, base=self.base)

    def check(self) -> None:
        """Validate every key of the table (see the module docstring: light kinds are built)."""
        check = CHECKS.get(self.kind)
        if check is None:
            self.build()
            return
        t = Table(self.name, self.table, self.file, index=self.index, base=self.base)
        _common(t, self.name)
        _run(t, check)


def read_drivers(tables: list[ConfigTable]) -> list[DriverSpec]:
    """The ``[[drivers]]`` array: every table validated (names unique), nothing started."""
    out: list[DriverSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(tables):
        name = raw.data.get("name")
        if not isinstance(name, str) or not name:
            raise raw.error("name", "every driver needs a name (a non-empty string)")
        if name in seen:
            raise raw.error("name", f"driver name {name!r} is used twice")
        seen.add(name)
        t = Table(name, raw.data, raw.file, index=i, base=raw.base)
        kind = _common(t, name)
        spec = DriverSpec(name, kind, t.entity, t.backend, dict(raw.data), raw.file, i, raw.base)
        spec.check()
        out.append(spec)
    return out
