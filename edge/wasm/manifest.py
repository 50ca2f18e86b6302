"""Component manifests (``manifest.toml``): parsing and validation.

A manifest names the component, the host ABI contract it was built for, its module file, the
entities it runs over (``[query]``), its schedule and NATS grants (``[run]``) and its resource
limits (``[limits]``). See docs/abi.md for the format.

Key components
- :func:`load_manifest` / :func:`parse_manifest`: every key is read through the one config
  reader (:class:`edge.config.table.Table`): its type is checked, every number is checked
  against its documented range (named in the error), and a key nobody read is refused.
- :func:`read_module`: the module file's bytes, refused above :data:`MAX_MODULE_BYTES` before
  anything is read (the one place the runtime reads a module file).

Every error is a :class:`~edge.errors.ComponentLoadError` whose sentence names the component
(when known), the key and the file, in the reader's style:
``component 'x': must be within 1..9007199254740992, got 10 (key 'limits.gas' in m.toml)``.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config.table import REQUIRED, Table
from edge.errors import ComponentLoadError, ConfigError
from edge.wasm.quotas import DEFAULT_KV_BYTES, DEFAULT_KV_KEYS

#: Default metering budget per call (gas units; about 1 s of wasm3 time on a small board at most).
DEFAULT_GAS = 200_000_000
#: Seconds between two calls of a component's ``edge_health`` export ([health] interval_s).
DEFAULT_HEALTH_INTERVAL_S = 5.0
#: Gas limit of one ``edge_health`` call ([health] gas).
DEFAULT_HEALTH_GAS = 10_000_000
#: Upper bound of ``limits.gas`` (gas units): 2**53, the largest integer a float64 holds exactly
#: (pywasm3's ``gasLimit`` is a float in units of 10,000 gas; it keeps the budget as a signed
#: 64-bit count of gas, which wraps into a negative budget above 2**63). Far beyond what a call
#: can spend before the wall-clock deadline stops it.
MAX_GAS = 2**53
#: Default (and fixed) linear memory size, in 64 KiB pages.
DEFAULT_MEMORY_PAGES = 64
#: Upper bound of ``limits.memory_pages`` (1 GiB).
MAX_MEMORY_PAGES = 16_384
#: Default number of ``publish`` calls allowed during one export call.
DEFAULT_PUBLISH_PER_CALL = 1000
#: Upper bound of ``limits.publish_per_call``.
MAX_PUBLISH_PER_CALL = 100_000
#: Default sustained publish rate of a component (messages a second, ``limits.publish_rate``).
DEFAULT_PUBLISH_RATE = 1000.0
#: Upper bound of ``limits.publish_rate`` (messages a second).
MAX_PUBLISH_RATE = 100_000.0
#: Default publishes a component may make at once above its rate (``limits.publish_burst``).
DEFAULT_PUBLISH_BURST = 5000
#: Upper bound of ``limits.publish_burst``.
MAX_PUBLISH_BURST = 1_000_000
#: Upper bound of ``limits.kv_keys``: the most keys a load reads back in one ``STREAM.INFO``.
MAX_KV_KEYS = 100_000
#: Upper bound of ``limits.kv_bytes``.
MAX_KV_BYTES = 64 * 2**20
#: Highest tick rate a manifest may ask for, in Hz.
MAX_TICK_HZ = 1000.0
#: Largest module file the runtime reads (bytes); a larger one is refused before it is read.
MAX_MODULE_BYTES = 16 * 2**20
#: Largest manifest file the runtime reads (bytes).
MAX_MANIFEST_BYTES = 64 * 1024

#: ``\Z``, not ``$``, in these rules: ``$`` also matches before a final newline ("name\n").
NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}\Z")
FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*\.[A-Za-z_][A-Za-z0-9_]*\Z")
#: Subject pattern tokens: NATS tokens, ``*``, a final ``>``; ``{device}`` is substituted first.
SUBJECT_TOKEN_RE = re.compile(r"^[^\s.*>]+\Z")
#: Model names a manifest may grant (the same rule as a ``[[models]]`` name in the device config).
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


@dataclass(frozen=True)
class Limits:
    """Per-call resource limits of a component."""

    gas: int = DEFAULT_GAS
    memory_pages: int = DEFAULT_MEMORY_PAGES
    publish_per_call: int = DEFAULT_PUBLISH_PER_CALL
    publish_rate: float = DEFAULT_PUBLISH_RATE  # messages a second, sustained
    publish_burst: int = DEFAULT_PUBLISH_BURST  # messages at once above the rate
    kv_keys: int = DEFAULT_KV_KEYS  # keys the component may store
    kv_bytes: int = DEFAULT_KV_BYTES  # bytes of key names and values it may store


@dataclass(frozen=True)
class Health:
    """``[health]``: conditions a new version must meet on probation (docs/ota.md)."""

    publishes: tuple[tuple[str, float], ...] = ()  # (subject, every_s): a message at least every N s
    max_tick_ms: float = 0.0  # a tick slower than this fails the probation (0 = no budget)
    interval_s: float = 0.0  # seconds between edge_health calls (0: DEFAULT_HEALTH_INTERVAL_S)
    gas: int = 0  # gas limit of one edge_health call (0: DEFAULT_HEALTH_GAS)

    @property
    def every_s(self) -> float:
        """Seconds between two ``edge_health`` calls."""
        return self.interval_s or DEFAULT_HEALTH_INTERVAL_S

    @property
    def gas_limit(self) -> int:
        """Gas of one ``edge_health`` call."""
        return self.gas or DEFAULT_HEALTH_GAS


@dataclass(frozen=True)
class Manifest:
    """A validated component manifest. Subjects have ``{device}`` already substituted."""

    name: str
    version: str
    contract: int
    module: Path
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    tick_hz: float = 0.0
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # model names the component may run with the infer import
    receive_own: bool = False  # deliver the component's own messages back to it (run.receive_own)
    limits: Limits = field(default_factory=Limits)
    path: Path | None = None
    health: Health = field(default_factory=Health)

    @property
    def columns(self) -> tuple[str, ...]:
        """Batch columns in ABI order: every read field, then write fields not already read."""
        seen = set(self.read)
        return self.read + tuple(f for f in self.write if f not in seen)

    @property
    def writable(self) -> tuple[int, ...]:
        """Column numbers the component may write (those of ``query.write`` fields)."""
        cols = self.columns
        return tuple(sorted(cols.index(f) for f in self.write))

    @property
    def components(self) -> tuple[str, ...]:
        """World component names the query needs (an entity matches when it has all of them)."""
        out: list[str] = []
        for f in self.columns:
            comp = f.split(".", 1)[0]
            if comp not in out:
                out.append(comp)
        return tuple(out)


# -- files ----------------------------------------------------------------------------------------


def _read_capped(path: Path, cap: int, what: str, component: str | None) -> bytes:
    """Read at most ``cap`` bytes of the regular file ``path``; refuse a larger or growing one.

    The size is checked on the open file before anything is read, and at most ``cap + 1`` bytes
    are read, so a file that grows meanwhile is refused too.
    """
    lead = f"component '{component}': " if component else ""

    def refuse(msg: str) -> ComponentLoadError:
        return ComponentLoadError(f"{lead}{msg}", component=component, path=str(path))

    def too_big(size: str) -> ComponentLoadError:
        return refuse(f"{what} {path} is {size}, larger than the {_mib(cap)} limit")

    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise refuse(f"{what} {path} is not a regular file")
            if st.st_size > cap:
                raise too_big(f"{st.st_size} bytes")
            data = f.read(cap + 1)
    except OSError as exc:
        raise refuse(f"cannot read {what} {path}: {exc.strerror}") from exc
    if len(data) > cap:
        raise too_big("growing")
    return data


def _mib(n: int) -> str:
    if n % 2**20 == 0:
        return f"{n // 2**20} MiB"
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} bytes"


def read_module(manifest: Manifest) -> bytes:
    """The bytes of the manifest's module file, at most :data:`MAX_MODULE_BYTES`.

    Raises ComponentLoadError naming the component and the file (too large, not a regular file,
    unreadable) without reading a larger file.
    """
    return _read_capped(manifest.module, MAX_MODULE_BYTES, "module file", manifest.name)


# -- the manifest ---------------------------------------------------------------------------------


def load_manifest(path: Path, device: str) -> Manifest:
    """Read and validate ``path``; substitute ``{device}`` in subject patterns.

    Raises ComponentLoadError naming the key and the file for any problem, including a missing
    or oversized module file.
    """
    path = Path(path)
    raw = _read_capped(path, MAX_MANIFEST_BYTES, "manifest", None)
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ComponentLoadError(
            f"manifest {path} is not valid TOML: {exc}", path=str(path)
        ) from exc
    return parse_manifest(doc, path, device)


def parse_manifest(doc: dict[str, Any], path: Path, device: str) -> Manifest:
    """Validate an already parsed manifest document (``path`` is used for messages and paths)."""
    name: str | None = None
    try:
        top = Table(doc, file=str(path), base=path.parent)
        name = _name(top)
        return _read(top, name, path, device)
    except ConfigError as err:
        raise ComponentLoadError(err.message, component=name, path=str(path)) from err


def _name(top: Table) -> str:
    value: str = top.text("name", REQUIRED)
    if not NAME_RE.match(value):
        raise top.error("name", f"invalid component name {value!r} (use [a-z0-9_-], at most 64)")
    top.label = f"component '{value}'"
    return value


def _read(top: Table, name: str, path: Path, device: str) -> Manifest:
    from edge.wasm.abi import CONTRACT_VERSIONS  # late: abi imports this module

    label = top.label
    version: str = top.text("version", REQUIRED)
    top.text("description", "")
    contract: int = top.integer("contract", REQUIRED)
    if contract not in CONTRACT_VERSIONS:
        known = ", ".join(str(v) for v in CONTRACT_VERSIONS)
        raise top.error("contract", f"contract {contract} is not supported by this host "
                                    f"(supported: {known})")
    module: Path = top.path("module", REQUIRED).resolve()
    if not module.exists():
        raise top.error("module", f"module file {module} does not exist")
    if not module.is_file():
        raise top.error("module", f"module file {module} is not a regular file")
    size = module.stat().st_size
    if size > MAX_MODULE_BYTES:
        raise top.error("module", f"module file {module} is {size} bytes, larger than the "
                                  f"{_mib(MAX_MODULE_BYTES)} limit")

    query = top.table("query", label=label)
    read = _fields(query, "read")
    write = _fields(query, "write")
    query.finish()

    run = top.table("run", label=label)
    tick_hz = run.number("tick_hz", 0.0, lo=0.0, hi=MAX_TICK_HZ, unit="Hz")
    if tick_hz > 0 and not (read or write):
        raise run.error("tick_hz", "a ticking component needs a query (query.read or query.write)")
    subscribe = _subjects(run, "subscribe", device)
    publish = _subjects(run, "publish", device)
    models = tuple(run.strings("models", []))
    for model in models:
        if not MODEL_NAME_RE.match(model):
            raise run.error("models", f"invalid model name {model!r} (use [A-Za-z0-9_.-], at "
                                      "most 64, starting with a letter or digit)")
    if len(set(models)) != len(models):
        raise run.error("models", "duplicate model name")
    receive_own = run.flag("receive_own", False)
    run.finish()

    lim = top.table("limits", label=label)
    limits = Limits(
        gas=lim.integer("gas", DEFAULT_GAS, lo=1, hi=MAX_GAS, unit="gas"),
        memory_pages=lim.integer("memory_pages", DEFAULT_MEMORY_PAGES, lo=1,
                                 hi=MAX_MEMORY_PAGES, unit="pages"),
        publish_per_call=lim.integer("publish_per_call", DEFAULT_PUBLISH_PER_CALL, lo=0,
                                     hi=MAX_PUBLISH_PER_CALL),
        publish_rate=lim.number("publish_rate", DEFAULT_PUBLISH_RATE, lo=0.001,
                                hi=MAX_PUBLISH_RATE, unit="messages/s"),
        publish_burst=lim.integer("publish_burst", DEFAULT_PUBLISH_BURST, lo=1,
                                  hi=MAX_PUBLISH_BURST, unit="messages"),
        kv_keys=lim.integer("kv_keys", DEFAULT_KV_KEYS, lo=0, hi=MAX_KV_KEYS, unit="keys"),
        kv_bytes=lim.integer("kv_bytes", DEFAULT_KV_BYTES, lo=0, hi=MAX_KV_BYTES, unit="bytes"),
    )
    lim.finish()

    health_t = top.table("health", label=label)  # [ota] probation conditions
    beats = []
    for item in health_t.tables("publishes"):
        subject = item.text("subject", REQUIRED).replace("{device}", device)
        if not all(tok == "*" or SUBJECT_TOKEN_RE.match(tok) for tok in subject.split(".")):
            raise item.error("subject", f"invalid subject {subject!r}")
        beats.append((subject, item.number("every_s", REQUIRED, lo=0.01, hi=86400.0, unit="s")))
        item.finish()
    health = Health(tuple(beats), health_t.number("max_tick_ms", 0.0, lo=0.0, hi=3_600_000.0, unit="ms"),
                    interval_s=health_t.number("interval_s", DEFAULT_HEALTH_INTERVAL_S, lo=0.05,
                                               hi=86400.0, unit="s"),
                    gas=health_t.integer("gas", DEFAULT_HEALTH_GAS, lo=1, hi=MAX_GAS, unit="gas"))
    health_t.finish()
    top.finish()

    return Manifest(name=name, version=version, contract=contract, module=module, read=read,
                    write=write, tick_hz=tick_hz, subscribe=subscribe, publish=publish,
                    models=models, receive_own=receive_own, limits=limits, path=path, health=health)


def _fields(query: Table, key: str) -> tuple[str, ...]:
    fields = tuple(query.strings(key, []))
    for f in fields:
        if not FIELD_RE.match(f):
            raise query.error(key, f"invalid field {f!r} (expected 'component.field')")
    if len(set(fields)) != len(fields):
        raise query.error(key, "duplicate field")
    return fields


def _subjects(run: Table, key: str, device: str) -> tuple[str, ...]:
    out = []
    for pat in run.strings(key, []):
        subject = pat.replace("{device}", device)
        tokens = subject.split(".")
        for i, tok in enumerate(tokens):
            if tok == ">" and i == len(tokens) - 1:
                continue
            if tok == "*" or SUBJECT_TOKEN_RE.match(tok):
                continue
            raise run.error(key, f"invalid subject pattern {pat!r}")
        out.append(subject)
    return tuple(out)
