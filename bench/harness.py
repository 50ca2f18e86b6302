"""Interleaved benchmark rounds and the one table row format every benchmark prints.

The rule (README, Performance): a figure is compared against its baseline *in the same loop*,
A, B, A, B ..., and the quoted ratio is the median of per-round ratios. Run alone, the esper
baseline took 1.0 ms a tick here and 3.8 ms inside the full bench run; timing the two sides in
separate phases makes a ratio mostly a measure of what else the machine was doing.

Key components
- :func:`interleave` / :func:`ainterleave`: run every side once per round for ``rounds`` rounds
  (after ``warmup`` untimed rounds), the starting side rotating each round so no side is always
  first; returns the per-round samples of each side. A side is a callable doing one unit of work
  (``inner`` times per round, the round's sample is the mean); with ``measure="value"`` the
  callable returns its own measurement (seconds, e.g. the p50 latency of its burst) instead.
- :class:`Comparison`: a candidate against a baseline from the *same* rounds: per-side medians,
  the median of per-round ratios candidate/baseline with min and max.
- :class:`Absolute`: a figure with no natural baseline, labelled as such.
- :func:`report`: prints the rows as a markdown table and, when ``$EDGE_BENCH_ROWS`` names a file
  (``bench/run_all.py`` sets it), appends them there as JSON lines for the final summary table.

Example::

    samples = interleave({"edge": tick, "esper": esper_tick}, rounds=30)
    row = Comparison.of("physics tick, 10k entities", samples, "edge", "esper", ops=10_000,
                        op="update")
    report([row], command="bench/bench_wasm.py")

Ratios are always candidate time / baseline time (per unit of work): below 1 the candidate is
faster, above 1 slower. Samples are seconds per unit (a tick, a message, a call).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

#: environment variable naming the JSON-lines file rows are appended to (set by run_all.py)
ROWS_ENV = "EDGE_BENCH_ROWS"

Measure = Literal["time", "value"]
SyncSide = Callable[[], Any]
AsyncSide = Callable[[], Awaitable[Any] | Any]


def _order(names: Sequence[str], r: int) -> list[str]:
    k = r % len(names)
    return list(names[k:]) + list(names[:k])


def _check(sides: Mapping[str, Any], rounds: int, inner: int) -> None:
    if not sides:
        raise ValueError("interleave() needs at least one side")
    if rounds < 1 or inner < 1:
        raise ValueError("rounds and inner must be >= 1")


def interleave(sides: Mapping[str, SyncSide], *, rounds: int, warmup: int = 1, inner: int = 1,
               measure: Measure = "time") -> dict[str, list[float]]:
    """Per-round samples (seconds per unit) of each synchronous side, interleaved."""
    _check(sides, rounds, inner)
    names = list(sides)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(-warmup, rounds):
        for name in _order(names, r):
            fn = sides[name]
            if measure == "value":
                vals = [float(fn()) for _ in range(inner)]
                sample = sum(vals) / inner
            else:
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                sample = (time.perf_counter() - t0) / inner
            if r >= 0:
                out[name].append(sample)
    return out


async def ainterleave(sides: Mapping[str, AsyncSide], *, rounds: int, warmup: int = 1,
                      inner: int = 1, measure: Measure = "time") -> dict[str, list[float]]:
    """Like :func:`interleave`; a side may be a coroutine function or a plain function."""
    _check(sides, rounds, inner)
    names = list(sides)
    out: dict[str, list[float]] = {name: [] for name in names}

    async def call(fn: AsyncSide) -> Any:
        res = fn()
        return await res if inspect.isawaitable(res) else res

    for r in range(-warmup, rounds):
        for name in _order(names, r):
            fn = sides[name]
            if measure == "value":
                vals = [float(await call(fn)) for _ in range(inner)]
                sample = sum(vals) / inner
            else:
                t0 = time.perf_counter()
                for _ in range(inner):
                    await call(fn)
                sample = (time.perf_counter() - t0) / inner
            if r >= 0:
                out[name].append(sample)
            await asyncio.sleep(0)
    return out


# -- formatting -------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    """0.000412 -> '412 µs', 0.0021 -> '2.10 ms', 1.5 -> '1.50 s'."""
    a = abs(seconds)
    if a >= 1.0:
        return f"{seconds:.2f} s"
    if a >= 1e-3:
        return f"{seconds * 1e3:.3g} ms" if a < 0.1 else f"{seconds * 1e3:.0f} ms"
    if a >= 1e-6:
        return f"{seconds * 1e6:.3g} µs"
    return f"{seconds * 1e9:.3g} ns"


def fmt_rate(per_s: float, unit: str) -> str:
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f} M {unit}/s"
    if per_s >= 1e4:
        return f"{per_s / 1e3:.1f} k {unit}/s"
    return f"{per_s:,.0f} {unit}/s"


def _side(median_s: float, ops: int, op: str) -> str:
    """A per-unit median, with the rate of ``op`` when a unit is ``ops`` of them."""
    text = fmt_time(median_s)
    if ops > 1 or op:
        text += f" ({fmt_rate(ops / median_s, op or 'op')})"
    return text


@dataclass(frozen=True)
class Comparison:
    """A candidate against a baseline measured in the same interleaved rounds."""

    what: str
    candidate: str
    baseline: str
    candidate_median_s: float
    baseline_median_s: float
    ratio_median: float
    ratio_min: float
    ratio_max: float
    rounds: int
    ops: int = 1
    op: str = ""
    note: str = ""

    @classmethod
    def of(cls, what: str, samples: Mapping[str, Sequence[float]], candidate: str, baseline: str,
           *, ops: int = 1, op: str = "", note: str = "") -> Comparison:
        """``samples`` from one :func:`interleave` call; ``ops`` units of ``op`` per sample."""
        c, b = samples[candidate], samples[baseline]
        if len(c) != len(b) or not c:
            raise ValueError(f"{candidate!r} and {baseline!r} need the same, non-zero number of "
                             "rounds: take both from one interleave() call")
        ratios = [x / y for x, y in zip(c, b, strict=True)]
        return cls(what, candidate, baseline, statistics.median(c), statistics.median(b),
                   statistics.median(ratios), min(ratios), max(ratios), len(c), ops, op, note)

    def line(self) -> str:
        """One line for a script's own output."""
        return (f"{self.what}: {self.candidate} {_side(self.candidate_median_s, self.ops, self.op)}"
                f" vs {self.baseline} {_side(self.baseline_median_s, self.ops, self.op)}: ratio "
                f"{self.ratio_median:.2f}x (min {self.ratio_min:.2f}, max {self.ratio_max:.2f}, "
                f"{self.rounds} rounds){'; ' + self.note if self.note else ''}")

    def cells(self) -> list[str]:
        return [self.what,
                f"{self.candidate}: {_side(self.candidate_median_s, self.ops, self.op)}",
                f"{self.baseline}: {_side(self.baseline_median_s, self.ops, self.op)}",
                f"{self.ratio_median:.2f}× ({self.ratio_min:.2f}–{self.ratio_max:.2f}, "
                f"{self.rounds} rounds)" + (f"; {self.note}" if self.note else "")]


