"""Run every benchmark in bench/ one after the other (``make bench``) and print one summary table.

``--quick`` passes through to every script (each accepts it). ``bench_fleet.py`` (a simulated
fleet of 50 device servers, docs/scale.md) runs only with ``--fleet`` (``make bench-fleet`` runs it alone). Each script prints its own output
and appends its rows (see ``harness.report``) to a temporary file named by ``$EDGE_BENCH_ROWS``;
at the end the rows of all scripts are printed as one markdown table, ready for the README.
A failing script is named at the end and makes the exit status 1; the others still run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROWS_ENV, table

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = []
    t0 = time.monotonic()
    args = [a for a in sys.argv[1:] if a != "--fleet"]
    skip = set() if "--fleet" in sys.argv[1:] else {"bench_fleet.py"}
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        rows_file.touch()
        env = dict(os.environ, **{ROWS_ENV: str(rows_file)})
        for script in sorted(HERE.glob("bench_*.py")):
            if script.name in skip:
                continue
            print(f"\n=== {script.name} ===", flush=True)
            res = subprocess.run([sys.executable, str(script), *args], env=env)
            if res.returncode != 0:
                failed.append(f"{script.name} (exit {res.returncode})")
        rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    mode = "quick" if "--quick" in args else "full"
    print(f"\n=== summary: {len(rows)} rows, {mode} run, {time.monotonic() - t0:.0f} s, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]} ===")
    print("ratio = candidate time / baseline time per unit of work, median of per-round ratios "
          "(candidate and baseline interleaved in the same loop); below 1 the candidate is faster.\n")
    print(table(rows))
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
