"""The one reader of config tables: typed getters that remember what was read.

Key components
- :class:`Table`: one TOML table of a config file. Each getter (``text``, ``integer``,
  ``number``, ``flag``, ``choice``, ``path``, ``items``, ``strings``, ``mapping``, ``table``,
  ``tables``) checks the type (and range or choices), marks the key as read and returns the
  value or the default. :meth:`Table.finish` refuses every key nobody read (a typo), so a
  section's reader cannot forget to check a key.
- :data:`REQUIRED`: pass as the default to make a key mandatory.

Key names and the message style (every section uses these):

- a key is named by its full path: tables with dots (``nats.port``, ``tools.callers.planner``),
  arrays of tables with the index (``drivers[2].rate_hz``, ``models[0].path``);
- every error is one :class:`~edge.errors.ConfigError` with a lower-case sentence, optionally led
  by what the table describes (``driver 'baro': ``), followed by ``(key '<key>' in <file>)``:
  ``missing required key 'port'``, ``expected an integer, got 'x'``, ``must be within 0..65535,
  got 70000``, ``must be one of real, emulated; got 'fake'``, ``unknown key 'adress'``.

Paths: :meth:`Table.path` resolves a relative value against ``base``, the directory of the
config file (``~`` is expanded); an absolute value is kept.

Example
    t = Table(raw, file="device.toml", base=Path("/etc/edge"))
    nats = t.table("nats")
    port = nats.integer("port", 0, lo=0, hi=65535)
    creds = nats.path("credentials", None)     # /etc/edge/<value> when relative
    nats.finish()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

from edge.errors import ConfigError

T = TypeVar("T")


class _Required:
    def __repr__(self) -> str:
        return "<required>"


#: The default that makes a key mandatory: ``t.text("port", REQUIRED)``.
REQUIRED: Any = _Required()


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class Table:
    """Typed, checked access to one config table; see the module docstring for key names."""

    def __init__(self, data: Any, *, key: str = "", file: str | None = None, base: Path | None = None,
                 label: str | None = None) -> None:
        if not isinstance(data, Mapping):
            lead = f"{label}: " if label else ""
            raise ConfigError(f"{lead}expected a table, got {_fmt(data)}", key=key or None, file=file)
        self.data: Mapping[str, Any] = data
        self.prefix = key
        self.file = file
        self.base = base if base is not None else Path.cwd()
        self.label = label
        self.read: set[str] = set()

    # -- names and errors ---------------------------------------------------------------------

    def key(self, name: str) -> str:
        """The full key of ``name`` in this table (``drivers[2].rate_hz``)."""
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str | None, message: str) -> ConfigError:
        """A :class:`ConfigError` for ``name`` (None: the table itself), in the one style."""
        if self.label:
            message = f"{self.label}: {message}"
        return ConfigError(message, key=self.key(name) if name is not None else (self.prefix or None),
                           file=self.file)

    def has(self, name: str) -> bool:
        """Whether ``name`` is present (does not mark it read)."""
        return name in self.data

    def mark(self, *names: str) -> None:
        """Mark keys as read without reading them (keys handled elsewhere)."""
        self.read.update(names)

    def raw(self, name: str, default: Any = None) -> Any:
        """The value as written, unchecked (marks it read)."""
        self.read.add(name)
        return self.data.get(name, default)

    def _get(self, name: str, types: tuple[type, ...], default: Any, what: str) -> Any:
        self.read.add(name)
        if name not in self.data:
            if default is REQUIRED:
                raise self.error(name, f"missing required key '{name}' ({what})")
            return default
        value = self.data[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise self.error(name, f"expected {what}, got {_fmt(value)}")
        return value

    def _range(self, name: str, value: float, lo: float | None, hi: float | None, unit: str) -> None:
        nan = value != value and (lo is not None or hi is not None)  # NaN compares false: refuse
        if nan or (lo is not None and value < lo) or (hi is not None and value > hi):
            u = f" {unit}" if unit else ""
            if lo is not None and hi is not None:
                bound = f"within {_num(lo)}..{_num(hi)}{u}"
            elif lo is not None:
                bound = f"at least {_num(lo)}{u}"
            else:
                bound = f"at most {_num(hi)}{u}"  # type: ignore[arg-type]
            raise self.error(name, f"must be {bound}, got {_num(value)}")

    # -- scalars ------------------------------------------------------------------------------

    @overload
    def text(self, name: str, default: str = ..., *, choices: Sequence[str] | None = None,
             nonempty: bool = False) -> str: ...
    @overload
    def text(self, name: str, default: None, *, choices: Sequence[str] | None = None,
             nonempty: bool = False) -> str | None: ...
    def text(self, name: str, default: Any = REQUIRED, *, choices: Sequence[str] | None = None,
             nonempty: bool = False) -> Any:
        """A string; ``choices`` restricts it, ``nonempty`` refuses ``""``."""
        value = self._get(name, (str,), default, "a string")
        if name in self.data:
            if nonempty and not value:
                raise self.error(name, "expected a non-empty string")
            if choices is not None and value not in choices:
                raise self.error(name, f"must be one of {', '.join(choices)}; got {_fmt(value)}")
        return value

    @overload
    def choice(self, name: str, choices: Sequence[str], default: str = ...) -> str: ...
    @overload
    def choice(self, name: str, choices: Sequence[str], default: None) -> str | None: ...
    def choice(self, name: str, choices: Sequence[str], default: Any = REQUIRED) -> Any:
        """One of ``choices`` (an enum written as a string)."""
        return self.text(name, default, choices=choices)

    @overload
    def integer(self, name: str, default: int = ..., *, lo: int | None = None, hi: int | None = None,
                choices: Sequence[int] | None = None, unit: str = "") -> int: ...
    @overload
    def integer(self, name: str, default: None, *, lo: int | None = None, hi: int | None = None,
                choices: Sequence[int] | None = None, unit: str = "") -> int | None: ...
    def integer(self, name: str, default: Any = REQUIRED, *, lo: int | None = None, hi: int | None = None,
                choices: Sequence[int] | None = None, unit: str = "") -> Any:
        """An integer within ``lo..hi`` (either bound optional) or one of ``choices``; ``unit``
        is named in errors."""
        value = self._get(name, (int,), default, "an integer")
        if name in self.data:
            self._range(name, value, lo, hi, unit)
            if choices is not None and value not in choices:
                u = f" {unit}" if unit else ""
                raise self.error(name, f"must be one of {', '.join(map(str, choices))}{u}; got {value}")
        return value

    @overload
    def number(self, name: str, default: float = ..., *, lo: float | None = None, hi: float | None = None,
               unit: str = "") -> float: ...
    @overload
    def number(self, name: str, default: None, *, lo: float | None = None, hi: float | None = None,
               unit: str = "") -> float | None: ...
    def number(self, name: str, default: Any = REQUIRED, *, lo: float | None = None, hi: float | None = None,
               unit: str = "") -> Any:
        """A float (an integer is accepted) within ``lo..hi``, in ``unit`` (named in errors)."""
        value = self._get(name, (int, float), default, "a number")
        if value is None:
            return None
        value = float(value)
        if name in self.data:
            self._range(name, value, lo, hi, unit)
        return value

    @overload
    def flag(self, name: str, default: bool = ...) -> bool: ...
    @overload
    def flag(self, name: str, default: None) -> bool | None: ...
    def flag(self, name: str, default: Any = REQUIRED) -> Any:
        """``true`` or ``false``."""
        return self._get(name, (bool,), default, "true or false")

    @overload
    def path(self, name: str, default: Path = ...) -> Path: ...
    @overload
    def path(self, name: str, default: None) -> Path | None: ...
    def path(self, name: str, default: Any = REQUIRED) -> Any:
        """A file path: relative values are relative to the config file's directory. An empty
        string counts as not given."""
        value = self._get(name, (str,), default, "a path (string)")
        if not isinstance(value, str):
            return value
        if not value:
            if default is REQUIRED:
                raise self.error(name, "expected a non-empty path")
            return default
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base / p

    # -- collections --------------------------------------------------------------------------

    def items(self, name: str, default: Any = None) -> Any:
        """A list (array) of anything; the caller checks the elements (see :meth:`strings`)."""
        return self._get(name, (list, tuple), default, "a list")

    def strings(self, name: str, default: Sequence[str] = REQUIRED) -> list[str]:
        """A list of strings."""
        value = self._get(name, (list, tuple), default, "a list of strings")
        if not all(isinstance(v, str) for v in value):
            raise self.error(name, f"expected a list of strings, got {_fmt(list(value))}")
        return list(value)

    def mapping(self, name: str, default: Mapping[str, Any] = REQUIRED) -> dict[str, Any]:
        """A free-form table (labels, component values): its inner keys are not checked here."""
        return dict(self._get(name, (Mapping,), default, "a table"))

    def table(self, name: str, *, label: str | None = None) -> Table:
        """A sub-table (an empty one if absent); its keys are ``<this>.<name>.<key>``."""
        self.read.add(name)
        return Table(self.data.get(name, {}), key=self.key(name), file=self.file, base=self.base,
                     label=label)

    def tables(self, name: str) -> list[Table]:
        """An array of tables (``[[name]]``); element ``i``'s keys are ``name[i].<key>``."""
        value = self._get(name, (list, tuple), [], f"an array of tables ([[{name}]])")
        if not all(isinstance(v, Mapping) for v in value):
            raise self.error(name, f"expected an array of tables ([[{name}]])")
        return [Table(v, key=f"{self.key(name)}[{i}]", file=self.file, base=self.base)
                for i, v in enumerate(value)]

    def names(self) -> list[str]:
        """Every key of this table, all marked read (for tables whose keys are names)."""
        self.read.update(self.data)
        return list(self.data)

    # -- the end ------------------------------------------------------------------------------

    def unread(self) -> list[str]:
        return sorted(k for k in self.data if k not in self.read)

    def finish(self) -> None:
        """Refuse the first key (in sorted order) that no getter read."""
        unknown = self.unread()
        if unknown:
            raise self.error(unknown[0], f"unknown key '{unknown[0]}'")


def array(name: str, value: Any, *, file: str | None = None, base: Path | None = None) -> list[Table]:
    """``value`` (a parsed ``[[name]]`` array, or None) as tables keyed ``name[i]``."""
    if value is None:
        return []
    return Table({name: value}, file=file, base=base).tables(name)
