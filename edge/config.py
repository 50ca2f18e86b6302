"""Device configuration: a TOML file, validated into typed dataclasses.

Every error names the key and the file. ``edge run`` with no file uses :func:`embedded_default`,
the demo device (embedded nats-server, emulated hardware, a small drone fleet).
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edge.errors import ConfigError
from edge.world.schema import ComponentSchema, schema_from_config
from edge.world.store import ENTITY_ID_RE

DEFAULT_PERSIST_INTERVAL = 1.0  # seconds
DEFAULT_BUCKET = "edge-state"
DEFAULT_DEADLINE = 2.0  # seconds a wasm call may run before its worker is killed
DEFAULT_RECYCLE_AFTER = 64  # component loads before a sandbox worker is replaced
DEFAULT_WORKERS = 1  # sandbox worker processes (each ~30 MB RSS); components are spread over them
DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
LOG_LEVELS = ("debug", "info", "warning", "error")

T = TypeVar("T")


@dataclass
class NatsConfig:
    url: str = ""  # external NATS server; empty = run the embedded one
    port: int = 0  # embedded server's client port on 127.0.0.1; 0 = any free port
    max_store_bytes: int | None = None
    credentials: str | None = None  # creds file for an external server


@dataclass
class StateConfig:
    bucket: str = DEFAULT_BUCKET
    persist_interval: float = DEFAULT_PERSIST_INTERVAL


@dataclass
class SandboxConfig:
    deadline: float = DEFAULT_DEADLINE
    recycle_after: int = DEFAULT_RECYCLE_AFTER
    workers: int = DEFAULT_WORKERS


@dataclass
class EntitySpec:
    id: str
    kind: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    components: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class DeviceConfig:
    device: str
    data_dir: Path
    file: str | None = None
    nats: NatsConfig = field(default_factory=NatsConfig)
    state: StateConfig = field(default_factory=StateConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    log_level: str = "info"
    log_json: bool = False
    schemas: list[ComponentSchema] = field(default_factory=list)
    components: list[Path] = field(default_factory=list)  # manifest paths
    entities: list[EntitySpec] = field(default_factory=list)
    drivers: list[dict[str, Any]] = field(default_factory=list)  # validated by drivers.config
    models: list[dict[str, Any]] = field(default_factory=list)  # validated by edge.inference.registry
    vision: list[dict[str, Any]] = field(default_factory=list)  # camera -> model -> detections
    agents: list[dict[str, Any]] = field(default_factory=list)  # validated by edge.agents.config
    tools: dict[str, Any] = field(default_factory=dict)  # tools service permissions
    hub: dict[str, Any] = field(default_factory=dict)  # leaf-node uplink, validated by edge.sync
    sync: dict[str, Any] = field(default_factory=dict)  # device stream limits, validated by edge.sync
    demo: bool = False
    demo_drones: int = 0


def default_device_id() -> str:
    host = re.sub(r"[^a-z0-9_-]", "-", socket.gethostname().lower()).strip("-")
    return host[:63] or "edge"


def default_data_dir(device: str) -> Path:
    env = os.environ.get("EDGE_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge" / device


class _Table:
    """Reads one TOML table, remembering which keys were used so unknown ones can be refused."""

    def __init__(self, data: Any, prefix: str, file: str | None) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError("expected a table", key=prefix or None, file=file)
        self.data = data
        self.prefix = prefix
        self.file = file
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, kind: type[T] | tuple[type, ...], default: T) -> T:
        self.used.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"expected {names}, got {value!r}", key=self.key(name), file=self.file)
        return value  # type: ignore[return-value]

    def sub(self, name: str) -> _Table:
        self.used.add(name)
        return _Table(self.data.get(name, {}), self.key(name), self.file)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError("unknown setting", key=self.key(unknown[0]), file=self.file)


def load_config(path: str | Path, *, data_dir: Path | None = None) -> DeviceConfig:
    """Read and validate a device config file."""
    file = str(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config file not found", file=file) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"invalid TOML: {err}", file=file) from None
    return parse_config(raw, file=file, base=Path(path).resolve().parent, data_dir=data_dir)


def parse_config(
    raw: Mapping[str, Any], *, file: str | None = None, base: Path | None = None, data_dir: Path | None = None
) -> DeviceConfig:
    base = base or Path.cwd()
    top = _Table(raw, "", file)

    dev = top.sub("device")
    device = dev.get("id", str, "") or default_device_id()
    if not DEVICE_ID_RE.match(device):
        raise ConfigError(
            f"device id {device!r} must be 1-63 characters of a-z 0-9 _ - (it names NATS subjects)",
            key="device.id",
            file=file,
        )
    data = dev.get("data_dir", str, "")
    dev.done()
    cfg = DeviceConfig(
        device=device,
        data_dir=data_dir or (base / data if data else default_data_dir(device)),
        file=file,
    )

    nats = top.sub("nats")
    cfg.nats.url = nats.get("url", str, "")
    cfg.nats.port = nats.get("port", int, 0)
    if not 0 <= cfg.nats.port <= 65535:
        raise ConfigError("port must be 0..65535", key="nats.port", file=file)
    max_store = nats.get("max_store_bytes", int, 0)
    cfg.nats.max_store_bytes = max_store or None
    creds = nats.get("credentials", str, "")
    cfg.nats.credentials = str(base / creds) if creds else None
    nats.done()

    state = top.sub("state")
    cfg.state.bucket = state.get("bucket", str, DEFAULT_BUCKET)
    if not re.match(r"^[A-Za-z0-9_-]+$", cfg.state.bucket):
        raise ConfigError("bucket names use A-Z a-z 0-9 _ -", key="state.bucket", file=file)
    cfg.state.persist_interval = state.get("persist_interval", float, DEFAULT_PERSIST_INTERVAL)
    if not 0.05 <= cfg.state.persist_interval <= 3600:
        raise ConfigError("persist_interval must be 0.05..3600 seconds", key="state.persist_interval", file=file)
    state.done()

    sandbox = top.sub("sandbox")
    cfg.sandbox.deadline = sandbox.get("deadline", float, DEFAULT_DEADLINE)
    if cfg.sandbox.deadline <= 0:
        raise ConfigError("deadline must be positive seconds", key="sandbox.deadline", file=file)
    cfg.sandbox.recycle_after = sandbox.get("recycle_after", int, DEFAULT_RECYCLE_AFTER)
    if cfg.sandbox.recycle_after < 1:
        raise ConfigError("recycle_after must be at least 1", key="sandbox.recycle_after", file=file)
    cfg.sandbox.workers = sandbox.get("workers", int, DEFAULT_WORKERS)
    if not 1 <= cfg.sandbox.workers <= 64:
        raise ConfigError("workers must be 1..64", key="sandbox.workers", file=file)
    sandbox.done()

    logt = top.sub("log")
    cfg.log_level = logt.get("level", str, "info").lower()
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"level must be one of {', '.join(LOG_LEVELS)}", key="log.level", file=file)
    cfg.log_json = logt.get("json", bool, False)
    logt.done()

    schemas = top.sub("schemas")
    for name, table in schemas.data.items():
        schemas.used.add(name)
        cfg.schemas.append(schema_from_config(name, table, file=file))

    top.used.add("components")
    for i, item in enumerate(_list(raw, "components", file)):
        t = _Table(item, f"components[{i}]", file)
        manifest = t.get("manifest", str, "")
        t.done()
        if not manifest:
            raise ConfigError("missing manifest path", key=t.key("manifest"), file=file)
        cfg.components.append(base / manifest)

    top.used.add("entities")
    for i, item in enumerate(_list(raw, "entities", file)):
        t = _Table(item, f"entities[{i}]", file)
        eid = t.get("id", str, "")
        if not ENTITY_ID_RE.match(eid):
            raise ConfigError("entity ids are 1-64 characters of A-Z a-z 0-9 _ -", key=t.key("id"), file=file)
        labels = t.get("labels", dict, {})
        comps = t.get("components", dict, {})
        spec = EntitySpec(eid, t.get("kind", str, ""), {str(k): str(v) for k, v in labels.items()}, comps)
        t.done()
        cfg.entities.append(spec)

    for section in ("drivers", "models", "vision", "agents"):
        top.used.add(section)
        setattr(cfg, section, [dict(item) for item in _list(raw, section, file)])
    for section in ("tools", "hub", "sync"):
        table = top.sub(section)
        setattr(cfg, section, dict(table.data))

    demo = top.sub("demo")
    cfg.demo_drones = demo.get("drones", int, 0)
    cfg.demo = cfg.demo_drones > 0
    demo.done()
    top.done()
    return cfg


def _list(raw: Mapping[str, Any], key: str, file: str | None) -> list[Mapping[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError(f"expected an array of tables ([[{key}]])", key=key, file=file)
    return value


def embedded_default(*, data_dir: Path | None = None, drones: int = 5) -> DeviceConfig:
    """The demo device that ``edge run`` starts when no config is given."""
    device = "demo"
    return DeviceConfig(
        device=device,
        data_dir=data_dir or default_data_dir(device),
        demo=True,
        demo_drones=drones,
    )
