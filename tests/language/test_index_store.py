"""The index on disk: keyword + vector search with filters, restart, duplicates, documents,
eviction, aggregates (real SQLite FTS5, the lexical embedder for speed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.language.embedder import LexicalEmbedder
from edge.language.errors import LanguageError
from edge.language.search import Index, cite
from edge.language.store import Entry, IndexStore, fts_query

EMB = LexicalEmbedder()


def _store(path: Path, digest: str = EMB.digest) -> IndexStore:
    s = IndexStore(path, dim=EMB.dim, digest=digest, model=EMB.name)
    s.open()
    return s


def _entries() -> list[Entry]:
    lines = [("drone-0", "statustext", "PreArm: Battery below minimum voltage", 100.0),
             ("drone-0", "statustext", "GPS glitch detected", 200.0),
             ("drone-1", "log", "WARNING edge.hardware: driver imu restarting after I2C error", 300.0),
             ("drone-1", "decision", "follow-drone-1 decided hold: target lost", 400.0)]
    return [Entry(text=t, kind=k, entity=e, source=f"edge.dev1.evt.{e}.{k}", t=ts, stream="EVT", seq=i + 1)
            for i, (e, k, t, ts) in enumerate(lines)]


async def test_hybrid_search_filters_and_hit_fields(tmp_path: Path) -> None:
    store = _store(tmp_path)
    index = Index(store, EMB)
    ids, _ = await index.add(_entries(), ("EVT", 4))
    assert ids == [1, 2, 3, 4] and store.cursor("EVT") == 4
    hits = await index.search("battery voltage")
    assert hits[0].text.startswith("PreArm") and hits[0].stream == "EVT" and hits[0].seq == 1
    assert hits[0].keyword_rank == 1 and hits[0].vector_rank == 1 and hits[0].score > hits[-1].score
    assert {h.entity for h in await index.search("error", entity="drone-1")} == {"drone-1"}
    assert {h.kind for h in await index.search("drone", kinds=["decision"])} == {"decision"}
    timed = await index.search("glitch battery", since=150.0, until=250.0)
    assert [h.seq for h in timed] == [2]
    assert await index.search("battery", entity="nobody") == []
    assert cite(hits[:1]) == [{"source": "edge.dev1.evt.drone-0.statustext", "stream": "EVT", "seq": 1,
                               "id": hits[0].id}]


@pytest.mark.parametrize("body, key", [
    ({"query": ""}, "query"), ({"query": "x" * 1001}, "query"), ({"query": "a", "limit": 0}, "limit"),
    ({"query": "a", "limit": 51}, "limit"), ({"query": "a", "kinds": "log"}, "kinds"),
    ({"query": "a", "since": 5.0, "until": 1.0}, "since"), ({"query": "a", "since": "yesterday"}, "since"),
    ({"query": "a", "since": float("nan")}, "since"), ({"query": "a", "until": 10 ** 400}, "until"),
])
async def test_limits_are_refused_before_any_work(tmp_path: Path, body: dict, key: str) -> None:
    index = Index(_store(tmp_path), EMB)
    with pytest.raises(LanguageError) as err:
        await index.search(body["query"], limit=body.get("limit", 5), kinds=body.get("kinds"),
                           since=body.get("since"), until=body.get("until"))
    assert err.value.fields["key"] == key


def test_fts_query_quotes_words_so_no_syntax_leaks() -> None:
    assert fts_query('NEAR("a" b) OR -c*') == '"near" OR "b" OR "c"'
    assert fts_query("...") is None


async def test_reopen_restores_vectors_and_skips_duplicates(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await Index(store, EMB).add(_entries(), ("EVT", 4))
    store.close()
    again = _store(tmp_path)
    assert again.count() == 4 and again.cursor("EVT") == 4
    ids, _ = await Index(again, EMB).add(_entries()[:2], ("EVT", 2))
    assert ids == [None, None] and again.count() == 4 and again.cursor("EVT") == 4  # never moves back
    hits = await Index(again, EMB).search("gps glitch")
    assert hits[0].seq == 2 and hits[0].similarity is not None and hits[0].similarity > 0.5


def test_an_index_of_another_model_is_refused(tmp_path: Path) -> None:
    _store(tmp_path).close()
    with pytest.raises(LanguageError, match="belongs to model") as err:
        _store(tmp_path, digest="0" * 64)
    assert err.value.reason == "wrong-index"


async def test_documents_are_replaced_when_they_change_and_kept_by_eviction(tmp_path: Path) -> None:
    store = _store(tmp_path)
    index = Index(store, EMB)
    doc = [Entry(text="Manual: the barometer reads pressure", kind="doc", source="docs/x.md#Baro")]
    store.replace_document("docs/x.md", "aa", doc, EMB.embed([d.text for d in doc]))
    assert store.document_digest("docs/x.md") == "aa"
    new = [Entry(text="Manual: the magnetometer reads heading", kind="doc", source="docs/x.md#Mag")]
    assert store.replace_document("docs/x.md", "bb", new, EMB.embed([new[0].text])) == 1
    assert [h.source for h in await index.search("barometer pressure magnetometer")] == ["docs/x.md#Mag"]
    await index.add(_entries(), ("EVT", 4))
    assert store.evict(2) == 3  # the three oldest stream entries; the document stays
    left = {h.source for h in await index.search("manual glitch battery imu hold drone", limit=10)}
    assert left == {"docs/x.md#Mag", "edge.dev1.evt.drone-1.decision"}


async def test_aggregate_gives_top_terms_and_a_mean_vector_per_entity_and_window(tmp_path: Path) -> None:
    store = _store(tmp_path)
    index = Index(store, EMB)
    lines = ["motor 2 overheating", "motor 2 temperature high", "motor 2 overheating again", "landed"]
    await index.add([Entry(text=t, kind="statustext", entity="drone-7", t=10.0 * i, stream="EVT", seq=i + 1)
                     for i, t in enumerate(lines)], ("EVT", 4))
    others = ["motor 1 ok", "motor 3 ok", "motor 4 ok"]  # 'motor' is common: it ranks below 'overheating'
    await index.add([Entry(text=t, kind="statustext", entity="drone-8", t=1.0, stream="EVT", seq=i + 5)
                     for i, t in enumerate(others)], ("EVT", 7))
    agg = await index.terms("drone-7", since=0.0, until=25.0, top=3)
    assert agg["entries"] == 3
    assert agg["terms"][0] == {"term": "overheating", "count": 2, "score": agg["terms"][0]["score"]}
    assert "motor" in [t["term"] for t in agg["terms"]] and "landed" not in [t["term"] for t in agg["terms"]]
    vec = np.array(agg["vector"])
    assert vec.shape == (384,) and abs(np.linalg.norm(vec) - 1.0) < 1e-3
    empty = await index.terms("drone-7", since=1000.0)
    assert empty["entries"] == 0 and empty["vector"] is None and empty["terms"] == []
