"""Component schemas: typed records attached to entities.

A schema names its fields and their types. Numeric fields (``f64``, ``i64``, ``bool``) live in
float64 columns and are visible to WebAssembly systems; ``str`` and ``json`` fields live in object
columns and are visible to native systems, services and agents only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from edge.errors import SchemaError

if TYPE_CHECKING:
    from edge.config.table import Table

FieldType = Literal["f64", "i64", "bool", "str", "json"]
FIELD_TYPES: tuple[str, ...] = ("f64", "i64", "bool", "str", "json")
NUMERIC_TYPES = frozenset({"f64", "i64", "bool"})
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
MAX_I64_EXACT = 2**53  # i64 values are carried in float64 columns; beyond this they lose precision


@dataclass(frozen=True)
class ComponentSchema:
    """A component type: ``fields`` maps field name to type; ``units`` documents each field."""

    name: str
    fields: Mapping[str, FieldType]
    doc: str = ""
    units: Mapping[str, str] = field(default_factory=dict)

    def default(self, name: str) -> Any:
        kind = self.fields[name]
        return {"f64": 0.0, "i64": 0, "bool": False, "str": "", "json": None}[kind]

    def validate(self, values: Mapping[str, Any], *, partial: bool = True) -> dict[str, Any]:
        """Check and coerce ``values``; unknown fields and wrong types raise :class:`SchemaError`.

        With ``partial=False`` missing fields get their defaults.
        """
        if not isinstance(values, Mapping):
            raise SchemaError(
                f"component '{self.name}' must be an object of fields, got {type(values).__name__}",
                component=self.name,
            )
        out: dict[str, Any] = {}
        for key, value in values.items():
            kind = self.fields.get(key)
            if kind is None:
                known = ", ".join(self.fields)
                raise SchemaError(
                    f"component '{self.name}' has no field '{key}' (fields: {known})",
                    component=self.name,
                    field=key,
                )
            out[key] = _coerce(self.name, key, kind, value)
        if not partial:
            for key in self.fields:
                out.setdefault(key, self.default(key))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fields": dict(self.fields), "units": dict(self.units), "doc": self.doc}


def shown_value(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a refused value may be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def is_finite_number(value: object) -> bool:
    """Whether ``value`` is a JSON number (not a bool) that is a finite float: not NaN or
    infinite, and not an integer too large for a float (``1`` and 400 zeros, which
    ``math.isfinite`` and ``float`` refuse with ``OverflowError``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _coerce(component: str, name: str, kind: str, value: Any) -> Any:
    def bad(expected: str) -> SchemaError:
        return SchemaError(
            f"field '{component}.{name}' expects {expected}, got {shown_value(value)}",
            component=component,
            field=name,
        )

    if kind == "f64":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not is_finite_number(value):
            raise bad("a finite number")
        return float(value)
    if kind == "i64":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("an integer")
        if isinstance(value, float) and not value.is_integer():
            raise bad("an integer")
        if abs(value) > MAX_I64_EXACT:
            raise bad("an integer within +-2^53")
        return int(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value  # json: any JSON-serialisable value, checked when persisted


def _schema(name: str, doc: str, **fields: str) -> ComponentSchema:
    types = {k: cast(FieldType, v.split(":", 1)[0]) for k, v in fields.items()}
    units = {k: v.split(":", 1)[1] for k, v in fields.items() if ":" in v}
    return ComponentSchema(name=name, fields=types, doc=doc, units=units)


def builtin_schemas() -> dict[str, ComponentSchema]:
    """The components every device knows. Units follow ROS REP 103 (SI, local ENU frame)."""
    schemas = [
        _schema("position", "Position in the local ENU frame.", x="f64:m", y="f64:m", z="f64:m"),
        _schema("velocity", "Velocity in the local ENU frame.", x="f64:m/s", y="f64:m/s", z="f64:m/s"),
        _schema("geo", "Global position (WGS84).", lat="f64:deg", lon="f64:deg", alt="f64:m AMSL"),
        _schema("attitude", "Orientation.", roll="f64:rad", pitch="f64:rad", yaw="f64:rad"),
        _schema(
            "battery",
            "Battery state; drain is the fraction of charge used per second; unknown lists the fields "
            "(comma-separated) the source could not measure, whose values must not be read.",
            voltage="f64:V",
            current="f64:A",
            level="f64:0..1",
            drain="f64:1/s",
            temperature="f64:degC",
            unknown="str",
        ),
        _schema(
            "imu",
            "Inertial measurement.",
            ax="f64:m/s2",
            ay="f64:m/s2",
            az="f64:m/s2",
            gx="f64:rad/s",
            gy="f64:rad/s",
            gz="f64:rad/s",
            temperature="f64:degC",
        ),
        _schema(
            "environment",
            "Air temperature, pressure, humidity.",
            temperature="f64:degC",
            pressure="f64:Pa",
            humidity="f64:%RH",
        ),
        _schema("gps", "GNSS fix quality.", fix_quality="i64", satellites="i64", hdop="f64"),
        _schema("flight", "Flight controller state.", armed="bool", mode="str", system_status="str"),
        _schema("camera", "Camera stream metadata.", width="i64:px", height="i64:px", fps="f64:Hz", seq="i64"),
        _schema(
            "patrol",
            "Square waypoint patrol around (cx, cy); leg is the index of the current corner.",
            cx="f64:m",
            cy="f64:m",
            half="f64:m",
            speed="f64:m/s",
            leg="f64",
        ),
        _schema(
            "detections",
            "Latest detections from a vision model.",
            items="json",
            count="i64",
            model="str",
            t="f64:s",
        ),
    ]
    return {s.name: s for s in schemas}


class SchemaRegistry:
    """The component types known on this device: built-ins plus those from the config."""

    def __init__(self, schemas: Mapping[str, ComponentSchema] | None = None) -> None:
        self._schemas: dict[str, ComponentSchema] = dict(builtin_schemas() if schemas is None else schemas)

    def __contains__(self, name: object) -> bool:
        return name in self._schemas

    def get(self, name: str) -> ComponentSchema:
        try:
            return self._schemas[name]
        except KeyError:
            known = ", ".join(sorted(self._schemas))
            raise SchemaError(f"unknown component '{name}' (known: {known})", component=name) from None

    def names(self) -> list[str]:
        return sorted(self._schemas)

    def register(self, schema: ComponentSchema) -> None:
        self._schemas[schema.name] = schema

    def field_type(self, qualified: str) -> str:
        """Type of ``component.field``; raises SchemaError if either is unknown."""
        comp, _, name = qualified.partition(".")
        schema = self.get(comp)
        if name not in schema.fields:
            raise SchemaError(f"component '{comp}' has no field '{name}'", component=comp, field=name)
        return schema.fields[name]


def read_schema(name: str, t: Table) -> ComponentSchema:
    """A schema from a ``[schemas.<name>]`` table: ``fields = {x = "f64", ...}``, optional
    ``units = {x = "m"}`` and ``doc``; unknown keys are refused."""
    if not NAME_RE.match(name):
        raise t.error(None, f"component name '{name}' must match [a-z][a-z0-9_]*")
    fields = t.table("fields")
    if not fields.data:
        raise t.error("fields", "expected a non-empty table of field = type")
    types: dict[str, FieldType] = {}
    for fname in fields.names():
        if not NAME_RE.match(fname):
            raise fields.error(fname, "field names must match [a-z][a-z0-9_]*")
        types[fname] = cast(FieldType, fields.choice(fname, FIELD_TYPES))
    units = t.table("units")
    unit_map = {u: units.text(u) for u in units.names()}
    doc = t.text("doc", "")
    t.finish()
    return ComponentSchema(name=name, fields=types, doc=doc, units=unit_map)


def schema_from_config(name: str, table: Any, *, file: str | None) -> ComponentSchema:
    """:func:`read_schema` over a parsed ``[schemas.<name>]`` value."""
    from edge.config.table import Table

    return read_schema(name, Table(table, key=f"schemas.{name}", file=file))
