"""Retrieval quality on the evaluation set (tests/language/eval): recall@5 of the real MiniLM
model at least 0.8, of the lexical fallback at least 0.6; every expected hit exists."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "eval"))

import evalset  # noqa: E402

from edge.language.embedder import load_embedder  # noqa: E402
from edge.language.search import Index  # noqa: E402
from edge.language.store import IndexStore  # noqa: E402


async def _index(tmp_path: Path, kind: str) -> Index:
    emb = load_embedder(kind).embedder
    store = IndexStore(tmp_path / kind, dim=emb.dim, digest=emb.digest, model=emb.name)
    store.open()
    index = Index(store, emb)
    await evalset.build(index)
    return index


async def test_the_set_is_large_enough_and_every_expected_hit_exists(tmp_path: Path) -> None:
    qs = evalset.queries()
    assert len(qs) >= 50
    index = await _index(tmp_path, "lexical")
    rows = index.store.rows(list(range(1, index.store.count() + 1)))
    for q in qs:
        assert any(evalset.matches(r, q["expect"]) for r in rows.values()), q["query"]
    kinds = {r["kind"] for r in rows.values()}
    assert {"doc", "statustext", "decision", "command", "log", "tool_call", "note", "fault"} <= kinds


@pytest.mark.timeout(600)
async def test_minilm_recall_at_5(tmp_path: Path) -> None:
    index = await _index(tmp_path, "minilm")
    recall, missed = await evalset.recall(index)
    assert recall >= 0.8, missed


async def test_lexical_fallback_recall_at_5(tmp_path: Path) -> None:
    index = await _index(tmp_path, "lexical")
    recall, missed = await evalset.recall(index)
    assert recall >= 0.6, missed
