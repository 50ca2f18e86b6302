"""The index on disk: one SQLite file (entries, an FTS5 keyword index, stream cursors) per
embedding model, with the vectors as int8 blobs, loaded into a brute-force int8 matrix.

Layout: ``<data_dir>/language/<digest[:16]>/index.sqlite``; ``digest`` is the embedder's
(:mod:`edge.language.embedder`), so a new model never mixes its vectors with the old ones.

Everything here is blocking and thread-safe (one lock): the async side calls it through
``asyncio.to_thread``. Writes are transactions: the entries of a batch and the stream cursor that
says how far the batch reached commit together, so a crash loses nothing and duplicates nothing.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.language.embedder import words
from edge.language.errors import LanguageError

log = logging.getLogger("edge.language.store")

SCHEMA_VERSION = "1"
INDEX_FILE = "index.sqlite"
CHUNK_ROWS = 1024  # matrix rows converted to float per step of a vector search (fits in a CPU cache)
MAX_AGGREGATE_ROWS = 5000  # entries an aggregate (vector, top terms) reads at most
DOC_KIND = "doc"
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were will with "
    "not no yes ok true false null none".split())


@dataclass
class Entry:
    """One indexed text and where it came from."""

    text: str
    kind: str  # statustext, decision, command, log, tool_call, note, event, fault, doc, ...
    entity: str = ""
    source: str = ""  # a subject, or a document's path#heading
    t: float = 0.0  # wall-clock Unix seconds
    stream: str | None = None
    seq: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Filters:
    """Search filters; None = no filter."""

    entity: str | None = None
    kinds: Sequence[str] | None = None
    since: float | None = None
    until: float | None = None


def fts_query(text: str) -> str | None:
    """An FTS5 query matching any word of ``text`` (each word quoted: no query syntax leaks)."""
    toks = [w for w in words(text) if w not in STOPWORDS] or words(text)
    if not toks:
        return None
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in dict.fromkeys(toks))


class IndexStore:
    """The entries, keyword index, vectors and cursors of one embedding model."""

    def __init__(self, directory: Path, *, dim: int, digest: str, model: str) -> None:
        self.dir = directory
        self.dim = dim
        self.digest = digest
        self.model = model
        self.path = directory / INDEX_FILE
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._mat = np.zeros((0, dim), np.int8)
        self._ids = np.zeros(0, np.int64)
        self._t = np.zeros(0, np.float64)
        self._kind = np.zeros(0, np.int32)
        self._ent = np.zeros(0, np.int32)
        self._alive = np.zeros(0, bool)
        self._n = 0
        self._codes: dict[str, int] = {}

    # -- open / close -------------------------------------------------------------------------

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript("""
            CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS entries (
                id INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, kind TEXT NOT NULL,
                entity TEXT NOT NULL, source TEXT NOT NULL, stream TEXT, seq INTEGER,
                text TEXT NOT NULL, meta TEXT NOT NULL, vec BLOB NOT NULL, UNIQUE (stream, seq));
            CREATE INDEX IF NOT EXISTS entries_entity_t ON entries (entity, t);
            CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
                text, tags, content='entries', content_rowid='id', tokenize='porter unicode61');
            CREATE TRIGGER IF NOT EXISTS entries_ai AFTER INSERT ON entries BEGIN
                INSERT INTO fts(rowid, text, tags) VALUES (new.id, new.text, new.kind || ' ' || new.entity);
            END;
            CREATE TRIGGER IF NOT EXISTS entries_ad AFTER DELETE ON entries BEGIN
                INSERT INTO fts(fts, rowid, text, tags) VALUES ('delete', old.id, old.text, old.kind || ' ' || old.entity);
            END;
            CREATE TABLE IF NOT EXISTS cursors (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS documents (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL);
        """)
        info = dict(db.execute("SELECT key, value FROM info").fetchall())
        if info and (info.get("digest") != self.digest or info.get("schema") != SCHEMA_VERSION):
            db.close()
            raise LanguageError(f"index {self.path} belongs to model {info.get('digest', '?')[:16]} "
                                f"(schema {info.get('schema')}), not {self.digest[:16]}", reason="wrong-index")
        if not info:
            db.executemany("INSERT INTO info VALUES (?, ?)", [
                ("digest", self.digest), ("schema", SCHEMA_VERSION), ("model", self.model), ("dim", str(self.dim))])
        self._db = db
        rows = db.execute("SELECT id, t, kind, entity, vec FROM entries ORDER BY id").fetchall()
        self._grow(len(rows))
        for r in rows:
            self._append(r[0], r[1], r[2], r[3], np.frombuffer(r[4], np.int8))
        log.info("index %s opened: %d entries", self.path, self._n)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise LanguageError(f"index {self.path} is closed", reason="closed")
        return self._db

    # -- matrix -------------------------------------------------------------------------------

    def _code(self, value: str) -> int:
        code = self._codes.get(value)
        if code is None:
            code = self._codes[value] = len(self._codes)
        return code

    def _grow(self, extra: int) -> None:
        need = self._n + extra
        if need <= len(self._ids):
            return
        cap = max(need, 2 * len(self._ids), 1024)
        self._mat = np.resize(self._mat, (cap, self.dim)) if self._n else np.zeros((cap, self.dim), np.int8)
        for name, dtype in (("_ids", np.int64), ("_t", np.float64), ("_kind", np.int32), ("_ent", np.int32),
                            ("_alive", bool)):
            old = getattr(self, name)
            new = np.zeros(cap, dtype)
            new[:self._n] = old[:self._n]
            setattr(self, name, new)

    def _append(self, eid: int, t: float, kind: str, entity: str, vec: np.ndarray) -> None:
        i = self._n
        self._mat[i] = vec
        self._ids[i], self._t[i] = eid, t
        self._kind[i], self._ent[i] = self._code(kind), self._code(entity)
        self._alive[i] = True
        self._n += 1

    @staticmethod
    def quantise(vectors: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(vectors * 127.0), -127, 127).astype(np.int8)

    def _mask(self, f: Filters) -> np.ndarray:
        n = self._n
        mask = self._alive[:n].copy()
        if f.entity is not None:
            code = self._codes.get(f.entity)
            if code is None:
                return np.zeros(n, bool)
            mask &= self._ent[:n] == code
        if f.kinds is not None:
            codes = [self._codes[k] for k in f.kinds if k in self._codes]
            mask &= np.isin(self._kind[:n], codes)
        if f.since is not None:
            mask &= self._t[:n] >= f.since
        if f.until is not None:
            mask &= self._t[:n] <= f.until
        return mask

    def _similarities(self, q: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity of ``q`` (normalised float32) to every row (or ``rows``)."""
        qf = q.astype(np.float32) / 127.0
        if rows is not None:
            picked: np.ndarray = self._mat[rows].astype(np.float32) @ qf
            return picked
        out = np.empty(self._n, np.float32)
        buf = np.empty((CHUNK_ROWS, self.dim), np.float32)  # cache-sized: converted and used at once
        for start in range(0, self._n, CHUNK_ROWS):
            stop = min(self._n, start + CHUNK_ROWS)
            part = buf[:stop - start]
            part[...] = self._mat[start:stop]
            out[start:stop] = part @ qf
        return out

    # -- writes -------------------------------------------------------------------------------

    def add(self, entries: Sequence[Entry], vectors: np.ndarray,
            cursor: tuple[str, int] | None = None) -> list[int | None]:
        """Insert ``entries`` (a stream message already indexed is skipped: None in the result)
        and move ``cursor`` (stream, last seq) in the same transaction."""
        q = self.quantise(vectors)
        out: list[int | None] = []
        with self._lock:
            db = self.db
            db.execute("BEGIN")
            try:
                for e, v in zip(entries, q):
                    cur = db.execute(
                        "INSERT OR IGNORE INTO entries (t, kind, entity, source, stream, seq, text, meta, vec) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (e.t, e.kind, e.entity, e.source, e.stream, e.seq, e.text,
                         json.dumps(e.meta, separators=(",", ":"), default=str), v.tobytes()))
                    out.append(cur.lastrowid if cur.rowcount else None)
                if cursor is not None:
                    db.execute("INSERT INTO cursors VALUES (?, ?) ON CONFLICT(stream) DO UPDATE SET "
                               "seq = max(seq, excluded.seq)", cursor)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._grow(len(entries))
            for e, v, eid in zip(entries, q, out):
                if eid is not None:
                    self._append(eid, e.t, e.kind, e.entity, v)
        return out

    def set_cursor(self, stream: str, seq: int) -> None:
        """Move a stream's cursor without entries (a batch of messages nothing was indexed from)."""
        with self._lock:
            self.db.execute("INSERT INTO cursors VALUES (?, ?) ON CONFLICT(stream) DO UPDATE SET "
                            "seq = max(seq, excluded.seq)", (stream, seq))

    def cursor(self, stream: str) -> int:
        """The last stream sequence indexed (0: none)."""
        with self._lock:
            row = self.db.execute("SELECT seq FROM cursors WHERE stream = ?", (stream,)).fetchone()
        return int(row[0]) if row else 0

    def document_digest(self, path: str) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT sha256 FROM documents WHERE path = ?", (path,)).fetchone()
        return str(row[0]) if row else None

    def replace_document(self, path: str, sha256: str, entries: Sequence[Entry], vectors: np.ndarray) -> int:
        """Replace every entry of document ``path`` by ``entries``; returns how many were removed."""
        q = self.quantise(vectors)
        with self._lock:
            db = self.db
            db.execute("BEGIN")
            try:
                old = [r[0] for r in db.execute("SELECT id FROM entries WHERE kind = ? AND (source = ? OR "
                                                "source LIKE ?)", (DOC_KIND, path, path + "#%"))]
                db.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in old])
                ids = []
                for e, v in zip(entries, q):
                    cur = db.execute(
                        "INSERT INTO entries (t, kind, entity, source, stream, seq, text, meta, vec) "
                        "VALUES (?, ?, ?, ?, NULL, NULL, ?, ?, ?)",
                        (e.t, e.kind, e.entity, e.source, e.text, json.dumps(e.meta), v.tobytes()))
                    ids.append(int(cur.lastrowid or 0))
                db.execute("INSERT INTO documents VALUES (?, ?) ON CONFLICT(path) DO UPDATE SET "
                           "sha256 = excluded.sha256", (path, sha256))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._kill(old)
            self._grow(len(entries))
            for e, v, eid in zip(entries, q, ids):
                self._append(eid, e.t, e.kind, e.entity, v)
        return len(old)

    def _kill(self, ids: Iterable[int]) -> None:
        dead = np.fromiter(ids, np.int64)
        if len(dead):
            self._alive[:self._n] &= ~np.isin(self._ids[:self._n], dead)

    def evict(self, max_entries: int) -> int:
        """Delete the oldest stream entries beyond ``max_entries`` (documents are kept)."""
        with self._lock:
            alive = int(self._alive[:self._n].sum())
            excess = alive - max_entries
            if excess <= 0:
                return 0
            db = self.db
            ids = [r[0] for r in db.execute("SELECT id FROM entries WHERE kind != ? ORDER BY id LIMIT ?",
                                            (DOC_KIND, excess))]
            db.execute("BEGIN")
            db.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in ids])
            db.execute("COMMIT")
            self._kill(ids)
        log.info("index %s: evicted %d oldest entries (max_entries %d)", self.path, len(ids), max_entries)
        return len(ids)

    # -- reads --------------------------------------------------------------------------------

    def count(self) -> int:
        """Live entries; lock-free (the status reads it from the event loop while a search runs)."""
        alive, n = self._alive, self._n
        return int(alive[:n].sum())

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob(INDEX_FILE + "*") if p.is_file())

    def _sql_filters(self, f: Filters) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if f.entity is not None:
            clauses.append("e.entity = ?")
            args.append(f.entity)
        if f.kinds is not None:
            clauses.append(f"e.kind IN ({','.join('?' * len(f.kinds))})")
            args += list(f.kinds)
        if f.since is not None:
            clauses.append("e.t >= ?")
            args.append(f.since)
        if f.until is not None:
            clauses.append("e.t <= ?")
            args.append(f.until)
        return "".join(" AND " + c for c in clauses), args

    def keyword(self, text: str, f: Filters, limit: int) -> list[tuple[int, float]]:
        """(id, bm25 score: higher is better) of the best keyword matches."""
        query = fts_query(text)
        if query is None:
            return []
        where, args = self._sql_filters(f)
        sql = ("SELECT e.id, -bm25(fts, 1.0, 0.3) FROM fts JOIN entries e ON e.id = fts.rowid "
               f"WHERE fts MATCH ?{where} ORDER BY bm25(fts, 1.0, 0.3) LIMIT ?")
        with self._lock:
            return [(int(i), float(s)) for i, s in self.db.execute(sql, [query, *args, limit])]

    def vector(self, q: np.ndarray, f: Filters, limit: int) -> list[tuple[int, float]]:
        """(id, cosine similarity) of the nearest vectors (brute force over the int8 matrix)."""
        with self._lock:
            if self._n == 0:
                return []
            mask = self._mask(f)
            if not mask.any():
                return []
            if mask.mean() < 0.25:  # a narrow filter: score only the rows it keeps
                rows = np.flatnonzero(mask)
                sims = self._similarities(q, rows)
            else:
                rows = None
                sims = np.where(mask, self._similarities(q), -np.inf)
            k = min(limit, len(sims))
            top = np.argpartition(-sims, k - 1)[:k]
            top = top[np.argsort(-sims[top])]
            idx = rows[top] if rows is not None else top
            return [(int(self._ids[i]), float(sims[j])) for i, j in zip(idx, top) if np.isfinite(sims[j])]

    def nearest_of_entity(self, entity: str, q: np.ndarray, before_id: int) -> tuple[float, int | None]:
        """Highest similarity of ``q`` to an earlier entry (id < ``before_id``) of ``entity``."""
        with self._lock:
            code = self._codes.get(entity)
            if code is None or self._n == 0:
                return -1.0, None
            n = self._n
            rows = np.flatnonzero(self._alive[:n] & (self._ent[:n] == code) & (self._ids[:n] < before_id))
            if not len(rows):
                return -1.0, None
            sims = self._similarities(q, rows)
            j = int(np.argmax(sims))
            return float(sims[j]), int(self._ids[rows[j]])

    def rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        if not ids:
            return {}
        with self._lock:
            cur = self.db.execute(
                f"SELECT id, t, kind, entity, source, stream, seq, text, meta FROM entries WHERE id IN "
                f"({','.join('?' * len(ids))})", list(ids))
            out = {}
            for i, t, kind, entity, source, stream, seq, text, meta in cur:
                out[int(i)] = {"id": int(i), "t": t, "kind": kind, "entity": entity, "source": source,
                               "stream": stream, "seq": seq, "text": text, "meta": json.loads(meta)}
        return out

    def aggregate(self, entity: str, since: float | None, until: float | None, top: int) -> dict[str, Any]:
        """What was said about ``entity`` in the window: count, mean vector (normalised), top terms
        (count in the window x inverse document frequency over the whole index)."""
        f = Filters(entity=entity, since=since, until=until)
        where, args = self._sql_filters(f)
        with self._lock:
            db = self.db
            texts = [r[0] for r in db.execute(f"SELECT e.text FROM entries e WHERE 1{where} ORDER BY e.id DESC "
                                              "LIMIT ?", [*args, MAX_AGGREGATE_ROWS])]
            mask = self._mask(f)
            n_window = int(mask.sum())
            mean = self._mat[:self._n][mask].astype(np.float32).mean(axis=0) if n_window else None
            total = int(self._alive[:self._n].sum())
            counts: Counter[str] = Counter(w for t in texts for w in words(t)
                                           if w not in STOPWORDS and len(w) > 1 and not w.isdigit())
            scored = []
            for term, c in counts.most_common(top * 4):
                df = db.execute("SELECT count(*) FROM fts WHERE fts MATCH ?",
                                ['"' + term.replace('"', '""') + '"']).fetchone()[0]
                scored.append((c * math.log(1 + total / (1 + df)), term, c))
        scored.sort(reverse=True)
        vec = None
        if mean is not None:
            norm = float(np.linalg.norm(mean))
            vec = [round(float(x), 5) for x in (mean / norm if norm else mean)]
        return {"entity": entity, "since": since, "until": until, "entries": n_window,
                "terms": [{"term": t, "count": c, "score": round(s, 3)} for s, t, c in scored[:top]],
                "vector": vec}
