"""Hybrid search over one index: keyword (SQLite FTS5, BM25) and vectors (the embedder's cosine
similarity), merged by reciprocal rank fusion, with filters by entity, kind and time.

Key components
- :class:`Index`: an :class:`~edge.language.store.IndexStore` and the :class:`Embedder` its
  vectors came from; ``search``, ``terms`` (language use over time), ``add``. Blocking work runs in
  threads (``asyncio.to_thread``).
- :class:`Hit`: one result with its source, time, score and the stream and sequence it came from.
- :func:`cite`: what a decision record keeps of the hits an agent used
  (``Decision(inputs={"cites": cite(hits)})``).
- :class:`Knowledge`: the in-process API for native agents (and the ``search_knowledge`` tool):
  it asks whichever index serves now.

Limits (checked before any work): a query of 1..1000 characters, ``limit`` 1..50, at most 20
kinds, ``since <= until``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from edge.language.embedder import Embedder
from edge.language.errors import LanguageError, LanguageUnavailable
from edge.world.schema import is_finite_number
from edge.language.store import Entry, Filters, IndexStore

MAX_QUERY_CHARS = 1000
MAX_LIMIT = 50
MAX_KINDS = 20
MAX_TERMS = 50
DEFAULT_LIMIT = 5
CANDIDATES = 50  # results taken from each side before merging
RRF_K = 60  # reciprocal rank fusion constant


@dataclass(frozen=True)
class Hit:
    text: str
    kind: str
    entity: str
    source: str
    t: float
    stream: str | None
    seq: int | None
    score: float  # fused score (higher is better)
    similarity: float | None  # cosine similarity to the query (None: a keyword-only match)
    keyword_rank: int | None
    vector_rank: int | None
    id: int
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cite(hits: Sequence[Hit | dict[str, Any]]) -> list[dict[str, Any]]:
    """What a decision record keeps of hits: ``[{source, stream, seq, id}]``."""
    out = []
    for h in hits:
        d = h.to_dict() if isinstance(h, Hit) else h
        out.append({"source": d.get("source"), "stream": d.get("stream"), "seq": d.get("seq"), "id": d.get("id")})
    return out


def check_query(query: Any, limit: Any, kinds: Any, since: Any, until: Any) -> None:
    """Refuse a request outside the limits (module docstring) before any work."""
    if not isinstance(query, str) or not query.strip():
        raise LanguageError("'query' must be a non-empty string", key="query")
    if len(query) > MAX_QUERY_CHARS:
        raise LanguageError(f"'query' is {len(query)} characters; at most {MAX_QUERY_CHARS}", key="query")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise LanguageError(f"'limit' must be an integer within 1..{MAX_LIMIT}", key="limit")
    if kinds is not None and (not isinstance(kinds, (list, tuple)) or len(kinds) > MAX_KINDS
                              or not all(isinstance(k, str) for k in kinds)):
        raise LanguageError(f"'kinds' must be a list of at most {MAX_KINDS} strings", key="kinds")
    for key, v in (("since", since), ("until", until)):
        if v is not None and not is_finite_number(v):
            raise LanguageError(f"'{key}' must be Unix seconds (a number)", key=key)
    if since is not None and until is not None and since > until:
        raise LanguageError("'since' is after 'until'", key="since")


class Index:
    """One model's index: its store and its embedder."""

    def __init__(self, store: IndexStore, embedder: Embedder) -> None:
        self.store = store
        self.embedder = embedder

    @property
    def digest(self) -> str:
        return self.embedder.digest

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self.embedder.embed, texts)

    async def add(self, entries: Sequence[Entry],
                  cursor: tuple[str, int] | None = None) -> tuple[list[int | None], np.ndarray]:
        """Embed and store ``entries``; returns their ids (None: already indexed) and vectors."""
        vecs = await self.embed([e.text for e in entries]) if entries else np.zeros((0, self.embedder.dim))
        return await asyncio.to_thread(self.store.add, entries, vecs, cursor), vecs

    async def search(self, query: str, *, entity: str | None = None, kinds: Sequence[str] | None = None,
                     since: float | None = None, until: float | None = None,
                     limit: int = DEFAULT_LIMIT) -> list[Hit]:
        check_query(query, limit, kinds, since, until)
        if entity is not None and (not isinstance(entity, str) or not entity):
            raise LanguageError("'entity' must be a non-empty string", key="entity")
        q = (await self.embed([query]))[0]
        return await asyncio.to_thread(self._search, query, q, Filters(entity, kinds, since, until), limit)

    def _search(self, query: str, q: np.ndarray, f: Filters, limit: int) -> list[Hit]:
        kw = self.store.keyword(query, f, CANDIDATES)
        vec = self.store.vector(q, f, CANDIDATES)
        scores: dict[int, float] = {}
        kw_rank = {i: r for r, (i, _) in enumerate(kw, 1)}
        vec_rank = {i: r for r, (i, _) in enumerate(vec, 1)}
        sims = dict(vec)
        for ranks in (kw_rank, vec_rank):
            for i, r in ranks.items():
                scores[i] = scores.get(i, 0.0) + 1.0 / (RRF_K + r)
        best = sorted(scores, key=lambda i: (-scores[i], i))[:limit]
        rows = self.store.rows(best)
        out = []
        for i in best:
            row = rows.get(i)
            if row is None:
                continue
            sim = sims.get(i)
            out.append(Hit(text=row["text"], kind=row["kind"], entity=row["entity"], source=row["source"],
                           t=row["t"], stream=row["stream"], seq=row["seq"], score=round(scores[i], 6),
                           similarity=round(sim, 4) if sim is not None else None,
                           keyword_rank=kw_rank.get(i), vector_rank=vec_rank.get(i), id=i, meta=row["meta"]))
        return out

    async def terms(self, entity: str, *, since: float | None = None, until: float | None = None,
                    top: int = 10) -> dict[str, Any]:
        if not isinstance(entity, str) or not entity:
            raise LanguageError("'entity' must be a non-empty string", key="entity")
        if not isinstance(top, int) or isinstance(top, bool) or not 1 <= top <= MAX_TERMS:
            raise LanguageError(f"'top' must be an integer within 1..{MAX_TERMS}", key="top")
        check_query("x", 1, None, since, until)
        out = await asyncio.to_thread(self.store.aggregate, entity, since, until, top)
        out["model"] = self.embedder.name
        return out


