"""A small JSON Schema validator for the subset the tools service uses.

Supported keywords: ``type`` (a name or a list of names: object, array, string, number, integer,
boolean, null), ``properties``, ``required``, ``additionalProperties`` (``false`` or a schema),
``enum``, ``items``, ``minItems`` / ``maxItems``, ``minLength`` / ``maxLength``, ``minimum`` /
``maximum``. Other keywords (``description``, ``default``, ...) are ignored. ``true`` / ``false``
are not numbers here, as in JSON Schema. The first violation raises :class:`SchemaViolation`
naming the JSON path of the offending value (``$.args.speed``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from edge.errors import EdgeError
from edge.world.schema import is_finite_number


class SchemaViolation(EdgeError):
    """A value does not match its JSON schema: ``path`` says where, the message says why."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(f"{path}: {message}", path=path)
        self.path = path


def _type_ok(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, Mapping)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if name == "number":
        return is_finite_number(value)
    if name == "integer":
        return isinstance(value, int) or (math.isfinite(value) and float(value).is_integer())
    raise ValueError(f"unsupported JSON schema type {name!r}")


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


def validate(value: Any, schema: Mapping[str, Any], path: str = "$") -> None:
    """Raise :class:`SchemaViolation` at the first place ``value`` breaks ``schema``."""
    kinds = schema.get("type")
    if kinds is not None:
        names: Sequence[str] = [kinds] if isinstance(kinds, str) else kinds
        if not any(_type_ok(value, n) for n in names):
            raise SchemaViolation(f"expected {' or '.join(names)}, got {_describe(value)}", path=path)
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(repr(c) for c in schema["enum"])
        raise SchemaViolation(f"must be one of {choices}, got {value!r}", path=path)
    if isinstance(value, Mapping):
        _object(value, schema, path)
    elif isinstance(value, list):
        _array(value, schema, path)
    elif isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise SchemaViolation(f"must have at least {schema['minLength']} character(s)", path=path)
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise SchemaViolation(f"must have at most {schema['maxLength']} characters", path=path)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaViolation(f"must be >= {schema['minimum']}, got {value!r}", path=path)
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaViolation(f"must be <= {schema['maximum']}, got {value!r}", path=path)


def _object(value: Mapping[str, Any], schema: Mapping[str, Any], path: str) -> None:
    props: Mapping[str, Any] = schema.get("properties", {})
    for key in schema.get("required", ()):
        if key not in value:
            raise SchemaViolation(f"missing required property '{key}'", path=path)
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        sub = f"{path}.{key}"
        if key in props:
            validate(item, props[key], sub)
        elif extra is False:
            known = ", ".join(props) or "none"
            raise SchemaViolation(f"unknown property '{key}' (known: {known})", path=path)
        elif isinstance(extra, Mapping):
            validate(item, extra, sub)


def _array(value: list[Any], schema: Mapping[str, Any], path: str) -> None:
    if len(value) < schema.get("minItems", 0):
        raise SchemaViolation(f"must have at least {schema['minItems']} item(s)", path=path)
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        raise SchemaViolation(f"must have at most {schema['maxItems']} items", path=path)
    items = schema.get("items")
    if isinstance(items, Mapping):
        for i, item in enumerate(value):
            validate(item, items, f"{path}[{i}]")
