"""Component manifests (``manifest.toml``): parsing and validation.

A manifest names the component, the host ABI contract it was built for, its module file, the
entities it runs over (``[query]``), its schedule and NATS grants (``[run]``) and its resource
limits (``[limits]``). See docs/abi.md for the format. Every error is a
:class:`~edge.errors.ComponentLoadError` whose sentence names the key and the file.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ComponentLoadError

#: Default metering budget per call (gas units; about 1 s of wasm3 time on a small board at most).
DEFAULT_GAS = 200_000_000
#: Default (and fixed) linear memory size, in 64 KiB pages.
DEFAULT_MEMORY_PAGES = 64
#: Upper bound of ``limits.memory_pages`` (1 GiB).
MAX_MEMORY_PAGES = 16_384
#: Default number of ``publish`` calls allowed during one export call.
DEFAULT_PUBLISH_PER_CALL = 1000
#: Highest tick rate a manifest may ask for, in Hz.
MAX_TICK_HZ = 1000.0

NAME_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*\.[A-Za-z_][A-Za-z0-9_]*$")
#: Subject pattern tokens: NATS tokens, ``*``, a final ``>``; ``{device}`` is substituted first.
SUBJECT_TOKEN_RE = re.compile(r"^[^\s.*>]+$")
#: Model names a manifest may grant (the same rule as a ``[[models]]`` name in the device config).
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_TOP_KEYS = {"name", "version", "contract", "module", "query", "run", "limits", "description"}
_SECTION_KEYS = {
    "query": {"read", "write"},
    "run": {"tick_hz", "subscribe", "publish", "models"},
    "limits": {"gas", "memory_pages", "publish_per_call"},
}


@dataclass(frozen=True)
class Limits:
    """Per-call resource limits of a component."""

    gas: int = DEFAULT_GAS
    memory_pages: int = DEFAULT_MEMORY_PAGES
    publish_per_call: int = DEFAULT_PUBLISH_PER_CALL


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
    limits: Limits = field(default_factory=Limits)
    path: Path | None = None

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


def _err(msg: str, key: str, path: Path, name: str | None = None) -> ComponentLoadError:
    return ComponentLoadError(f"{msg} (key '{key}' in {path})", component=name, path=str(path))


def _get(
    table: dict[str, Any],
    key: str,
    typ: type | tuple[type, ...],
    default: Any,
    full_key: str,
    path: Path,
    name: str | None,
) -> Any:
    if key not in table:
        if default is _REQUIRED:
            raise _err("missing required key", full_key, path, name)
        return default
    value = table[key]
    # bool is an int subclass: never accept it where a number is expected.
    if isinstance(value, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)):
        raise _err(f"expected {_typename(typ)}, got a boolean", full_key, path, name)
    if not isinstance(value, typ):
        raise _err(f"expected {_typename(typ)}, got {type(value).__name__}", full_key, path, name)
    return value


_REQUIRED = object()


def _typename(typ: type | tuple[type, ...]) -> str:
    if isinstance(typ, tuple):
        return " or ".join(t.__name__ for t in typ)
    return typ.__name__


def _str_list(
    table: dict[str, Any], key: str, full_key: str, path: Path, name: str | None
) -> tuple[str, ...]:
    value = _get(table, key, list, [], full_key, path, name)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _err(f"item {i} must be a string", full_key, path, name)
    return tuple(value)


def _subjects(
    patterns: tuple[str, ...], device: str, full_key: str, path: Path, name: str
) -> tuple[str, ...]:
    out = []
    for pat in patterns:
        subject = pat.replace("{device}", device)
        tokens = subject.split(".")
        for i, tok in enumerate(tokens):
            if tok == ">" and i == len(tokens) - 1:
                continue
            if tok == "*" or SUBJECT_TOKEN_RE.match(tok):
                continue
            raise _err(f"invalid subject pattern '{pat}'", full_key, path, name)
        out.append(subject)
    return tuple(out)


def _check_unknown(
    table: dict[str, Any], allowed: set[str], prefix: str, path: Path, name: str | None
) -> None:
    for key in table:
        if key not in allowed:
            raise _err("unknown key", f"{prefix}{key}", path, name)


def load_manifest(path: Path, device: str) -> Manifest:
    """Read and validate ``path``; substitute ``{device}`` in subject patterns.

    Raises ComponentLoadError naming the key and the file for any problem, including a missing
    module file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ComponentLoadError(
            f"cannot read manifest {path}: {exc.strerror}", path=str(path)
        ) from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ComponentLoadError(
            f"manifest {path} is not valid TOML: {exc}", path=str(path)
        ) from exc
    return parse_manifest(doc, path, device)


