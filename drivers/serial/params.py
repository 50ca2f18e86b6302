"""The MAVLink driver's config keys, read without importing pymavlink.

:func:`mavlink_params` reads and checks every kind-specific key of a ``kind = "mavlink"`` table
and returns the constructor arguments that were given (the driver's own defaults apply to the
rest). The config check at load uses it (see :data:`drivers.config.CHECKS`), and so does
:func:`drivers.serial.mavlink.from_config`, so the keys are read in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drivers.config import REQUIRED

if TYPE_CHECKING:
    from drivers.config import Table


def mavlink_params(t: Table) -> dict[str, Any]:
    """``port`` (a path, relative to the config file), ``baud``, ``target_system``,
    ``target_component``, ``telemetry_hz``, ``heartbeat_s``, ``link_timeout_s``,
    ``command_timeout_s``, and the command side (:mod:`drivers.serial.mavcommands`):
    ``autopilot`` (auto | ardupilot | px4), ``setpoint_hz``, ``setpoint_timeout_s``,
    ``confirm_timeout_s``, ``px4_prestream_s``."""
    given = {
        "port": str(t.path("port", REQUIRED)),
        "baudrate": t.integer("baud", None, lo=1200, hi=4_000_000),
        "target_system": t.integer("target_system", None, lo=1, hi=255),
        "target_component": t.integer("target_component", None, lo=0, hi=255),
        "telemetry_hz": t.number("telemetry_hz", None, lo=0.1, hi=400.0, unit="Hz"),
        "heartbeat_s": t.number("heartbeat_s", None, lo=0.1, hi=10.0, unit="s"),
        "link_timeout_s": t.number("link_timeout_s", None, lo=0.5, hi=120.0, unit="s"),
        "command_timeout_s": t.number("command_timeout_s", None, lo=0.1, hi=60.0, unit="s"),
        "autopilot": t.choice("autopilot", ("auto", "ardupilot", "px4"), None),
        "setpoint_hz": t.number("setpoint_hz", None, lo=1.0, hi=50.0, unit="Hz"),
        "setpoint_timeout_s": t.number("setpoint_timeout_s", None, lo=0.2, hi=60.0, unit="s"),
        "confirm_timeout_s": t.number("confirm_timeout_s", None, lo=0.05, hi=10.0, unit="s"),
        "px4_prestream_s": t.number("px4_prestream_s", None, lo=0.1, hi=10.0, unit="s"),
    }
    return {k: v for k, v in given.items() if v is not None}
