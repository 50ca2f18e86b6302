"""The retrieval evaluation: the project's docs, a recorded demo window and incident lines,
and queries with their expected hits (``queries.json``).

A query is answered when one of its top 5 hits matches one of its ``expect`` items: ``text`` (a
substring of the hit's text) or ``source`` (a prefix of the hit's source, e.g. ``docs/sync.md``).
``demo_window.json`` is the ``EVT`` stream of a recorded ``edge run`` (record.py);
``incidents.json`` are lines in the device's message formats (status texts, faults, warning logs,
decisions, command answers, tool calls, notes) that the short demo run does not produce.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge.language.documents import INSTALL_ROOT, files, read_document
from edge.language.extract import extract
from edge.language.search import Index

HERE = Path(__file__).resolve().parent
DEVICE = "dev1"
TOP = 5


def window() -> list[tuple[str, bytes, float, int]]:
    """(subject, data, t, seq) of the demo window followed by the incidents."""
    demo = json.loads((HERE / "demo_window.json").read_text())
    out = [(m["subject"].replace("{device}", DEVICE), m["data"].encode(), float(m["t"]), int(m["seq"])) for m in demo]
    last_seq = max(s for *_, s in out)
    last_t = max(t for _, _, t, _ in out)
    for i, m in enumerate(json.loads((HERE / "incidents.json").read_text()), 1):
        out.append((m["subject"].replace("{device}", DEVICE), m["data"].encode(), last_t + 10.0 * i, last_seq + i))
    return out


def queries() -> list[dict[str, Any]]:
    return list(json.loads((HERE / "queries.json").read_text()))


def documents() -> list[Path]:
    return files([INSTALL_ROOT / "docs", INSTALL_ROOT / "README.md"])


async def build(index: Index) -> int:
    """Index the documents and the window into ``index``; returns the entries added."""
    n = 0
    for path in documents():
        rel, digest, entries = read_document(path)
        vecs = await index.embed([e.text for e in entries])
        index.store.replace_document(rel, digest, entries, vecs)
        n += len(entries)
    batch = []
    for subject, data, t, seq in window():
        entry = extract(subject, data, t=t, stream="EVT", seq=seq, skip_kinds=("detection",))
        if entry is not None:
            batch.append(entry)
    ids, _ = await index.add(batch, ("EVT", max(s for *_, s in window())))
    return n + sum(1 for i in ids if i is not None)


def matches(hit: dict[str, Any], expect: list[dict[str, str]]) -> bool:
    return any(("text" in e and e["text"] in hit["text"]) or ("source" in e and hit["source"].startswith(e["source"]))
               for e in expect)


async def recall(index: Index, k: int = TOP) -> tuple[float, list[dict[str, Any]]]:
    """recall@k over every query, and the queries missed (with what came back)."""
    qs = queries()
    missed = []
    for q in qs:
        hits = [h.to_dict() for h in await index.search(q["query"], entity=q.get("entity"), limit=k)]
        if not any(matches(h, q["expect"]) for h in hits):
            missed.append({"query": q["query"], "got": [(h["source"], h["text"][:60]) for h in hits]})
    return 1.0 - len(missed) / len(qs), missed