class IndexSource(Protocol):
    """Who knows the serving index (the language layer)."""

    @property
    def serving(self) -> Index | None: ...


class Knowledge:
    """Search for native agents and tools: always the index that serves now."""

    def __init__(self, source: IndexSource) -> None:
        self._source = source

    def _index(self) -> Index:
        index = self._source.serving
        if index is None:
            raise LanguageUnavailable("the language index is not serving (the layer is off, not started, or "
                                      "its model is still loading)", reason="not-serving")
        return index

    def mode(self) -> str:
        """``semantic`` (MiniLM), ``lexical`` (the fallback) or ``off``."""
        index = self._source.serving
        return "off" if index is None else ("semantic" if index.embedder.kind == "minilm" else "lexical")

    async def search(self, query: str, *, entity: str | None = None, kinds: Sequence[str] | None = None,
                     since: float | None = None, until: float | None = None,
                     limit: int = DEFAULT_LIMIT) -> list[Hit]:
        try:
            return await self._index().search(query, entity=entity, kinds=kinds, since=since, until=until,
                                              limit=limit)
        except LanguageError as err:
            if err.reason != "closed":
                raise
            # the index was replaced by a new model's while this search ran: ask the new one
            return await self._index().search(query, entity=entity, kinds=kinds, since=since, until=until,
                                              limit=limit)

    async def terms(self, entity: str, *, since: float | None = None, until: float | None = None,
                    top: int = 10) -> dict[str, Any]:
        return await self._index().terms(entity, since=since, until=until, top=top)
