"""The language layer (section ``language`` of ``edge status``): embedder, index, indexer, novelty,
captured log lines and tool calls, documents, and the ``edge.<d>.api.language.*`` endpoints.

Start: the endpoints, log capture and tool-call recorder serve at once; then, in the background,
the embedder is loaded (the ``[language]`` file or package model, or the object store
artifact; ``auto`` falls back to lexical and says why), its index is opened under
``<data_dir>/language/<digest[:16]>``, the documents are (re)indexed in the background when they
changed, and the indexers of ``EVT`` and ``LANG`` (:mod:`edge.language.stream`: captured log
lines, tool calls, notes, novelty) resume where they stopped.

A new model (another digest: a changed file at start, or a new object store version at run
time) is indexed into a new directory in the background while the old index keeps serving; once
the new one has caught up with the stream it serves and the old directory is removed.

Endpoints (the device API envelope, :mod:`edge.nats.service`; micro service ``edge-language``):
``api.language.search`` ``{query, entity?, kinds?, since?, until?, limit?}`` -> hits,
``api.language.terms`` ``{entity, since?, until?, top?}`` -> aggregate, ``api.language.note``
``{text, entity?, author?}`` -> the note's subject (published to ``LANG``, indexed from there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from nats.micro import add_service
from nats.micro.service import Service

from edge.errors import LifecycleError, NatsError
from edge.language.capture import LogCapture, ToolCallRecorder
from edge.language.config import LanguageConfig
from edge.language.documents import default_documents, files, read_document
from edge.language.embedder import Embedder, LexicalEmbedder, load_embedder
from edge.language.errors import EmbedderError, LanguageError, LanguageUnavailable
from edge.language.indexer import Followers, StreamIndexer
from edge.language.stream import LANG_STREAM, ensure_lang_stream, lang_subject
from edge.language.search import DEFAULT_LIMIT, Index, Knowledge
from edge.language.store import IndexStore
from edge.layer import DeviceContext
from edge.nats import subjects
from edge.nats.service import endpoint

if TYPE_CHECKING:
    from edge.config.device import DeviceConfig

log = logging.getLogger("edge.language")

SERVICE_NAME = "edge-language"
SERVICE_VERSION = "1.0.0"
INDEX_DIR = "language"
MODELS_DIR = "models"
MAX_NOTE_CHARS = 4000
WATCH_RETRY_S = 5.0
DOC_BATCH = 8  # passages embedded per step of document indexing
DOC_PAUSE = 4.0  # pause after each step, as a multiple of its time (documents use at most 1/5 of a core)


def build_language(cfg: DeviceConfig) -> LanguageLayer | None:
    """The language layer the config asks for (None when ``[language] enabled = false``)."""
    lang: LanguageConfig = cfg.language
    if not lang.enabled:
        return None
    return LanguageLayer(lang, manifests=list(cfg.components))


class LanguageLayer:
    """See the module docstring."""

    name = "language"

    def __init__(self, config: LanguageConfig | None = None, *, manifests: list[Path] | None = None) -> None:
        self.config = config or LanguageConfig()
        self.manifests = list(manifests or [])
        self.knowledge = Knowledge(self)
        self.fallback_reason: str | None = None
        self.searches = 0
        self.notes = 0
        self.documents = 0
        self.swaps = 0
        self.last_error: str | None = None
        self._serving: Index | None = None
        self._indexer: Followers | None = None
        self._building: tuple[Index, Followers] | None = None
        self._streams: list[str] = [subjects.EVT_STREAM]
        self._ctx: DeviceContext | None = None
        self._logs: LogCapture | None = None
        self._tools: ToolCallRecorder | None = None
        self._service: Service | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._swap_lock = asyncio.Lock()
        self.ready = asyncio.Event()  # set once the model is loaded (or failed to load)

    @property
    def serving(self) -> Index | None:
        return self._serving

    @property
    def ctx(self) -> DeviceContext:
        if self._ctx is None:
            raise LifecycleError("the language layer is not started; call start(ctx) first")
        return self._ctx

    def root(self) -> Path:
        return self.ctx.data_dir / INDEX_DIR

    def models_dir(self) -> Path:
        """Where over-the-air models are kept (``<data_dir>/language/models``)."""
        return self.root() / MODELS_DIR

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, ctx: DeviceContext) -> None:
        """Capture and endpoints serve at once; the model loads in the background (it takes a
        second or more on a small board) and the index serves when it is loaded (:attr:`ready`).

        Without the ``LANG`` stream (the server refused it, e.g. a store limit) nothing is
        captured and no novelty is published; ``EVT`` is still indexed and searched."""
        self._ctx = ctx
        try:
            await ensure_lang_stream(ctx.js, ctx.device)
        except NatsError as err:
            self.last_error = err.message
            log.error("language: %s; log lines, tool calls, notes and novelty are not recorded", err.message)
        else:
            self._streams = [subjects.EVT_STREAM, LANG_STREAM]
            self._logs = LogCapture(ctx.events, ctx.device, asyncio.get_running_loop())
            self._logs.install()
            self._tools = ToolCallRecorder(ctx.nc, ctx.events, ctx.device)
            await self._tools.start()
        await self._start_service()
        self._spawn(self._boot(), "language-boot")

    async def wait_ready(self, timeout: float | None = None) -> Index:
        """The serving index once the model is loaded (raises what stopped it from loading)."""
        async with asyncio.timeout(timeout):
            await self.ready.wait()
        if self._serving is None:
            raise LanguageUnavailable(f"the language index did not start: {self.last_error}", reason="failed")
        return self._serving

    async def _boot(self) -> None:
        ctx, cfg = self.ctx, self.config
        try:
            model: Path | None = None
            if cfg.model_bucket:
                from edge.language.artifact import fetch_model

                try:
                    model, _ = await fetch_model(ctx.js, cfg.model_bucket, cfg.model_object, self.models_dir())
                except EmbedderError as err:  # no artifact yet: the file/package model (or lexical) serves
                    log.warning("%s; using the local model until one arrives", err.message)
                    self.last_error = err.message
            loaded = await asyncio.to_thread(load_embedder, cfg.embedder, model_path=cfg.model_path,
                                             vocab_path=cfg.vocab_path, model=model, threads=cfg.threads)
            self.fallback_reason = loaded.fallback_reason
            index = await self._open(loaded.embedder)
        except (LanguageError, OSError, sqlite3.Error) as err:  # a bad model, an unwritable data dir
            self.last_error = err.message if isinstance(err, LanguageError) else f"{type(err).__name__}: {err}"
            log.error("language index not started: %s", self.last_error)
            self.ready.set()
            return
        if cfg.model_bucket:
            self._spawn(self._watch_model(), "language-model-watch")
        lexical = LexicalEmbedder()
        old_dir = self.root() / lexical.digest[:16]
        if index.embedder.kind != "lexical" and index.store.count() == 0 and old_dir.is_dir():
            # the extra was installed since: the lexical index serves until the new one caught up
            await asyncio.to_thread(index.store.close)
            old = await self._open(lexical)
            self._serving, self._indexer = old, self._follow(old, live=True)
            self.ready.set()
            self._spawn(self.swap_model(loaded.embedder), "language-swap")
            log.info("language: indexing with %s in the background; the lexical index serves meanwhile",
                     loaded.embedder.name)
            return
        self._serving = index
        self._indexer = self._follow(index, live=True)
        self.ready.set()
        self._spawn(self._index_documents(index), "language-documents")
        self._spawn(self._retire_others(index), "language-retire")
        log.info("language index %s serving (%s%s)", index.digest[:16], index.embedder.name,
                 f", lexical fallback: {self.fallback_reason}" if self.fallback_reason else "")

    async def stop(self) -> None:
        if self._logs is not None:
            self._logs.uninstall()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._service is not None:
            with contextlib.suppress(Exception):
                await self._service.stop()
            self._service = None
        if self._tools is not None:
            await self._tools.stop()
        if self._building is not None:
            await self._building[1].stop()
            self._building[0].store.close()
            self._building = None
        if self._indexer is not None:
            await self._indexer.stop()
            self._indexer = None
        if self._serving is not None:
            self._serving.store.close()
            self._serving = None

    def status(self) -> dict[str, Any]:
        index = self._serving
        out: dict[str, Any] = {
            "mode": ("loading" if not self.ready.is_set() else "failed") if index is None else ("semantic" if index.embedder.kind == "minilm" else "lexical"),
            "fallback": self.fallback_reason,
            "searches": self.searches, "notes": self.notes, "documents": self.documents,
            "model_swaps": self.swaps, "last_error": self.last_error,
        }
        if index is not None:
            out.update(model=index.embedder.name, digest=index.digest[:16], entries=index.store.count(),
                       size_bytes=index.store.size_bytes())
        if self._indexer is not None:
            out["indexer"] = self._indexer.status()
        if self._building is not None:
            out["rebuilding"] = {"model": self._building[0].embedder.name,
                                 "digest": self._building[0].digest[:16], **self._building[1].status()}
        if self._logs is not None:
            out["logs"] = self._logs.status()
        if self._tools is not None:
            out["tool_calls"] = self._tools.status()
        return out

    # -- parts --------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            err = task.exception()
            self.last_error = f"{task.get_name()}: {type(err).__name__}: {err}"
            log.error("language: %s", self.last_error)

    async def _open(self, embedder: Embedder) -> Index:
        store = IndexStore(self.root() / embedder.digest[:16], dim=embedder.dim, digest=embedder.digest,
                           model=embedder.name)
        await asyncio.to_thread(store.open)
        return Index(store, embedder)

    def _follow(self, index: Index, *, live: bool) -> Followers:
        ctx = self.ctx

        def emit(subject: str, data: bytes, msg_id: str) -> None:
            ctx.events.emit(subject, data, msg_id=msg_id)

        can_emit = live and LANG_STREAM in self._streams  # novelty goes to LANG
        followers = Followers([
            StreamIndexer(index, ctx.js, ctx.device, stream=stream, skip_kinds=self.config.skip_kinds,
                          novelty_threshold=self.config.novelty_threshold, emit=emit if can_emit else None,
                          max_entries=self.config.max_entries)
            for stream in self._streams])
        followers.start()
        return followers

    def _document_paths(self) -> list[Path]:
        docs = self.config.documents if self.config.documents is not None else default_documents()
        return files(docs) + [m for m in self.manifests if m.is_file()]

    async def _index_documents(self, index: Index) -> None:
        """(Re)index every document whose content changed since it was indexed into ``index``."""
        n = 0
        for path in self._document_paths():
            try:
                rel, digest, entries = await asyncio.to_thread(read_document, path)
            except OSError as err:
                log.warning("language: cannot read document %s: %s", path, err.strerror)
                continue
            if await asyncio.to_thread(index.store.document_digest, rel) == digest:
                n += 1
                continue
            parts = []
            for start in range(0, len(entries), DOC_BATCH):  # paced: documents are background work
                t0 = time.monotonic()
                parts.append(await index.embed([e.text for e in entries[start:start + DOC_BATCH]]))
                await asyncio.sleep((time.monotonic() - t0) * DOC_PAUSE)
            vecs = np.concatenate(parts) if parts else np.zeros((0, index.embedder.dim), np.float32)
            await asyncio.to_thread(index.store.replace_document, rel, digest, entries, vecs)
            n += 1
        self.documents = n

    async def _retire_others(self, index: Index) -> None:
        """Once ``index`` has caught up, remove the directories of other models' indexes."""
        if self._indexer is None:
            return
        await self._indexer.caught_up()
        with contextlib.suppress(Exception):  # consumers of other models' indexes
            for stream in self._streams:
                for info in await self.ctx.js.consumers_info(stream):
                    name = info.name or ""
                    if name.startswith("lang-") and name != self._indexer.durable:
                        await self.ctx.js.delete_consumer(stream, name)
        root = self.root()
        for d in root.iterdir() if root.is_dir() else ():
            if d.is_dir() and d.name not in (index.digest[:16], MODELS_DIR):
                await asyncio.to_thread(shutil.rmtree, d, True)
                log.info("language: removed the index of another model (%s)", d.name)

    # -- a new model --------------------------------------------------------------------------

    async def swap_model(self, embedder: Embedder) -> None:
        """Index everything with ``embedder`` in the background; serve it once caught up."""
        async with self._swap_lock:
            old = self._serving
            if old is not None and old.digest == embedder.digest:
                return
            index = await self._open(embedder)
            indexer = self._follow(index, live=False)
            self._building = (index, indexer)
            try:
                await self._index_documents(index)
                await indexer.caught_up()
            except BaseException:
                await indexer.stop(delete_consumer=True)
                index.store.close()
                self._building = None
                raise
            await indexer.stop()
            live = self._follow(index, live=True)  # same durable consumer: resumes at its cursor
            old_indexer, self._indexer = self._indexer, live
            self._serving, self._building = index, None
            self.fallback_reason = None if embedder.kind != "lexical" else self.fallback_reason
            self.swaps += 1
            if old_indexer is not None:
                await old_indexer.stop(delete_consumer=True)
            if old is not None:
                old.store.close()
                await asyncio.to_thread(shutil.rmtree, old.store.dir, True)
            log.info("language: model %s serves now (index %s)", embedder.name, index.digest[:16])

    async def _watch_model(self) -> None:
        from edge.language.artifact import fetch_model

        cfg = self.config
        while True:
            try:
                store = await self.ctx.js.object_store(cfg.model_bucket)
                watcher = await store.watch(include_history=False)
                async for info in watcher:
                    if info is None or info.name != cfg.model_object or getattr(info, "deleted", False):
                        continue
                    try:
                        model, _ = await fetch_model(self.ctx.js, cfg.model_bucket, cfg.model_object,
                                                     self.models_dir())
                        loaded = await asyncio.to_thread(load_embedder, "minilm", model=model,
                                                         vocab_path=cfg.vocab_path, threads=cfg.threads)
                    except EmbedderError as err:
                        self.last_error = err.message
                        log.error("language: %s", err.message)
                        continue
                    await self.swap_model(loaded.embedder)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001  no bucket yet, a reconnect: try again later
                self.last_error = f"model watch: {type(err).__name__}: {err}"
                await asyncio.sleep(WATCH_RETRY_S)

    # -- endpoints ----------------------------------------------------------------------------

    async def _start_service(self) -> None:
        ctx = self.ctx
        svc = await add_service(ctx.nc, name=SERVICE_NAME, version=SERVICE_VERSION,
                                description=f"language index of device {ctx.device}",
                                metadata={"device": ctx.device})
        eps: list[tuple[str, Callable[[dict[str, Any]], Awaitable[Any]], str]] = [
            ("search", self.api_search, "Hybrid search {query, entity?, kinds?, since?, until?, limit?}."),
            ("terms", self.api_terms, "Aggregate vector and top terms {entity, since?, until?, top?}."),
            ("note", self.api_note, "Post an operator note {text, entity?, author?}."),
        ]
        for verb, handler, doc in eps:
            await svc.add_endpoint(name=f"language-{verb}", subject=subjects.api(ctx.device, "language", verb),
                                   handler=endpoint(handler, name=f"language.{verb}"), metadata={"doc": doc})
        self._service = svc

    async def api_search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.searches += 1
        hits = await self.knowledge.search(body.get("query"), entity=body.get("entity"),  # type: ignore[arg-type]
                                           kinds=body.get("kinds"), since=body.get("since"),
                                           until=body.get("until"), limit=body.get("limit", DEFAULT_LIMIT))
        return [h.to_dict() for h in hits]

    async def api_terms(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.knowledge.terms(body.get("entity"), since=body.get("since"),  # type: ignore[arg-type]
                                          until=body.get("until"), top=body.get("top", 10))

    async def api_note(self, body: dict[str, Any]) -> dict[str, Any]:
        text, entity, author = body.get("text"), body.get("entity", "device"), body.get("author", "operator")
        if not isinstance(text, str) or not text.strip():
            raise LanguageError("'text' must be a non-empty string", key="text")
        if len(text) > MAX_NOTE_CHARS:
            raise LanguageError(f"'text' is {len(text)} characters; at most {MAX_NOTE_CHARS}", key="text")
        if not subjects.is_id(entity):
            raise LanguageError(f"'entity' must be an id ({subjects.ID_RULE})", key="entity")
        if not isinstance(author, str) or not 0 < len(author) <= 64:
            raise LanguageError("'author' must be a string of 1-64 characters", key="author")
        if self._serving is None or LANG_STREAM not in self._streams:
            raise LanguageUnavailable("the language layer is not serving or has no LANG stream",
                                      reason="not-serving")
        note_id = uuid.uuid4().hex[:16]
        subject = lang_subject(self.ctx.device, entity, "note")
        data = json.dumps({"t": time.time(), "text": text, "author": author, "id": note_id}).encode()
        self.ctx.events.emit(subject, data, msg_id=f"note.{note_id}")
        self.notes += 1
        return {"subject": subject, "id": note_id}
