"""``[[models]]`` and ``[[vision]]`` config tables -> :class:`ModelSpec` / :class:`VisionSpec`.

::

    [[models]]
    name = "face"                    # registry name
    path = "models/face.tflite"      # a file, relative to the config file ... or
    object = "face.tflite"           # ... an object in the JetStream object store bucket
    [[vision]]
    model = "face"                   # camera frames -> this model -> detections component
    entity = "drone7"

Both are read with the config reader (:class:`edge.config.table.Table`) when the config loads;
every error names the key (``models[<i>].<key>``, ``vision[<i>].<key>``) and the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.config.table import REQUIRED, Table, array
from edge.inference.backend import DEFAULT_NUM_THREADS, DelegateSpec
from edge.inference.model import LoadOptions

DEFAULT_MODEL_BUCKET = "models"
"""Object store bucket used when a ``[[models]]`` entry names an ``object`` but no ``bucket``."""

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_MIN_SCORE = 0.6


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One ``[[models]]`` entry: exactly one of ``path`` (file) or ``object`` (object store).
    A configured ``path`` is absolute (resolved against the config file's directory)."""

    name: str
    path: str | None = None
    object: str | None = None
    bucket: str = DEFAULT_MODEL_BUCKET
    sha256: str | None = None
    threads: int = DEFAULT_NUM_THREADS
    delegate: str | None = None
    delegate_options: Mapping[str, str] = field(default_factory=dict)
    delegate_optional: bool = False
    dequantize: bool = True

    @property
    def source(self) -> str:
        return self.path if self.path is not None else f"object://{self.bucket}/{self.object}"

    def load_options(self) -> LoadOptions:
        delegate = None
        if self.delegate:
            delegate = DelegateSpec(self.delegate, dict(self.delegate_options),
                                    self.delegate_optional)
        return LoadOptions(num_threads=self.threads, delegate=delegate, dequantize=self.dequantize)

    @classmethod
    def read(cls, t: Table) -> ModelSpec:
        """One ``[[models]]`` table (every key checked, unknown keys refused)."""
        name = t.text("name", REQUIRED)
        if not MODEL_NAME_RE.match(name):
            raise t.error("name", f"model names must match {MODEL_NAME_RE.pattern}, got {name!r}")
        t.label = f"model {name!r}"
        if t.has("path") == t.has("object"):
            raise t.error("path", "give exactly one of 'path' (a file) or 'object' (object store)")
        path = t.path("path", None)
        if t.has("path") and path is None:
            raise t.error("path", "expected a non-empty path")
        obj = t.text("object", None, nonempty=True)
        bucket = t.text("bucket", DEFAULT_MODEL_BUCKET, nonempty=True)
        sha = t.text("sha256", None) or None  # "" = not given (the README's sample writes it so)
        if sha is not None and not SHA256_RE.match(sha.lower()):
            raise t.error("sha256", "expected 64 hex digits (the SHA-256 of the file)")
        threads = t.integer("threads", DEFAULT_NUM_THREADS, lo=1, hi=64)
        delegate = t.text("delegate", None, nonempty=True)
        if delegate is not None and "/" in delegate:  # a library path, not a name or an alias
            delegate = str(t.path("delegate"))
        options = t.mapping("delegate_options", {})
        spec = cls(
            name=name, path=str(path) if path is not None else None, object=obj, bucket=bucket,
            sha256=sha.lower() if sha else None, threads=threads, delegate=delegate,
            delegate_options={str(k): str(v) for k, v in options.items()},
            delegate_optional=t.flag("delegate_optional", False), dequantize=t.flag("dequantize", True),
        )
        t.finish()
        return spec


@dataclass(frozen=True, slots=True)
class VisionSpec:
    """One ``[[vision]]`` entry: a camera driver's frames -> ``model`` -> ``entity``'s detections."""

    model: str
    camera: str | None  # a camera driver's name; None = the first camera
    entity: str
    min_score: float = DEFAULT_MIN_SCORE

    @classmethod
    def read(cls, t: Table) -> VisionSpec:
        spec = cls(
            model=t.text("model", REQUIRED, nonempty=True),
            camera=t.text("camera", None, nonempty=True),
            entity=t.text("entity", REQUIRED, nonempty=True),
            min_score=t.number("min_score", DEFAULT_MIN_SCORE, lo=0.0, hi=1.0),
        )
        t.finish()
        return spec


def read_models(tables: list[Table]) -> list[ModelSpec]:
    """The ``[[models]]`` array (names unique)."""
    specs = [ModelSpec.read(t) for t in tables]
    seen: set[str] = set()
    for t, s in zip(tables, specs, strict=True):
        if s.name in seen:
            raise t.error("name", f"model name '{s.name}' is used twice")
        seen.add(s.name)
    return specs


def read_vision(tables: list[Table]) -> list[VisionSpec]:
    """The ``[[vision]]`` array."""
    return [VisionSpec.read(t) for t in tables]


def parse_model_specs(raw: Any, *, file: str | None = None, base: Path | None = None) -> list[ModelSpec]:
    """:func:`read_models` over a parsed ``models`` value (None -> no models)."""
    return read_models(array("models", raw, file=file, base=base))


def parse_vision(raw: Any, *, file: str | None = None, base: Path | None = None) -> list[VisionSpec]:
    """:func:`read_vision` over a parsed ``vision`` value (None -> no pipelines)."""
    return read_vision(array("vision", raw, file=file, base=base))
