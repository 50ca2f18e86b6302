"""JSON Schema validation of tool requests, by fastjsonschema (draft-07, compiled to Python).

:class:`Validator` compiles one schema once (when the tools service builds its tools, never at
import) and checks a decoded request against it. The first violation raises
:class:`SchemaViolation` naming the JSON path of the offending value (``$.args.speed``) in one
sentence an agent can act on (``missing required property 'entity'``, ``unknown property 'kinds'
(known: kind)``, ``must be <= 30.0, got 99``, ``expected number, got a string``).

One rule is added to the standard's: a number must be finite. Python's JSON decoder reads
``NaN`` and ``Infinity``, which JSON does not have, and every comparison with NaN is false, so a
NaN would pass ``minimum`` and ``maximum``; such a value is refused before the schema is asked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from edge.errors import EdgeError

__all__ = ["SchemaViolation", "Validator", "validate"]


class SchemaViolation(EdgeError):
    """A value does not match its JSON schema: ``path`` says where, the message says why."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(f"{path}: {message}", path=path)
        self.path = path


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return f"the number {value!r}"


def _non_finite(value: Any, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise SchemaViolation(f"must be a finite number, got {value!r}", path=path)
    if isinstance(value, Mapping):
        for key, item in value.items():
            _non_finite(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _non_finite(item, f"{path}[{i}]")


def _json_path(root: Any, parts: list[str]) -> str:
    """fastjsonschema's path (``["data", "args", "1"]``) as ``$.args[1]``, walking the value to
    tell an array index from an object key."""
    path, node = "$", root
    for part in parts[1:]:
        if isinstance(node, list) and part.isdigit():
            path, node = f"{path}[{part}]", node[int(part)] if int(part) < len(node) else None
        else:
            path, node = f"{path}.{part}", node.get(part) if isinstance(node, Mapping) else None
    return path


def _sentence(err: Any) -> str:
    """One sentence for a fastjsonschema violation (its own for the rules agents hit most)."""
    rule, schema, value = err.rule, err.definition or {}, err.value
    if rule == "required" and isinstance(value, Mapping):
        missing = [k for k in schema.get("required", ()) if k not in value]
        if missing:
            return f"missing required property '{missing[0]}'"
    if rule == "additionalProperties" and isinstance(value, Mapping):
        known = list(schema.get("properties", {}))
        extra = [k for k in value if k not in known]
        if extra:
            return f"unknown property '{extra[0]}' (known: {', '.join(known) or 'none'})"
    if rule == "type":
        kinds = schema.get("type")
        names = [kinds] if isinstance(kinds, str) else list(kinds or ())
        return f"expected {' or '.join(names)}, got {_describe(value)}"
    if rule == "enum":
        return f"must be one of {', '.join(repr(c) for c in schema.get('enum', ()))}, got {value!r}"
    if rule in ("minimum", "maximum"):
        return f"must be {'>=' if rule == 'minimum' else '<='} {schema[rule]}, got {value!r}"
    if rule in ("minItems", "maxItems", "minLength", "maxLength"):
        what = "item(s)" if rule.endswith("Items") else "character(s)"
        return f"must have at {'least' if rule.startswith('min') else 'most'} {schema[rule]} {what}"
    message = str(err.message)
    head, _, rest = message.partition(" ")
    return rest if head.startswith("data") and rest else message


class Validator:
    """One compiled schema: ``validator(value)`` returns nothing or raises :class:`SchemaViolation`."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        import fastjsonschema  # imported by the tools service when it builds its tools

        self.schema = dict(schema)
        self._check: Callable[[Any], Any] = fastjsonschema.compile(self.schema)
        self._error: type[Exception] = fastjsonschema.JsonSchemaValueException

    def __call__(self, value: Any) -> None:
        _non_finite(value, "$")
        try:
            self._check(value)
        except self._error as err:
            parts = [str(p) for p in getattr(err, "path", None) or ["data"]]
            raise SchemaViolation(_sentence(err), path=_json_path(value, parts)) from None


def validate(value: Any, schema: Mapping[str, Any]) -> None:
    """Check ``value`` against ``schema`` once (compiles it each call: keep a :class:`Validator`
    for a schema used again)."""
    Validator(schema)(value)
