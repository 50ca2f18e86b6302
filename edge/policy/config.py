"""The ``[policy]`` section of the device config.

``file`` (a policy file, docs/policy.md; absent = no policy: every message allowed and metered),
``usage_interval`` (seconds between usage records), ``watch_interval`` (seconds between checks
of the file for a change; 0 = no hot reload from the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.config.table import Table

DEFAULT_USAGE_INTERVAL_S = 10.0
DEFAULT_WATCH_INTERVAL_S = 1.0


@dataclass(frozen=True)
class PolicyConfig:
    file: Path | None = None
    usage_interval: float = DEFAULT_USAGE_INTERVAL_S
    watch_interval: float = DEFAULT_WATCH_INTERVAL_S


def read_policy(t: Table) -> PolicyConfig:
    """The ``[policy]`` table (absent: no policy file, default intervals)."""
    file = t.path("file", None)
    usage = t.number("usage_interval", DEFAULT_USAGE_INTERVAL_S, lo=0.1, hi=86400, unit="s")
    watch = t.number("watch_interval", DEFAULT_WATCH_INTERVAL_S, lo=0, hi=3600, unit="s")
    t.finish()
    return PolicyConfig(file, usage, watch)