@dataclass(frozen=True)
class Absolute:
    """A figure with no natural baseline: reported as is, and labelled so in the table."""

    what: str
    value: str
    note: str = ""

    @classmethod
    def of(cls, what: str, samples: Sequence[float], *, ops: int = 1, op: str = "",
           note: str = "") -> Absolute:
        """Median of per-round samples (seconds per unit), with the spread."""
        med = statistics.median(samples)
        value = (f"{_side(med, ops, op)}, median of {len(samples)} "
                 f"(min {fmt_time(min(samples))}, max {fmt_time(max(samples))})")
        return cls(what, value, note)

    def line(self) -> str:
        return f"{self.what}: {self.value} [absolute]{'; ' + self.note if self.note else ''}"

    def cells(self) -> list[str]:
        return [self.what, self.value, "— (absolute)", self.note or "—"]


Row = Comparison | Absolute
HEADER = ["what", "result (median)", "baseline (same rounds)", "ratio median (min–max)",
          "command"]


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of row dicts (``cells`` and ``command``), e.g. from the rows file."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        cells = [c.replace("|", "\\|") for c in r["cells"]] + [f"`{r['command']}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: Sequence[Row], *, command: str) -> None:
    """Print each row's line and the markdown table; append the rows to ``$EDGE_BENCH_ROWS``."""
    dicts = [{"kind": type(r).__name__, "cells": r.cells(), "command": command, "data": asdict(r)}
             for r in rows]
    print("\nsummary (ratio = candidate time / baseline time per unit; <1 is faster):")
    for r in rows:
        print("  " + r.line())
    print()
    print(table(dicts), flush=True)
    path = os.environ.get(ROWS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            for d in dicts:
                f.write(json.dumps(d) + "\n")


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank on the sorted values."""
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]
