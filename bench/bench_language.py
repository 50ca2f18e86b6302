"""The language system: ``python bench/bench_language.py [--quick]``.

* embedding time per sentence (p50, one thread): int8 MiniLM against the lexical fallback,
  interleaved over the same log-line-sized texts;
* indexing throughput: entries a second through embed + SQLite commit (batches of 64);
* query latency p50/p99 of a hybrid search (MiniLM query embedding + FTS5 + int8 brute-force
  vectors + merge) at 10,000 and 100,000 entries, against FTS5 keyword search alone in the same
  rounds; and the vector top-k alone, int8 matrix against a float32 matrix;
* index size on disk at 10,000 and 100,000 entries;
* RSS the extra adds: a fresh interpreter loading the MiniLM embedder against one loading the
  lexical fallback (both import numpy and edge.language first);
* recall@5 on the evaluation set (tests/language/eval), MiniLM and lexical.

The large indexes hold synthetic log-like lines with random unit vectors (the latency of a
brute-force scan and of FTS5 does not depend on what the vectors mean); recall uses real text.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import Absolute, Comparison, Row, interleave, pct, report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "language" / "eval"))

from edge.language.embedder import LexicalEmbedder, load_embedder  # noqa: E402
from edge.language.search import Filters, Index  # noqa: E402
from edge.language.store import Entry, IndexStore  # noqa: E402

SENTENCES = [
    "PreArm: Battery below minimum arming voltage", "GPS 1: lost fix, 3 satellites",
    "driver imu (mpu6050): I2C read failed; restarting in 2.0 s", "follow-drone-0 decided hold: target lost",
    "command velocity to drone-0: ok", "Radio failsafe on: RC signal lost, switching to RTL",
    "Replaced propeller 2 after the hard landing in the orchard", "leaf link to the hub is down",
]
QUERIES = ["why did the drone return home", "battery too low to arm", "sensor bus failure",
           "lost satellite positioning", "hub connection failed", "who changed the propellers"]
COMMAND = "bench/bench_language.py"
MIB = 2**20


def vocabulary() -> list[str]:
    """Real words, most frequent first: the docs' vocabulary (thousands of words, Zipf-like)."""
    from collections import Counter

    from edge.language.documents import INSTALL_ROOT, files
    from edge.language.embedder import words

    counts: Counter[str] = Counter()
    for path in files([INSTALL_ROOT / "docs", INSTALL_ROOT / "README.md"]):
        counts.update(words(path.read_text(errors="replace")))
    return [w for w, _ in counts.most_common()]


def synthetic(n: int, seed: int = 7) -> list[Entry]:
    """Log-like lines of 5-14 words drawn from the docs' vocabulary with its own frequencies."""
    rnd = random.Random(seed)
    vocab = vocabulary()
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]  # Zipf, as word use is
    out = []
    for i in range(n):
        text = " ".join(rnd.choices(vocab, weights, k=rnd.randint(5, 14)))
        out.append(Entry(text=text, kind=rnd.choice(("statustext", "log", "decision", "command")),
                         entity=f"drone-{rnd.randint(0, 9)}", source="edge.bench.evt", t=float(i),
                         stream="EVT", seq=i + 1))
    return out


def random_unit(n: int, dim: int = 384, seed: int = 3) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def embedding_rows(minilm: Any, rounds: int) -> list[Row]:
    lexical = LexicalEmbedder()
    texts = iter(range(10**9))

    def one(emb: Any) -> None:
        i = next(texts)
        emb.embed([f"{SENTENCES[i % len(SENTENCES)]} ({i})"])

    samples = interleave({"minilm": lambda: one(minilm), "lexical": lambda: one(lexical)},
                         rounds=rounds, inner=10, warmup=2)
    return [Comparison.of("embedding one sentence (log-line size), one thread", samples, "minilm", "lexical",
                          op="sentence", note="int8 MiniLM vs the lexical fallback")]


async def indexing_rows(minilm: Any, tmp: Path, n: int) -> list[Row]:
    store = IndexStore(tmp / "throughput", dim=384, digest=minilm.digest, model="minilm")
    store.open()
    index = Index(store, minilm)
    entries = [Entry(text=f"{SENTENCES[i % len(SENTENCES)]} (#{i})", kind="log", entity="drone-1",
                     source="bench", stream="EVT", seq=i + 1) for i in range(n)]
    per_batch = []
    for start in range(0, n, 64):
        t0 = time.perf_counter()
        batch = entries[start:start + 64]
        await index.add(batch, ("EVT", start + len(batch)))
        per_batch.append((time.perf_counter() - t0) / len(batch))
    store.close()
    return [Absolute.of("indexing (MiniLM embed + SQLite commit), batches of 64 log lines", per_batch, op="entry")]


def build_store(tmp: Path, n: int) -> IndexStore:
    store = IndexStore(tmp / f"n{n}", dim=384, digest="bench", model="bench")
    store.open()
    entries = synthetic(n)
    vecs = random_unit(n)
    for start in range(0, n, 5000):
        store.add(entries[start:start + 5000], vecs[start:start + 5000], ("EVT", start + 5000))
    return store


