"""Before/after of a change: the same benchmarks run from two source trees, interleaved.

    git worktree add /tmp/before <rev>          # a tree whose bench/ uses bench/harness.py
    python bench/compare_revisions.py /tmp/before [--pairs 3] [--quick] [bench_wasm.py ...]

Each benchmark script runs from the *before* tree and from this tree alternately (before, after,
after, before, ...: the first side rotates), each run with its own ``$EDGE_BENCH_ROWS`` file, so
both trees are measured by their own benchmark code under the same machine load. For every row
both trees report (matched by what/candidate/baseline), it prints the candidate's median per
side, the median of the per-pair ratios after/before (< 1: the change made it faster), and each
tree's own ratio to its in-run baseline (the figure least disturbed by a noisy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
AFTER = HERE.parent
DEFAULT_SCRIPTS = ("bench_wasm.py", "bench_runtime.py", "bench_agents.py", "bench_inference.py",
                   "bench_sync.py", "bench_drivers.py", "bench_perception.py")
RUN_TIMEOUT_S = 1800


def run(tree: Path, script: str, args: list[str]) -> list[dict[str, Any]]:
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as f:
        rows_path = f.name
    env = dict(os.environ, PYTHONPATH=str(tree), EDGE_BENCH_ROWS=rows_path)
    try:
        res = subprocess.run([sys.executable, str(tree / "bench" / script), *args], cwd=tree, env=env,
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        if res.returncode != 0:
            print(f"  {tree.name}/{script} exited {res.returncode}: {res.stderr.strip()[-300:]}", flush=True)
        return [json.loads(line) for line in Path(rows_path).read_text().splitlines() if line.strip()]
    finally:
        os.unlink(rows_path)


def key(row: dict[str, Any]) -> tuple[str, str, str] | None:
    d = row["data"]
    if row["kind"] != "Comparison":
        return None
    return d["what"], d["candidate"], d["baseline"]


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} µs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("before", type=Path, help="the tree to compare against (e.g. a git worktree)")
    ap.add_argument("scripts", nargs="*", default=list(DEFAULT_SCRIPTS))
    ap.add_argument("--pairs", type=int, default=3, help="runs of each tree per script")
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    args = ap.parse_args()
    before = args.before.resolve()
    extra = ["--quick"] if args.quick else []
    print("| benchmark row | before (median) | after (median) | after/before, median of pairs | "
          "vs baseline before → after | script |")
    print("|---|---|---|---|---|---|")
    for script in args.scripts:
        samples: dict[tuple[str, str, str], tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        for i in range(args.pairs):
            order = [(before, 0), (AFTER, 1)] if i % 2 == 0 else [(AFTER, 1), (before, 0)]
            for tree, side in order:
                for row in run(tree, script, extra):
                    k = key(row)
                    if k is not None:
                        samples.setdefault(k, ([], []))[side].append(row["data"])
        for (what, cand, base), (old, new) in samples.items():
            n = min(len(old), len(new))
            if n == 0:
                continue
            pair = [b["candidate_median_s"] / a["candidate_median_s"] for a, b in zip(old[:n], new[:n])]
            vs_old = statistics.median(r["ratio_median"] for r in old)
            vs_new = statistics.median(r["ratio_median"] for r in new)
            print(f"| {what}: {cand} (vs {base}) | {fmt_s(statistics.median(r['candidate_median_s'] for r in old))} "
                  f"| {fmt_s(statistics.median(r['candidate_median_s'] for r in new))} "
                  f"| {statistics.median(pair):.2f}× ({min(pair):.2f}–{max(pair):.2f}, {n} pairs) "
                  f"| {vs_old:.2f}× → {vs_new:.2f}× | `bench/{script}` |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
