"""The ``[ota]`` config table -> :class:`OtaConfig` (absent table: no updates).

::

    [ota]
    root = "fleet-root.json"   # the fleet's trusted root metadata (relative to the config file)
    hub_domain = "hub"         # JetStream domain of the hub's store ("" = the device's own server)
    poll_s = 10.0              # how often the device reads its desired state
    probation_s = 60.0         # how long a new version runs before it is committed
    tick_budget_ms = 0.0       # a tick slower than this on probation rolls back (0 = no budget)
    model_latency_ms = 0.0     # a new model's median inference slower than this on probation rolls back (0 = none)
    max_boots = 3              # restarts during one probation before it is rolled back
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.config.table import Table

DEFAULT_PROBATION_S = 60.0
DEFAULT_POLL_S = 10.0
DEFAULT_MAX_BOOTS = 3
DESIRED_BUCKET = "edge-ota-desired"  # hub KV: key = device id -> desired state JSON


@dataclass(frozen=True)
class OtaConfig:
    root: Path | None = None
    hub_domain: str = "hub"
    poll_s: float = DEFAULT_POLL_S
    probation_s: float = DEFAULT_PROBATION_S
    tick_budget_ms: float = 0.0
    model_latency_ms: float = 0.0
    max_boots: int = DEFAULT_MAX_BOOTS
    bucket: str = "edge-ota"
    desired_bucket: str = DESIRED_BUCKET


def read_ota(t: Table) -> OtaConfig | None:
    if not t.data:
        return None
    root = t.path("root", None)  # read when the layer starts (a missing file is reported there)
    cfg = OtaConfig(
        root=root,
        hub_domain=t.text("hub_domain", "hub"),
        poll_s=t.number("poll_s", DEFAULT_POLL_S, lo=0.05, hi=86400, unit="s"),
        probation_s=t.number("probation_s", DEFAULT_PROBATION_S, lo=0.0, hi=86400, unit="s"),
        tick_budget_ms=t.number("tick_budget_ms", 0.0, lo=0.0, unit="ms"),
        model_latency_ms=t.number("model_latency_ms", 0.0, lo=0.0, hi=3_600_000.0, unit="ms"),
        max_boots=t.integer("max_boots", DEFAULT_MAX_BOOTS, lo=1, hi=100),
    )
    t.finish()
    return cfg