def query_row(minilm: Any, store: IndexStore, n: int, rounds: int) -> Row:
    index = Index(store, minilm)
    qi = iter(range(10**9))
    hybrid_lat: list[float] = []
    keyword_lat: list[float] = []

    def hybrid() -> None:
        q = QUERIES[next(qi) % len(QUERIES)]
        t0 = time.perf_counter()
        vec = minilm.embed([q])[0]
        index._search(q, vec, Filters(), 5)
        hybrid_lat.append(time.perf_counter() - t0)

    def keyword() -> None:
        q = QUERIES[next(qi) % len(QUERIES)]
        t0 = time.perf_counter()
        store.rows([i for i, _ in store.keyword(q, Filters(), 5)])
        keyword_lat.append(time.perf_counter() - t0)

    samples = interleave({"hybrid": hybrid, "keyword": keyword}, rounds=rounds, inner=5, warmup=1)
    return Comparison.of(f"hybrid query (MiniLM query + FTS5 + int8 vectors), {n:,} entries", samples,
                         "hybrid", "keyword", op="query",
                         note=f"hybrid p50 {pct(hybrid_lat, 50) * 1e3:.1f} ms, p99 {pct(hybrid_lat, 99) * 1e3:.1f} ms;"
                              f" keyword-only p50 {pct(keyword_lat, 50) * 1e3:.1f} ms")


def vector_row(store: IndexStore, n: int, rounds: int) -> Row:
    q = random_unit(1, seed=11)[0]
    f32 = random_unit(n)

    def int8_topk() -> None:
        store.vector(q, Filters(), 50)

    def f32_topk() -> None:
        sims = f32 @ q
        top = np.argpartition(-sims, 49)[:50]
        top[np.argsort(-sims[top])]

    vs = interleave({"int8": int8_topk, "float32": f32_topk}, rounds=rounds, inner=5, warmup=1)
    return Comparison.of(f"vector top-50 brute force, {n:,} entries", vs, "int8", "float32", op="query",
                         note=f"int8 matrix {n * 384 / MIB:.1f} MiB vs float32 {n * 384 * 4 / MIB:.1f} MiB")


async def query_rows(minilm: Any, tmp: Path, sizes: list[int], rounds: int) -> list[Row]:
    rows: list[Row] = []
    for n in sizes:
        store = build_store(tmp, n)
        rows.append(query_row(minilm, store, n, rounds))
        rows.append(vector_row(store, n, rounds))
        size = store.size_bytes()
        rows.append(Absolute(f"index size on disk, {n:,} entries",
                             f"{size / MIB:.1f} MiB ({size / n:.0f} bytes an entry)", "SQLite: text, FTS5, int8 vectors"))
        store.close()
    return rows


RSS_PROBE = """
import sys, psutil
sys.path.insert(0, {root!r})
import numpy
from edge.language.embedder import load_embedder
before = psutil.Process().memory_info().rss
emb = load_embedder({kind!r}).embedder
emb.embed(["PreArm: Battery below minimum arming voltage"])
print(psutil.Process().memory_info().rss - before)
"""


def rss_rows(rounds: int) -> list[Row]:
    deltas: dict[str, list[float]] = {"minilm": [], "lexical": []}
    for _ in range(rounds):
        for kind in deltas:
            out = subprocess.run([sys.executable, "-c", RSS_PROBE.format(root=str(ROOT), kind=kind)],
                                 capture_output=True, text=True, check=True)
            deltas[kind].append(int(out.stdout.strip()) / MIB)
    m, lx = statistics.median(deltas["minilm"]), statistics.median(deltas["lexical"])
    return [Absolute("RSS the language extra adds (MiniLM loaded, one sentence embedded)",
                     f"+{m:.1f} MiB (lexical fallback +{lx:.1f} MiB), median of {rounds}",
                     "fresh interpreter each; numpy and edge.language imported before")]


async def recall_rows(tmp: Path) -> list[Row]:
    import evalset

    out = []
    for kind in ("minilm", "lexical"):
        emb = load_embedder(kind).embedder
        store = IndexStore(tmp / f"eval-{kind}", dim=emb.dim, digest=emb.digest, model=emb.name)
        store.open()
        index = Index(store, emb)
        t0 = time.perf_counter()
        n = await evalset.build(index)
        built = time.perf_counter() - t0
        recall, missed = await evalset.recall(index)
        out.append(Absolute(f"retrieval recall@5, {len(evalset.queries())} queries ({kind})",
                            f"{recall:.3f} ({len(missed)} missed)",
                            f"{n} entries: docs + recorded demo window + incidents; built in {built:.0f} s"))
        store.close()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-recall", action="store_true", help="skip the evaluation set (the slowest part)")
    args = ap.parse_args()
    rounds = 3 if args.quick else 15
    minilm = load_embedder("minilm").embedder
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-lang-") as tmp:
        rows += embedding_rows(minilm, rounds)
        rows += await indexing_rows(minilm, Path(tmp), 192 if args.quick else 640)
        rows += await query_rows(minilm, Path(tmp), [10_000, 100_000], rounds)
        rows += rss_rows(1 if args.quick else 3)
        if not args.no_recall:
            rows += await recall_rows(Path(tmp))
    report(rows, command=COMMAND)


if __name__ == "__main__":
    asyncio.run(main())