def parse_manifest(doc: dict[str, Any], path: Path, device: str) -> Manifest:
    """Validate an already parsed manifest document (``path`` is used for messages and paths)."""
    from edge.wasm.abi import CONTRACT_VERSIONS  # late: abi imports this module

    name_val = _get(doc, "name", str, _REQUIRED, "name", path, None)
    if not NAME_RE.match(name_val):
        raise _err(
            f"invalid component name '{name_val}' (use [a-z0-9_-], at most 64)", "name", path, None
        )
    name: str = name_val
    _check_unknown(doc, _TOP_KEYS, "", path, name)
    version = _get(doc, "version", str, _REQUIRED, "version", path, name)
    contract = _get(doc, "contract", int, _REQUIRED, "contract", path, name)
    if contract not in CONTRACT_VERSIONS:
        known = ", ".join(str(v) for v in CONTRACT_VERSIONS)
        raise _err(
            f"contract {contract} is not supported by this host (supported: {known})",
            "contract",
            path,
            name,
        )
    module_rel = _get(doc, "module", str, _REQUIRED, "module", path, name)
    module = (path.parent / module_rel).resolve()
    if not module.is_file():
        raise _err(f"module file {module} does not exist", "module", path, name)

    sections: dict[str, dict[str, Any]] = {}
    for sec, allowed in _SECTION_KEYS.items():
        table = _get(doc, sec, dict, {}, sec, path, name)
        _check_unknown(table, allowed, f"{sec}.", path, name)
        sections[sec] = table

    query, run, limits_t = sections["query"], sections["run"], sections["limits"]
    read = _str_list(query, "read", "query.read", path, name)
    write = _str_list(query, "write", "query.write", path, name)
    for key, fields in (("query.read", read), ("query.write", write)):
        for f in fields:
            if not FIELD_RE.match(f):
                raise _err(f"invalid field '{f}' (expected 'component.field')", key, path, name)
        if len(set(fields)) != len(fields):
            raise _err("duplicate field", key, path, name)

    tick_hz = float(_get(run, "tick_hz", (int, float), 0.0, "run.tick_hz", path, name))
    if not 0.0 <= tick_hz <= MAX_TICK_HZ:
        raise _err(f"tick_hz must be between 0 and {MAX_TICK_HZ:g}", "run.tick_hz", path, name)
    if tick_hz > 0 and not (read or write):
        raise _err(
            "a ticking component needs a query (query.read or query.write)",
            "run.tick_hz",
            path,
            name,
        )
    subscribe = _subjects(
        _str_list(run, "subscribe", "run.subscribe", path, name),
        device,
        "run.subscribe",
        path,
        name,
    )
    publish = _subjects(
        _str_list(run, "publish", "run.publish", path, name), device, "run.publish", path, name
    )

    models = _str_list(run, "models", "run.models", path, name)
    for model in models:
        if not MODEL_NAME_RE.match(model):
            raise _err(f"invalid model name '{model}' (use [A-Za-z0-9_.-], at most 64, "
                       "starting with a letter or digit)", "run.models", path, name)
    if len(set(models)) != len(models):
        raise _err("duplicate model name", "run.models", path, name)

    gas = _get(limits_t, "gas", int, DEFAULT_GAS, "limits.gas", path, name)
    if gas <= 0:
        raise _err("gas must be positive", "limits.gas", path, name)
    pages = _get(
        limits_t, "memory_pages", int, DEFAULT_MEMORY_PAGES, "limits.memory_pages", path, name
    )
    if not 1 <= pages <= MAX_MEMORY_PAGES:
        raise _err(
            f"memory_pages must be between 1 and {MAX_MEMORY_PAGES}",
            "limits.memory_pages",
            path,
            name,
        )
    ppc = _get(
        limits_t,
        "publish_per_call",
        int,
        DEFAULT_PUBLISH_PER_CALL,
        "limits.publish_per_call",
        path,
        name,
    )
    if ppc < 0:
        raise _err("publish_per_call must be >= 0", "limits.publish_per_call", path, name)

    return Manifest(
        name=name,
        version=version,
        contract=contract,
        module=module,
        read=read,
        write=write,
        tick_hz=tick_hz,
        subscribe=subscribe,
        publish=publish,
        models=models,
        limits=Limits(gas=gas, memory_pages=pages, publish_per_call=ppc),
        path=path,
    )
