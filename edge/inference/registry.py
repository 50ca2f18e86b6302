"""Models by name: loaded from files or a JetStream object store, swapped at run time.

A load (or reload) builds the new :class:`Model` completely - bytes fetched, SHA-256 verified,
interpreter allocated - before it replaces the serving one; any failure leaves the previous model
serving and is recorded in :meth:`ModelRegistry.status`. :meth:`ModelRegistry.watch` follows an
object store bucket and reloads the configured models whose object changed.

Digest rule for object store models: the expected SHA-256 is, in order, ``sha256`` from the config,
the object's ``Edge-Sha256`` header, or its ``sha256`` metadata entry; without any of those the
store's own SHA-256 digest is checked. A file model is checked only when ``sha256`` is configured.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy.typing as npt

from edge.inference.backend import (
    BACKEND_AUTO,
    Backend,
    select_backend,
)
from edge.inference.config import DEFAULT_MODEL_BUCKET, ModelSpec
from edge.inference.config import parse_model_specs as parse_model_specs  # re-exported
from edge.inference.errors import InferenceError
from edge.inference.model import Inputs, Model

log = logging.getLogger("edge.inference")

DIGEST_HEADER = "Edge-Sha256"
"""Object header carrying the hex SHA-256 of the model file."""

DEFAULT_FETCH_TIMEOUT = 30.0
"""Seconds an object store download may take (the store is on the device's own server)."""

DIGEST_METADATA_KEY = "sha256"
STORE_DIGEST_PREFIX = "SHA-256="


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """What ``status()`` reports for one model name."""

    name: str
    state: str  # "serving" | "failed" (never loaded successfully)
    backend: str | None
    source: str | None
    sha256: str | None
    delegate: str | None
    threads: int | None
    loaded_at: float | None
    loads: int
    load_errors: int
    last_load_error: str | None
    last_load_error_ago_s: float | None  # seconds since the last failed load (None: never failed)
    invocations: int
    errors: int
    last_error: str | None
    p50_ms: float | None
    p99_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class _Entry:
    spec: ModelSpec | None = None
    model: Model | None = None
    store_digest: str | None = None  # object store digest of the serving model's object
    loads: int = 0
    load_errors: int = 0
    last_load_error: str | None = None
    last_load_error_at: float | None = None  # monotonic
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _hex_from_store_digest(digest: str | None) -> str | None:
    if not digest or not digest.upper().startswith(STORE_DIGEST_PREFIX):
        return None
    raw = digest[len(STORE_DIGEST_PREFIX):]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()


def _declared_digest(info: Any) -> tuple[str | None, str]:
    """(hex sha256, where) from an object's headers or metadata, if the publisher declared one."""
    headers = getattr(info, "headers", None) or {}
    for k, v in headers.items():
        if str(k).lower() == DIGEST_HEADER.lower():
            value = v[0] if isinstance(v, list) and v else v
            return str(value).strip().lower(), f"header {DIGEST_HEADER}"
    metadata = getattr(info, "metadata", None) or {}
    if DIGEST_METADATA_KEY in metadata:
        return str(metadata[DIGEST_METADATA_KEY]).strip().lower(), "metadata sha256"
    return None, ""


class ModelRegistry:
    """Named models; ``infer(name, inputs)`` for the rest of the runtime.

    ``js`` is a nats-py JetStream context, needed only for object store models.
    """

    def __init__(self, *, js: Any = None, backend: Backend | None = None,
                 prefer_backend: str = BACKEND_AUTO,
                 fetch_timeout: float = DEFAULT_FETCH_TIMEOUT) -> None:
        self._js = js
        self._fetch_timeout = fetch_timeout
        self._backend = backend
        self._prefer = prefer_backend
        self._entries: dict[str, _Entry] = {}
        self._watchers: list[asyncio.Task[None]] = []

    def use_store(self, js: Any) -> None:
        """Give the registry its JetStream context (object store models), before loading."""
        self._js = js

    # -- backend ------------------------------------------------------------------------------

    async def start(self) -> Backend:
        """Choose the backend now (import on a thread); later loads reuse it."""
        if self._backend is None:
            self._backend = await asyncio.to_thread(select_backend, self._prefer)
        return self._backend

    @property
    def backend(self) -> Backend | None:
        return self._backend

    # -- loading ------------------------------------------------------------------------------

    def _entry(self, name: str) -> _Entry:
        return self._entries.setdefault(name, _Entry())

    async def _fetch(self, spec: ModelSpec) -> tuple[bytes, str | None]:
        """Read and verify the model bytes. Returns (bytes, store digest or None)."""
        if spec.path is not None:
            try:
                content = await asyncio.to_thread(Path(spec.path).read_bytes)
            except OSError as exc:
                raise InferenceError(f"Model '{spec.name}': cannot read {spec.path}: {exc}",
                                     model=spec.name, reason="load", got=str(exc)) from exc
            if spec.sha256 is not None:
                self._verify(spec, content, spec.sha256, "config sha256")
            return content, None
        if self._js is None:
            raise InferenceError(
                f"Model '{spec.name}' lives in object store bucket '{spec.bucket}' but the "
                "registry has no JetStream connection.", model=spec.name, reason="no-jetstream")
        try:
            store = await self._js.object_store(spec.bucket)
            result = await asyncio.wait_for(store.get(spec.object), self._fetch_timeout)
        except TimeoutError as exc:
            # nats-py's get can wait forever when the object is replaced mid-download
            raise InferenceError(
                f"Model '{spec.name}': fetching object '{spec.object}' from bucket "
                f"'{spec.bucket}' took longer than {self._fetch_timeout} s.",
                model=spec.name, reason="fetch", got="timeout") from exc
        except Exception as exc:  # nats-py raises its own NotFound/Digest/Timeout errors
            raise InferenceError(
                f"Model '{spec.name}': cannot fetch object '{spec.object}' from bucket "
                f"'{spec.bucket}': {type(exc).__name__} {exc}".rstrip(),
                model=spec.name, reason="fetch", got=type(exc).__name__) from exc
        info = result.info
        if getattr(info, "deleted", False):
            raise InferenceError(f"Model '{spec.name}': object '{spec.object}' is deleted.",
                                 model=spec.name, reason="fetch", got="deleted")
        content = bytes(result.data or b"")
        want: str | None
        if spec.sha256 is not None:
            want, where = spec.sha256, "config sha256"
        else:
            want, where = _declared_digest(info)
        if want is None:
            want, where = _hex_from_store_digest(info.digest), "object store digest"
        if want is None:
            raise InferenceError(
                f"Model '{spec.name}': object '{spec.object}' has no SHA-256 to verify (set sha256 "
                f"in the config or the {DIGEST_HEADER} header).", model=spec.name, reason="digest")
        self._verify(spec, content, want, where)
        return content, info.digest

    @staticmethod
    def _verify(spec: ModelSpec, content: bytes, want: str, where: str) -> None:
        got = hashlib.sha256(content).hexdigest()
        if got != want.lower():
            raise InferenceError(
                f"Model '{spec.name}' from {spec.source}: SHA-256 {got} does not match the "
                f"{where} {want}; keeping the previous model.",
                model=spec.name, reason="digest", expected=want, got=got)

    async def load(self, spec: ModelSpec) -> Model:
        """Add or replace ``spec.name``. On failure the previous model keeps serving and the
        :class:`InferenceError` is raised (and recorded in :meth:`status`)."""
        backend = await self.start()
        entry = self._entry(spec.name)
        async with entry.lock:
            try:
                content, store_digest = await self._fetch(spec)
                model = await Model.open(spec.name, content, backend,
                                         options=spec.load_options(), source=spec.source)
            except InferenceError as exc:
                self._record_failure(entry, spec, exc)
                raise
            except Exception as exc:  # anything unexpected must not take the old model down
                err = InferenceError(f"Model '{spec.name}' failed to load: {exc}",
                                     model=spec.name, reason="load", got=str(exc))
                self._record_failure(entry, spec, err)
                raise err from exc
            old = entry.model
            entry.spec, entry.model, entry.store_digest = spec, model, store_digest
            entry.loads += 1
        if old is not None:
            old.close()
        log.info("model %s %s from %s (sha256 %s, %s)", spec.name,
                 "replaced" if old else "loaded", spec.source, model.sha256[:12], backend.label)
        return model

    def _record_failure(self, entry: _Entry, spec: ModelSpec, exc: InferenceError) -> None:
        entry.load_errors += 1
        entry.last_load_error = str(exc)
        entry.last_load_error_at = time.monotonic()
        if entry.spec is None:
            entry.spec = spec
        log.error("model %s: load failed (%s)%s", spec.name, exc,
                  "; previous model keeps serving" if entry.model else "")

    async def load_all(self, specs: Sequence[ModelSpec]) -> dict[str, InferenceError]:
        """Load every spec; returns the failures by name (the others are serving)."""
        failures: dict[str, InferenceError] = {}
        for spec in specs:
            try:
                await self.load(spec)
            except InferenceError as exc:
                failures[spec.name] = exc
        return failures

    async def remove(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None and entry.model is not None:
            entry.model.close()

    # -- serving ------------------------------------------------------------------------------

    def get(self, name: str) -> Model:
        entry = self._entries.get(name)
        if entry is None or entry.model is None:
            known = sorted(n for n, e in self._entries.items() if e.model is not None)
            raise InferenceError(
                f"No model named '{name}' is loaded (loaded: {', '.join(known) or 'none'}).",
                model=name, reason="unknown-model")
        return entry.model

    def names(self) -> list[str]:
        return sorted(n for n, e in self._entries.items() if e.model is not None)

    async def infer(self, name: str, inputs: Inputs) -> list[npt.NDArray[Any]]:
        """Run model ``name`` on ``inputs`` (list in input order, or dict by tensor name).

        Float in, float out for quantized models. Raises :class:`InferenceError`.
        """
        return await self.get(name).invoke(inputs)

    def status(self) -> dict[str, ModelStatus]:
        out: dict[str, ModelStatus] = {}
        now = time.monotonic()
        for name, e in sorted(self._entries.items()):
            m = e.model
            out[name] = ModelStatus(
                name=name, state="serving" if m else "failed",
                backend=m.backend.label if m else None,
                source=m.source if m else (e.spec.source if e.spec else None),
                sha256=m.sha256 if m else None,
                delegate=m.delegate_in_use if m else None,
                threads=m.options.num_threads if m else None,
                loaded_at=m.loaded_at if m else None,
                loads=e.loads, load_errors=e.load_errors, last_load_error=e.last_load_error,
                last_load_error_ago_s=None if e.last_load_error_at is None else round(now - e.last_load_error_at, 1),
                invocations=m.stats.invocations if m else 0,
                errors=m.stats.errors if m else 0,
                last_error=m.stats.last_error if m else None,
                p50_ms=m.stats.percentile_ms(50) if m else None,
                p99_ms=m.stats.percentile_ms(99) if m else None,
            )
        return out

    # -- hot reload ---------------------------------------------------------------------------

    async def watch(self, bucket: str = DEFAULT_MODEL_BUCKET) -> asyncio.Task[None]:
        """Follow ``bucket``; reload each configured model whose object gets a new version.

        Returns once the watch is subscribed; the returned task runs until :meth:`close`.
        """
        if self._js is None:
            raise InferenceError("Cannot watch models without a JetStream connection.",
                                 reason="no-jetstream")
        try:
            store = await self._js.object_store(bucket)
            watcher = await store.watch(include_history=False)
        except Exception as exc:  # nats-py: BucketNotFoundError and friends
            raise InferenceError(f"Cannot watch model bucket '{bucket}': "
                                 f"{type(exc).__name__} {exc}".rstrip(),
                                 reason="fetch", got=type(exc).__name__) from exc
        task = asyncio.create_task(self._watch_loop(bucket, watcher),
                                   name=f"models-watch-{bucket}")
        self._watchers.append(task)
        return task

    async def _watch_loop(self, bucket: str, watcher: Any) -> None:
        """Reader: keep only the newest update per object. Worker: reload from that."""
        pending: dict[str, Any] = {}
        ready = asyncio.Event()

        async def reader() -> None:
            async for info in watcher:
                if info is not None:  # None marks the end of the initial values
                    pending[info.name] = info
                    ready.set()

        read_task = asyncio.create_task(reader(), name=f"models-watch-read-{bucket}")
        try:
            while True:
                await ready.wait()
                ready.clear()
                while pending:
                    name = next(iter(pending))
                    await self._on_object(bucket, pending.pop(name))
        finally:
            read_task.cancel()
            with contextlib.suppress(BaseException):
                await read_task
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def _on_object(self, bucket: str, info: Any) -> None:
        for name, e in list(self._entries.items()):
            spec = e.spec
            if spec is None or spec.object != info.name or spec.bucket != bucket:
                continue
            if getattr(info, "deleted", False):
                log.warning("model %s: object %s deleted from %s; still serving the loaded copy",
                            name, info.name, bucket)
                continue
            if e.model is not None and info.digest and info.digest == e.store_digest:
                continue  # the version already serving
            log.info("model %s: object %s changed in %s; reloading", name, info.name, bucket)
            with contextlib.suppress(InferenceError):  # recorded in status; old model serves
                await self.load(spec)

    async def close(self) -> None:
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._watchers.clear()
        for e in self._entries.values():
            if e.model is not None:
                e.model.close()
        self._entries.clear()


async def wait_for_model(registry: ModelRegistry, name: str, sha256: str,
                         timeout: float) -> Model:
    """Poll until ``name`` serves the model with ``sha256`` (tests, deploy tools)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(InferenceError):
            m = registry.get(name)
            if m.sha256 == sha256:
                return m
        if time.monotonic() > deadline:
            raise InferenceError(f"Model '{name}' did not reach sha256 {sha256} in {timeout} s.",
                                 model=name, reason="timeout", expected=sha256)
        await asyncio.sleep(0.02)
