"""Pick the TFLite interpreter implementation and build interpreters with delegates.

Two backends expose the same ``Interpreter`` API:

* ``litert`` - ``ai_edge_litert.interpreter`` (LiteRT, the maintained successor; numpy 1 and 2);
* ``tflite-runtime`` - ``tflite_runtime.interpreter`` (last release 2023, needs numpy < 2).

Nothing is imported until :func:`select_backend` runs (the import takes ~0.2 s and loads a large
shared library); call it once at start, from a thread when on the event loop. A backend module
must provide ``Interpreter(model_content=..., num_threads=..., experimental_delegates=[...])`` and
``load_delegate(library, options)``.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.inference.errors import InferenceError

log = logging.getLogger("edge.inference")

BACKEND_AUTO = "auto"
BACKEND_LITERT = "litert"
BACKEND_TFLITE_RUNTIME = "tflite-runtime"

DEFAULT_NUM_THREADS = 1
"""Interpreter threads per model (the boards have 4 cores shared with everything else)."""

EDGETPU_LIBRARY = "libedgetpu.so.1"
"""The Coral Edge TPU delegate library, for ``delegate = "edgetpu"``."""

DELEGATE_ALIASES: Mapping[str, str] = {"edgetpu": EDGETPU_LIBRARY}


@dataclass(frozen=True, slots=True)
class BackendCandidate:
    """One implementation to try: backend name, Python module, distribution (for the version)."""

    name: str
    module: str
    distribution: str


DEFAULT_CANDIDATES: tuple[BackendCandidate, ...] = (
    BackendCandidate(BACKEND_LITERT, "ai_edge_litert.interpreter", "ai-edge-litert"),
    BackendCandidate(BACKEND_TFLITE_RUNTIME, "tflite_runtime.interpreter", "tflite-runtime"),
)


@dataclass(frozen=True, slots=True)
class DelegateSpec:
    """A hardware delegate: shared library (or alias such as ``edgetpu``) and its options.

    ``optional=True`` falls back to the CPU when the delegate cannot be loaded; otherwise loading the
    model fails with an :class:`InferenceError` (reason ``delegate``).
    """

    library: str
    options: Mapping[str, str] = field(default_factory=dict)
    optional: bool = False

    @property
    def resolved_library(self) -> str:
        return DELEGATE_ALIASES.get(self.library, self.library)


@dataclass(frozen=True, slots=True)
class Backend:
    """A loaded interpreter implementation. ``label`` is ``"<name> <version>"`` for status output."""

    name: str
    version: str
    module: str
    interpreter_cls: Callable[..., Any]
    load_delegate: Callable[..., Any]

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def make_interpreter(
        self,
        content: bytes,
        *,
        num_threads: int = DEFAULT_NUM_THREADS,
        delegate: DelegateSpec | None = None,
        model: str | None = None,
    ) -> tuple[Any, str | None]:
        """Build and allocate an interpreter for ``content`` (blocking; call from a thread).

        Returns ``(interpreter, delegate_library_in_use_or_None)``.
        """
        delegates: list[Any] = []
        used: str | None = None
        if delegate is not None:
            lib = delegate.resolved_library
            try:
                # Open the library ourselves first: a failed open inside load_delegate leaves a
                # half-built Delegate whose finalizer raises later.
                ctypes.CDLL(lib)
                delegates.append(self.load_delegate(lib, dict(delegate.options) or None))
                used = lib
            except Exception as exc:  # the backends raise ValueError/OSError/RuntimeError
                if not delegate.optional:
                    raise InferenceError(
                        f"Model '{model}': delegate '{lib}' could not be loaded ({exc}); install it, "
                        "or set delegate_optional = true to fall back to the CPU.",
                        model=model, reason="delegate", got=str(exc),
                    ) from exc
                log.warning("model %s: delegate %s unavailable (%s); running on the CPU",
                            model, lib, exc)
        try:
            interp = self.interpreter_cls(
                model_content=content, num_threads=num_threads,
                experimental_delegates=delegates or None,
            )
            interp.allocate_tensors()
        except InferenceError:
            raise
        except Exception as exc:
            raise InferenceError(
                f"Model '{model}' could not be loaded by {self.label}: {exc}",
                model=model, reason="load", got=str(exc),
            ) from exc
        return interp, used


_lock = threading.Lock()
_selected: dict[tuple[str, tuple[BackendCandidate, ...]], Backend] = {}


def _version(candidate: BackendCandidate, module: Any) -> str:
    try:
        return importlib.metadata.version(candidate.distribution)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


def select_backend(
    prefer: str = BACKEND_AUTO,
    candidates: Sequence[BackendCandidate] = DEFAULT_CANDIDATES,
) -> Backend:
    """Import the first usable backend (``prefer`` = ``auto``, ``litert`` or ``tflite-runtime``).

    Blocking (imports a native library); the result is cached per ``prefer``. Raises
    :class:`InferenceError` (reason ``backend``) naming every failed import when none works.
    """
    key = (prefer, tuple(candidates))
    with _lock:
        if key in _selected:
            return _selected[key]
        names = [c.name for c in candidates]
        if prefer != BACKEND_AUTO and prefer not in names:
            raise InferenceError(
                f"Unknown inference backend '{prefer}'; expected one of: auto, {', '.join(names)}.",
                reason="backend", got=prefer,
            )
        tried: list[str] = []
        for cand in candidates:
            if prefer not in (BACKEND_AUTO, cand.name):
                continue
            try:
                mod = importlib.import_module(cand.module)
                backend = Backend(
                    name=cand.name, version=_version(cand, mod), module=cand.module,
                    interpreter_cls=mod.Interpreter, load_delegate=mod.load_delegate,
                )
            except Exception as exc:  # noqa: BLE001  ImportError, or numpy ABI errors (old wheels)
                tried.append(f"{cand.module}: {type(exc).__name__}: {exc}")
                log.debug("inference backend %s unusable: %s", cand.name, exc)
                continue
            log.info("inference backend: %s (%s)", backend.label, cand.module)
            _selected[key] = backend
            return backend
        raise InferenceError(
            "No TFLite backend could be imported (install ai-edge-litert, or tflite-runtime with "
            "numpy<2): " + "; ".join(tried),
            reason="backend", expected=prefer, got="; ".join(tried),
        )
