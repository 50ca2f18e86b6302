"""The hub as a three-node JetStream cluster: replicated (R3) streams, devices' leaf remotes list
every node; losing the node a device is linked to during sync loses nothing and commands keep
flowing."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from edge.sync.device.commands import CommandReceiver
from edge.sync.hub.fleet import fleet_status, send_command
from rigs.cluster import ClusterRig
from rigs.faults import FaultMix

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


async def test_node_loss_during_sync_loses_nothing_and_commands_keep_flowing(tmp_path: Path) -> None:
    rig = ClusterRig(tmp_path)
    try:
        await rig.start()
        info = await rig.hub_js.stream_info("EVT_dev1")
        assert info.config.num_replicas == 3 and info.cluster is not None and len(info.cluster.replicas or []) == 2
        first = await rig.linked_node()
        assert first is not None
        mix = FaultMix(rig, rate_hz=100.0, seed=3)  # type: ignore[arg-type]
        res = await mix.run(["node_kill", "device_kill", "node_kill"], settle_s=60)
        assert rig.node_kills == 2
        evt, tele = res.tally["EVT"], res.tally["TELE"]
        assert evt.device_last == res.published["EVT"] > 0
        assert evt.hub_seqs == list(range(1, evt.device_last + 1)), (evt.gaps[:10], evt.duplicates)
        assert tele.gaps == [] and tele.duplicates == 0
        assert res.payload_missing["EVT"] == [] and res.payload_duplicates == {"EVT": 0, "TELE": 0}
        # commands keep flowing after the node losses, through whichever node the device is on
        rx = CommandReceiver(rig.dev_js(), "dev1")
        await send_command(rig.hub_js, "dev1", "pod.arm", b"{}", msg_id="after-loss")
        cmd = await rx.next(timeout=20)
        assert cmd is not None and cmd.command_id == "after-loss"
        await rx.reply(cmd, b"ok")
        # the device fails over: kill its node once more, a command still arrives
        await rig.kill_hub_node(random.Random(1), down_s=5.0)
        await send_command(rig.hub_js, "dev1", "pod.land", b"{}", msg_id="during-loss")
        cmd = await rx.next(timeout=20)
        assert cmd is not None and cmd.command_id == "during-loss"
        await rx.close()
        await asyncio.sleep(0.5)
        # the node just killed rejoins and the cluster's meta group may still be electing its
        # leader: stream listings time out meanwhile (a clear error), then answer
        for attempt in range(6):
            try:
                [st] = await fleet_status(rig.hub_js)
                break
            except TimeoutError:
                if attempt == 5:
                    raise
                await asyncio.sleep(2.0)
        assert st.evt_missing == 0 and st.alarms == []
    finally:
        await rig.close()


async def test_cloud_run_nodes_3_is_a_replicated_cluster(tmp_path: Path) -> None:
    import json

    import nats

    from rigs.nats import free_port_run
    from edge.sync.hub.dev import DevHub

    base = free_port_run(9)  # the nodes' client, leaf and cluster ports count up from their bases
    hub = DevHub(tmp_path / "hub", devices=["c1"], nodes=3, port=base, leaf_port=base + 3,
                 cluster_port=base + 6)
    await hub.start()
    try:
        saved = json.loads(hub.hub_file.read_text())
        assert len(saved["client_urls"]) == 3 and len(saved["leaf_urls"]) == 3
        table = hub.device_table("c1")
        assert table.count("nats-leaf://") == 3 and "urls = [" in table
        nc = await nats.connect(servers=saved["client_urls"])
        try:
            info = await nc.jetstream(timeout=10).stream_info("CMD_c1")
            assert info.config.num_replicas == 3 and info.cluster is not None
            assert {info.cluster.leader, *[r.name for r in info.cluster.replicas or []]} == {"hub-1", "hub-2", "hub-3"}
        finally:
            await nc.close()
    finally:
        await hub.stop()
