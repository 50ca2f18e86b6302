"""The device config: a TOML file, read into typed sections and validated as it loads.

Key components
- :func:`load_config` / :func:`parse_config`: a file (or a parsed mapping) -> :class:`DeviceConfig`.
  Every section is read with the one config reader (:class:`edge.config.table.Table`) and every
  error names the key and the file; nothing is left to validate when the runtime is built.
- :func:`embedded_default`: the demo device that ``edge run`` starts without a file.

Each section's dataclass and reader live with their concern; this module only orchestrates:

==============  =====================================  ==========================================
section         type                                   reader
==============  =====================================  ==========================================
``hub``         ``HubLink | None``                     :func:`edge.sync.device.config.read_hub`
``sync``        ``SyncConfig``                         :func:`edge.sync.device.config.read_sync`
``tools``       ``ToolsConfig``                        :func:`edge.agents.tools.permissions.read_tools`
``models``      ``list[ModelSpec]``                    :func:`edge.inference.config.read_models`
``vision``      ``list[VisionSpec]``                   :func:`edge.inference.config.read_vision`
``agents``      ``list[AgentSpec]``                    :func:`edge.agents.config.read_agents`
``language``    ``LanguageConfig``                     :func:`edge.language.config.read_language`
``drivers``     ``list[DriverSpec]``                   :func:`drivers.config.read_drivers`
``schemas``     ``list[ComponentSchema]``              :func:`edge.world.schema.read_schema`
``safety``      ``SafetyConfig``                       :func:`edge.safety.config.read_safety`
``policy``      ``PolicyConfig``                       :func:`edge.policy.config.read_policy`
==============  =====================================  ==========================================

Paths in the file are relative to the file (``base``): ``device.data_dir``, ``nats.credentials``,
``components[].manifest``, ``models[].path``, the ``[hub]`` files, driver ports and files.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.nats.subjects import STATE_BUCKET
from edge.config.table import REQUIRED, Table
from edge.wasm.origin import DEFAULT_MAX_HOPS, MAX_HOPS
if TYPE_CHECKING:  # the section modules import the reader (edge.config.table): imported when used
    from drivers.config import DriverSpec
    from edge.agents.config import AgentSpec
    from edge.agents.tools.permissions import ToolsConfig
    from edge.inference.config import ModelSpec, VisionSpec
    from edge.policy.config import PolicyConfig
    from edge.ota.config import OtaConfig
    from edge.safety.config import SafetyConfig
    from edge.language.config import LanguageConfig
    from edge.sync.device.config import SyncConfig
    from edge.sync.device.leaf import HubLink
    from edge.world.schema import ComponentSchema

DEFAULT_PERSIST_INTERVAL = 1.0  # seconds
DEFAULT_BUCKET = STATE_BUCKET
DEFAULT_DEADLINE = 2.0  # seconds a wasm call may run before its worker is killed
DEFAULT_RECYCLE_AFTER = 64  # component loads before a sandbox worker is replaced
DEFAULT_MAX_WORKER_RSS_MB = 96  # MiB of RSS past which a sandbox worker is replaced; 0 = never
DEFAULT_WORKERS = 1  # sandbox worker processes (each ~24 MB RSS); components are spread over them
DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
LOG_LEVELS = ("debug", "info", "warning", "error")

@dataclass
class NatsConfig:
    url: str = ""  # external NATS server; empty = run the embedded one
    port: int = 0  # embedded server's client port on 127.0.0.1; 0 = any free port
    # JetStream limits of the embedded server (edge.nats.storage); None = the default: half the
    # data dir's filesystem for the file store, 64 MiB for the memory store
    max_store_bytes: int | None = None
    max_mem_bytes: int | None = None
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
    max_worker_rss_mb: int = DEFAULT_MAX_WORKER_RSS_MB
    max_hops: int = DEFAULT_MAX_HOPS


@dataclass
class EntitySpec:
    id: str
    kind: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    components: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class DeviceConfig:
    """A validated device config: every section typed (see the module docstring for where each
    section's type and reader live). Build one with :func:`load_config` or :func:`parse_config`."""

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
    drivers: list[DriverSpec] = field(default_factory=list)
    models: list[ModelSpec] = field(default_factory=list)
    vision: list[VisionSpec] = field(default_factory=list)  # camera -> model -> detections
    agents: list[AgentSpec] = field(default_factory=list)
    tools: ToolsConfig = field(default_factory=lambda: _tools_default())  # the tools service and its permissions
    hub: HubLink | None = None  # leaf-node uplink; None = standalone
    sync: SyncConfig = field(default_factory=lambda: _sync_default())  # device stream limits
    safety: SafetyConfig = field(default_factory=lambda: _safety_default())  # the motion envelope
    language: LanguageConfig = field(default_factory=lambda: _language_default())  # docs/language.md
    policy: PolicyConfig = field(default_factory=lambda: _policy_default())  # the policy point
    record: bool = True  # [record] enabled: the replay recorder (docs/replay.md)
    ota: OtaConfig | None = None  # [ota] signed over-the-air updates (docs/ota.md); None = off
    fragments: list[str] = field(default_factory=list)  # OTA config fragments laid over the file (name@version)
    overlay: dict[str, Any] = field(default_factory=dict)  # what those fragments set, merged (edge.config.overlay)
    boot: str = ""  # the start this config was loaded for, when it counted one (edge.ota.fragments)
    demo: bool = False
    demo_drones: int = 0


def _tools_default() -> ToolsConfig:
    from edge.agents.tools.permissions import ToolsConfig

    return ToolsConfig()


def _sync_default() -> SyncConfig:
    from edge.sync.device.config import SyncConfig

    return SyncConfig()


def _safety_default() -> SafetyConfig:
    from edge.safety.config import SafetyConfig

    return SafetyConfig()


def _language_default() -> LanguageConfig:
    from edge.language.config import LanguageConfig

    return LanguageConfig()
def _policy_default() -> PolicyConfig:
    from edge.policy.config import PolicyConfig

    return PolicyConfig()


def default_device_id() -> str:
    host = re.sub(r"[^a-z0-9_-]", "-", socket.gethostname().lower()).strip("-")
    return host[:63] or "edge"


def default_data_dir(device: str) -> Path:
    env = os.environ.get("EDGE_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge" / device


def load_config(path: str | Path, *, data_dir: Path | None = None) -> DeviceConfig:
    """Read and validate a device config file. A file that cannot be read (missing, a directory,
    unreadable), is not UTF-8 or is not TOML is a ConfigError naming the file, as ``edge run``
    reports it."""
    from edge.config.overlay import read_toml  # overlay builds on this module

    raw = read_toml(path)
    return parse_config(raw, file=str(path), base=Path(path).resolve().parent, data_dir=data_dir)


def parse_config(
    raw: Mapping[str, Any], *, file: str | None = None, base: Path | None = None, data_dir: Path | None = None
) -> DeviceConfig:
    """Validate a parsed config. Relative paths are relative to ``base`` (the file's directory;
    the working directory when not given)."""
    from drivers.config import read_drivers
    from edge.agents.config import read_agents
    from edge.agents.tools.permissions import read_tools
    from edge.inference.config import read_models, read_vision
    from edge.policy.config import read_policy
    from edge.safety.config import read_safety
    from edge.language.config import read_language
    from edge.sync.device.config import read_hub, read_sync
    from edge.world.schema import read_schema
    from edge.world.store import ENTITY_ID_RE

    base = base or Path.cwd()
    top = Table(raw, file=file, base=base)

    dev = top.table("device")
    device = dev.text("id", "") or default_device_id()
    if not DEVICE_ID_RE.match(device):
        raise dev.error("id", f"device id {device!r} must be 1-63 characters of a-z 0-9 _ - (it names NATS subjects)")
    data = dev.path("data_dir", None)
    dev.finish()
    cfg = DeviceConfig(device=device, data_dir=data_dir or data or default_data_dir(device), file=file)

    nats = top.table("nats")
    cfg.nats.url = nats.text("url", "")
    cfg.nats.port = nats.integer("port", 0, lo=0, hi=65535)
    cfg.nats.max_store_bytes = nats.integer("max_store_bytes", 0, lo=0, unit="bytes") or None
    cfg.nats.max_mem_bytes = nats.integer("max_mem_bytes", 0, lo=0, unit="bytes") or None
    creds = nats.path("credentials", None)
    cfg.nats.credentials = str(creds) if creds else None
    nats.finish()

    state = top.table("state")
    cfg.state.bucket = state.text("bucket", DEFAULT_BUCKET)
    if not re.match(r"^[A-Za-z0-9_-]+$", cfg.state.bucket):
        raise state.error("bucket", "bucket names use A-Z a-z 0-9 _ -")
    cfg.state.persist_interval = state.number("persist_interval", DEFAULT_PERSIST_INTERVAL, lo=0.05, hi=3600,
                                              unit="s")
    state.finish()

    sandbox = top.table("sandbox")
    cfg.sandbox.deadline = sandbox.number("deadline", DEFAULT_DEADLINE, lo=0.001, unit="s")
    cfg.sandbox.recycle_after = sandbox.integer("recycle_after", DEFAULT_RECYCLE_AFTER, lo=1, unit="loads")
    cfg.sandbox.workers = sandbox.integer("workers", DEFAULT_WORKERS, lo=1, hi=64)
    cfg.sandbox.max_worker_rss_mb = sandbox.integer("max_worker_rss_mb", DEFAULT_MAX_WORKER_RSS_MB,
                                                    lo=0, unit="MiB")
    cfg.sandbox.max_hops = sandbox.integer("max_hops", DEFAULT_MAX_HOPS, lo=1, hi=MAX_HOPS, unit="handlers")
    sandbox.finish()

    logt = top.table("log")
    cfg.log_level = logt.text("level", "info").lower()
    if cfg.log_level not in LOG_LEVELS:
        raise logt.error("level", f"must be one of {', '.join(LOG_LEVELS)}; got {cfg.log_level!r}")
    cfg.log_json = logt.flag("json", False)
    logt.finish()

    schemas = top.table("schemas")
    for name in schemas.names():
        cfg.schemas.append(read_schema(name, schemas.table(name)))

    for t in top.tables("components"):
        manifest = t.path("manifest", None)
        t.finish()  # a misspelt key is named before the missing one
        if manifest is None:
            raise t.error("manifest", "missing required key 'manifest' (a path)")
        cfg.components.append(manifest)

    for t in top.tables("entities"):
        eid = t.text("id", REQUIRED)
        if not ENTITY_ID_RE.match(eid):
            raise t.error("id", f"entity ids are 1-64 characters of A-Z a-z 0-9 _ -, got {eid!r}")
        labels = t.mapping("labels", {})
        spec = EntitySpec(eid, t.text("kind", ""), {str(k): str(v) for k, v in labels.items()},
                          t.mapping("components", {}))
        t.finish()
        cfg.entities.append(spec)

    cfg.drivers = read_drivers(top.tables("drivers"))
    cfg.models = read_models(top.tables("models"))
    cfg.vision = read_vision(top.tables("vision"))
    cfg.agents = read_agents(top.tables("agents"))
    cfg.tools = read_tools(top.table("tools"))
    cfg.hub = read_hub(top.table("hub"))
    cfg.sync = read_sync(top.table("sync"))
    cfg.safety = read_safety(top.table("safety"))
    cfg.language = read_language(top.table("language"))
    cfg.policy = read_policy(top.table("policy"))

    rec = top.table("record")
    cfg.record = rec.flag("enabled", True)
    rec.finish()

    from edge.ota.config import read_ota

    cfg.ota = read_ota(top.table("ota"))

    demo = top.table("demo")
    cfg.demo_drones = demo.integer("drones", 0, lo=0)
    cfg.demo = cfg.demo_drones > 0
    demo.finish()
    top.finish()
    return cfg


def embedded_default(*, data_dir: Path | None = None, drones: int = 5) -> DeviceConfig:
    """The demo device that ``edge run`` starts when no config is given.

    Its language layer uses the lexical embedder: MiniLM would add about 200 MB of RSS, twice the
    demo's memory budget (docs/language.md); a config file chooses ``[language] embedder``."""
    from edge.language.config import LanguageConfig

    device = "demo"
    return DeviceConfig(
        device=device,
        data_dir=data_dir or default_data_dir(device),
        demo=True,
        demo_drones=drones,
        language=LanguageConfig(embedder="lexical"),
    )
