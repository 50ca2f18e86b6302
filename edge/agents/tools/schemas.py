"""The tools' JSON schemas (input and output), in the form LLM tool-calling APIs take."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.agents.jsonschema import Validator

DTYPES = ["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"]
MAX_THUMBNAIL_PX = 128

Handler = Callable[[dict[str, Any], str], Awaitable[Any]]


@dataclass
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    handler: Handler
    _validator: Validator | None = field(default=None, repr=False, compare=False)

    def check(self, body: Any) -> None:
        """Validate a request against ``input_schema`` (compiled at the tool's first request)."""
        if self._validator is None:
            self._validator = Validator(self.input_schema)
        self._validator(body)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema,
                "output_schema": self.output_schema}


def _obj(props: dict[str, Any], required: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False, **extra}


STR = {"type": "string", "minLength": 1}
ENTITY = {"type": "string", "minLength": 1, "maxLength": 64, "description": "entity id, e.g. drone-1"}
ANY_OBJ: dict[str, Any] = {"type": "object"}
ENTITY_OUT = _obj({"id": STR, "kind": {"type": "string"}, "labels": ANY_OBJ,
                   "components": {"type": "array", "items": STR}}, ["id", "kind", "labels", "components"])
DETECTION_OUT = _obj({"label": {"type": "string"}, "score": {"type": "number"},
                      "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                      "keypoints": {"type": "array"}}, ["label", "score", "box"])
TENSOR_IN = _obj({
    "data": {"type": "array", "description": "nested lists of numbers (row-major)"},
    "b64": {"type": "string", "description": "raw little-endian bytes, base64; needs shape and dtype"},
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "dtype": {"type": "string", "enum": DTYPES},
})
TENSOR_OUT = _obj({"shape": {"type": "array", "items": {"type": "integer"}}, "dtype": {"type": "string"},
                   "data": {"type": "array"}, "b64": {"type": "string"}}, ["shape", "dtype"])
TOOL_NAMES = ("list_entities", "read_component", "read_sensor", "capture_frame", "run_model", "send_command",
              "search_knowledge")
