"""The device config: TOML -> typed sections, validated as it loads.

- :mod:`edge.config.table`: the one config reader (typed getters, unknown keys refused, errors
  naming the key and the file in one style).
- :mod:`edge.config.device`: :class:`DeviceConfig`, :func:`load_config`, :func:`parse_config`,
  :func:`embedded_default`; each section's reader lives with its concern.
"""

from __future__ import annotations

from edge.config.device import (
    DEFAULT_BUCKET,
    DEFAULT_DEADLINE,
    DEFAULT_PERSIST_INTERVAL,
    DEFAULT_RECYCLE_AFTER,
    DEFAULT_WORKERS,
    DEVICE_ID_RE,
    LOG_LEVELS,
    DeviceConfig,
    EntitySpec,
    NatsConfig,
    SandboxConfig,
    StateConfig,
    default_data_dir,
    default_device_id,
    embedded_default,
    load_config,
    parse_config,
)
from edge.config.table import REQUIRED, Table

__all__ = [
    "DEFAULT_BUCKET", "DEFAULT_DEADLINE", "DEFAULT_PERSIST_INTERVAL", "DEFAULT_RECYCLE_AFTER", "DEFAULT_WORKERS",
    "DEVICE_ID_RE", "LOG_LEVELS", "REQUIRED", "DeviceConfig", "EntitySpec", "NatsConfig", "SandboxConfig",
    "StateConfig", "Table", "default_data_dir", "default_device_id", "embedded_default", "load_config",
    "parse_config",
]
