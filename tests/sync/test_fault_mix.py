"""A bounded fault mix in the default suite: every kind of fault once, everything counted by
sequence on both sides (tests/rigs/faults.py). The long run (20+ faults) is
``python bench/bench_faults.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.sync.hub.fleet import fleet_status
from rigs.faults import FAULT_KINDS, FaultMix, fault_plan
from rigs.link import sync_rig

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]


async def test_every_fault_kind_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    cfg = {"tele_max_bytes": 120_000, "evt_max_bytes": 4_000_000}
    async with sync_rig(tmp_path, stream_cfg=cfg) as rig:
        await rig.devices["dev1"].supervise()
        mix = FaultMix(rig, rate_hz=100.0, seed=7, outage_msgs=2500)
        res = await mix.run(fault_plan(len(FAULT_KINDS), seed=7))
        evt, tele = res.tally["EVT"], res.tally["TELE"]
        assert evt.device_last == res.published["EVT"] > 0
        assert evt.gaps == [] and evt.duplicates == 0 and evt.out_of_order == 0
        assert evt.hub_seqs == list(range(1, evt.device_last + 1))  # exactly the device's, in order
        assert tele.gaps == [] and tele.duplicates == 0 and tele.out_of_order == 0
        assert res.evicted_tele > 0  # the outage overran TELE's budget: evictions, counted
        assert res.payload_missing["EVT"] == [] and res.payload_duplicates == {"EVT": 0, "TELE": 0}
        [st] = await fleet_status(rig.hub_js)
        assert st.lag_from == "sequences" and st.lag == 0 and st.evt_missing == 0 and st.alarms == []
        assert st.device_seq["EVT"] == st.hub_seq["EVT"] == evt.device_last
