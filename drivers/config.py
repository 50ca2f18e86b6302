"""Building drivers from device-config tables (``[[drivers]]`` in the device's TOML).

Key components
- :func:`build_driver`: ``kind`` selects a factory; the factory reads its keys through a
  :class:`Table`, which checks types and units and refuses unknown keys, naming the key and file.
- :data:`KINDS`: kind -> factory location. Factories are imported only when their kind is used,
  so a device without a camera never imports camera code.

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
from typing import Any, TypeVar, cast

from drivers.base import Driver
from edge.errors import ConfigError

T = TypeVar("T")

BACKENDS = ("real", "emulated")
COMMON_KEYS = frozenset({"name", "kind", "entity", "backend", "publish"})

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


class Table:
    """Typed, checked access to one ``[[drivers]]`` table. Every read key is remembered so that
    :meth:`finish` can refuse keys nobody read (typos)."""

    def __init__(self, name: str, data: Mapping[str, Any], file: str | None) -> None:
        self.name = name
        self.data = data
        self.file = file
        self._seen: set[str] = set(COMMON_KEYS)

    def key(self, key: str) -> str:
        return f"drivers.{self.name}.{key}"

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"driver {self.name!r}: {message}", key=self.key(key), file=self.file)

    def _get(self, key: str, types: tuple[type, ...], default: Any, what: str) -> Any:
        self._seen.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise self.error(key, f"missing required key '{key}' ({what})")
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in types:
            raise self.error(key, f"'{key}' must be {what}, not a boolean")
        if not isinstance(value, types):
            raise self.error(key, f"'{key}' must be {what}, got {value!r}")
        return value

    def text(self, key: str, default: Any = None) -> Any:
        return self._get(key, (str,), default, "a string")

    def integer(self, key: str, default: Any = None, *, lo: int | None = None, hi: int | None = None) -> Any:
        v = self._get(key, (int,), default, "an integer")
        if isinstance(v, int) and ((lo is not None and v < lo) or (hi is not None and v > hi)):
            raise self.error(key, f"'{key}' = {v} is out of range [{lo}, {hi}]")
        return v

    def number(self, key: str, default: Any = None, *, lo: float | None = None,
              hi: float | None = None) -> Any:
        v = self._get(key, (int, float), default, "a number")
        if v is None:
            return None
        v = float(v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.error(key, f"'{key}' = {v} is out of range [{lo}, {hi}]")
        return v

    def flag(self, key: str, default: Any = None) -> Any:
        return self._get(key, (bool,), default, "true or false")

    def choice(self, key: str, choices: tuple[str, ...], default: Any = None) -> Any:
        v = self.text(key, default)
        if v is not None and v not in choices:
            raise self.error(key, f"'{key}' must be one of {', '.join(choices)}; got {v!r}")
        return v

    def items(self, key: str, default: Any = None) -> Any:
        return self._get(key, (list, tuple), default, "a list")

    @property
    def entity(self) -> str:
        return cast(str, self.text("entity", _REQUIRED))

    @property
    def backend(self) -> str:
        return cast(str, self.choice("backend", BACKENDS, "real"))

    @property
    def emulated(self) -> bool:
        return self.backend == "emulated"

    @property
    def publish(self) -> bool:
        return cast(bool, self.flag("publish", True))

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise self.error(unknown[0], f"unknown key '{unknown[0]}' for kind {self.data.get('kind')!r}")


class _Required:
    def __repr__(self) -> str:
        return "<required>"


_REQUIRED: Any = _Required()
REQUIRED: Any = _REQUIRED


def build_driver(name: str, table: Mapping[str, Any], *, file: str | None = None) -> Driver:
    """Build (not start) the driver described by ``table``.

    Common keys: ``kind`` (required), ``entity`` (required), ``backend`` ("real" | "emulated",
    default "real"), ``publish`` (publish telemetry on subjects, default true), ``name`` (if
    present it must equal ``name``). Each kind's keys are in docs/drivers/. Raises
    :class:`~edge.errors.ConfigError` naming the key and file.
    """
    t = Table(name, table, file)
    if "name" in table and table["name"] != name:
        raise t.error("name", f"'name' = {table['name']!r} does not match {name!r}")
    kind = t.text("kind", REQUIRED)
    if kind not in KINDS:
        raise t.error("kind", f"unknown driver kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    t.entity  # noqa: B018 - check presence early, with a clear message
    t.backend  # noqa: B018
    module_name, func_name = KINDS[kind].split(":")
    factory = cast(Callable[[Table], Driver], getattr(importlib.import_module(module_name), func_name))
    try:
        driver = factory(t)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"driver {name!r}: {exc}", key=t.key("kind"), file=file) from exc
    t.finish()
    return driver
