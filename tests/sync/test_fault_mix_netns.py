"""The fault mix with the device in a network namespace and real dangling link cuts (no FIN, no
RST: tests/rigs/netns.py), one of them with a hub kill -9 while the link dangles, plus the usual
faults; the hub runs its repairer and source watch as `edge cloud run` does. Every event is
counted by sequence on both sides: none lost, none doubled. Needs root (CI runs as root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.sync.hub.fleet import fleet_status
from rigs.faults import FaultMix
from rigs.netns import NetnsSyncRig, netns_available

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow,
              pytest.mark.skipif(netns_available() is not None, reason=str(netns_available()))]


async def test_dangling_cuts_and_hub_kills_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    rig = NetnsSyncRig(tmp_path, stream_cfg={"tele_max_bytes": 120_000, "evt_max_bytes": 4_000_000})
    await rig.start()
    try:
        await rig.devices["dev1"].supervise()
        mix = FaultMix(rig, rate_hz=100.0, seed=3, dangle_s=(3.0, 6.0), dangle_kill_p=1.0, keepers=True)
        res = await mix.run(["dangle", "hub_kill", "dangle", "device_kill", "hub_stop"])
        evt, tele = res.tally["EVT"], res.tally["TELE"]
        assert evt.device_last == res.published["EVT"] > 0
        assert evt.gaps == [] and evt.duplicates == 0
        assert sorted(evt.hub_seqs) == list(range(1, evt.device_last + 1))
        assert tele.gaps == [] and tele.duplicates == 0
        assert res.payload_missing["EVT"] == [] and res.payload_duplicates == {"EVT": 0, "TELE": 0}
        assert all(c < 2.0 for c in res.catch_up_s), res.catch_up_s
        [st] = await fleet_status(rig.hub_js)
        assert st.lag == 0 and st.evt_missing == 0 and st.alarms == []
    finally:
        await rig.close()
