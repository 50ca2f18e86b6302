"""Config fragments over a device's base config: which sections a fragment may set, and the merge.

Key components
- :data:`SECTIONS`: the sections a fragment may set and how each takes effect (``live``: applied
  while running; ``restart``: at the next start). Every other section is refused: a fragment must
  not be able to take away the device's identity, its NATS or hub link, its update path or its
  state (``device``, ``nats``, ``hub``, ``ota``, ``state``), and arrays of tables (components,
  models, drivers, entities, agents, ...) are not merged (components and models are artifacts of
  their own). ``policy.file`` is refused too: a policy comes as a policy artifact.
- :func:`check_fragment`: refuses a fragment that sets anything else, naming the key and the
  fragment.
- :func:`merge`: the base config with fragments laid over it (tables merged key by key, the
  fragment's value winning), in the order given.
- :func:`parse_with_fragments`: the merged result through the one typed loader
  (:func:`edge.config.device.parse_config`); an error names the key and the fragment that set it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge.config.device import DeviceConfig, parse_config
from edge.errors import ConfigError

#: Sections a fragment may set -> how they take effect.
SECTIONS: dict[str, str] = {
    "safety": "live",     # the envelope's limits: the guard reads them at the next command
    "policy": "live",     # usage_interval and watch_interval (not file)
    "log": "restart",
    "sandbox": "restart",
    "sync": "restart",
    "record": "restart",
    "tools": "restart",
    "language": "restart",
}
#: Keys a fragment may not set even inside an allowed section.
REFUSED_KEYS = frozenset({"policy.file"})
#: Largest fragment accepted (bytes of TOML).
MAX_FRAGMENT_BYTES = 64 * 1024


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a mapping; ConfigError naming the file when it cannot be read or parsed."""
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError("config file not found", file=file) from None
    except OSError as err:
        raise ConfigError(f"config file cannot be read: {err.strerror}", file=file) from None
    return parse_toml(data, file)


def parse_toml(data: bytes, label: str) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode())
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=label) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"invalid TOML: {err}", file=label) from None


def check_fragment(raw: Mapping[str, Any], label: str) -> None:
    """Refuse a fragment setting a section or key outside :data:`SECTIONS` (naming it and ``label``)."""
    for section in sorted(raw):
        how = SECTIONS.get(section)
        if how is None:
            allowed = ", ".join(sorted(SECTIONS))
            raise ConfigError(f"a config fragment may not set section '{section}' (it may set {allowed})",
                              key=section, file=label)
        if not isinstance(raw[section], Mapping):
            raise ConfigError(f"expected a table [{section}], got {raw[section]!r}", key=section, file=label)
        for key in sorted(raw[section]):
            if f"{section}.{key}" in REFUSED_KEYS:
                raise ConfigError(f"a config fragment may not set '{section}.{key}' (a policy is shipped "
                                  "as a policy artifact)", key=f"{section}.{key}", file=label)


def _merge_into(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _merge_into(dst[k], v)
        elif isinstance(v, Mapping):
            dst[k] = {}
            _merge_into(dst[k], v)
        else:
            dst[k] = v


def merge(base: Mapping[str, Any], fragments: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``base`` with each fragment laid over it in order (tables merged key by key)."""
    out: dict[str, Any] = {}
    _merge_into(out, base)
    for f in fragments:
        _merge_into(out, f)
    return out


def _sets(raw: Mapping[str, Any], key: str) -> bool:
    """Whether ``raw`` sets ``key`` (``safety.drone-0.ceiling``; array indexes never match)."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def parse_with_fragments(base_raw: Mapping[str, Any], fragments: Sequence[tuple[str, Mapping[str, Any]]], *,
                         file: str | None, base: Path | None,
                         data_dir: Path | None = None) -> DeviceConfig:
    """The typed config of ``base_raw`` with ``fragments`` (``(label, raw)``, e.g.
    ``("limits@1.0.0", {...})``) laid over it. A ConfigError names the key and the fragment that
    set it (or every fragment, with the base file, when the key came from none of them)."""
    for label, raw in fragments:
        check_fragment(raw, f"config fragment {label}")
    merged = merge(base_raw, [raw for _, raw in fragments])
    try:
        cfg = parse_config(merged, file=file, base=base, data_dir=data_dir)
    except ConfigError as err:
        if not fragments:
            raise
        culprit = [label for label, raw in fragments if err.key and _sets(raw, err.key)]
        where = (f"config fragment {culprit[-1]}" if culprit else
                 f"{file or 'the base config'} with config fragments {', '.join(lb for lb, _ in fragments)}")
        message = err.message.rsplit(" (key ", 1)[0].rsplit(" (in ", 1)[0]
        raise ConfigError(message, key=err.key, file=where) from None
    cfg.fragments = [label for label, _ in fragments]
    cfg.overlay = merge({}, [raw for _, raw in fragments])
    return cfg


__all__ = ["MAX_FRAGMENT_BYTES", "REFUSED_KEYS", "SECTIONS", "check_fragment", "merge", "parse_toml",
           "parse_with_fragments", "read_toml"]
