"""What the effects pipeline did with a call's own outputs, as the outputs listener is told it
(edge.wasm.effects) and as the recorder writes it (edge.replay.recorder): a full queue and the
hop limit, which the end-to-end tests do not reach."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edge.errors import SandboxError
from edge.replay.recorder import RecorderLayer
from edge.wasm.component import Component
from edge.wasm.effects import Effects
from edge.wasm.manifest import load_manifest
from edge.wasm.protocol import CallResult
from edge.wasm.record import KV_LANE_DROPPED, KV_QUEUED, CallOutputs
from replay_support import ROOT

pytestmark = pytest.mark.timeout(30)
SUBJECT = "edge.demo.evt.fates"


class RecordingHost:
    """A sandbox host that, like the device's, tells a recorder each call's outputs and each
    KV write it carried out (with a revision of its own count)."""

    def __init__(self, recorder: RecorderLayer) -> None:
        self.recorder = recorder
        self.outputs: list[CallOutputs] = []
        self.published: list[tuple[str, bytes]] = []
        self.revision = 0

    def on_call_outputs(self, component: str, outputs: CallOutputs) -> None:
        self.outputs.append(outputs)
        self.recorder.on_outputs(component, outputs)

    async def publish(self, component: str, subject: str, data: bytes, hops: int) -> None:
        self.published.append((subject, data))

    async def kv_put(self, component: str, key: str, value: bytes, hops: int) -> None:
        self.revision += 1
        self.recorder.on_kv_put(component, key, value, self.revision)

    def on_fault(self, component: str, fault: SandboxError) -> None:
        pass

    def on_limit(self, component: str, limit: str, dropped: int) -> None:
        pass


def queued(recorder: RecorderLayer, kind: str) -> list[dict[str, Any]]:
    return [body for k, _, body in recorder._queue if k == kind]


async def test_full_queue_and_hop_limit_are_told_and_recorded(components_dir: Path) -> None:
    manifest = load_manifest(ROOT / "components" / "physics" / "manifest.toml", "demo")
    recorder = RecorderLayer()
    recorder.on_load(manifest, b"\0asm", {})
    host = RecordingHost(recorder)
    effects = Effects(host, lane_bytes=100, max_hops=2)
    assert effects.outputs is host
    comp = Component(manifest=manifest, wasm=b"", info=None, kv={})  # type: ignore[arg-type]
    pubs = [(SUBJECT, bytes([65 + i]) * 60) for i in range(3)]
    puts = [("k", b"1"), ("k", b"2")]
    effects.apply(comp, CallResult(publishes=pubs, kv_puts=puts), 0, export="edge_tick")
    told = host.outputs[-1]
    assert (told.export, list(told.publishes), list(told.kv_puts)) == ("edge_tick", pubs, puts)
    assert told.lane_dropped == 2 and told.kv_fate == [KV_QUEUED, KV_QUEUED]
    assert told.coalesced == [1]  # the second put replaced the first while queued
    # the hop limit: a call handling messages that passed 2 handlers publishes nothing
    effects.apply(comp, CallResult(publishes=pubs[:1]), 2, export="edge_on_message")
    assert host.outputs[-1].hop_limited == 1 and host.outputs[-1].lane_dropped == 0
    # a KV put that does not fit the queue: dropped, and recorded so
    effects.apply(comp, CallResult(kv_puts=[("big", b"x" * 200)]), 0, export="edge_tick")
    assert host.outputs[-1].kv_fate == [KV_LANE_DROPPED]

    task = asyncio.create_task(effects.run())
    try:
        await asyncio.wait_for(effects.join(), 5)
    finally:
        task.cancel()
    assert host.published == pubs[:1]  # the device let one publish out of four
    pub_records = queued(recorder, "pub")
    assert [(r["step"], len(r["pubs"]), r.get("dev")) for r in pub_records] == [
        (1, 3, {"lane_dropped": 2}), (1, 1, {"hop_limited": 1})]
    kv_records = queued(recorder, "kv")
    assert [(r["step"], r["i"], r["key"], r.get("dev"), r.get("rev")) for r in kv_records] == [
        (1, 0, "k", "coalesced", None), (2, 0, "big", "lane_dropped", None),
        (1, 1, "k", None, 1)]
    # a tick's outputs reserve its step: the tick record that follows has the same
    recorder.on_tick_unrecorded("physics", 0.1, 10**6, True)
    assert queued(recorder, "tick")[-1]["step"] == 2


def test_a_first_edge_inits_outputs_follow_its_load_record(components_dir: Path) -> None:
    """edge_init runs before its load is recorded: its outputs are held and written after the
    load record as step 0; those of an edge_init whose load failed (no load record) never."""
    manifest = load_manifest(ROOT / "components" / "physics" / "manifest.toml", "demo")
    recorder = RecorderLayer()
    failed = CallOutputs("edge_init", [(SUBJECT, b"failed")], [("k", b"old")], kv_fate=[KV_QUEUED])
    recorder.on_outputs("physics", failed)
    good = CallOutputs("edge_init", [(SUBJECT, b"good")], [("k", b"new")], kv_fate=[KV_QUEUED])
    recorder.on_outputs("physics", good)
    recorder.on_kv_put("physics", "k", b"new", 5)  # written before the load returned
    assert not recorder._queue
    recorder.on_load(manifest, b"\0asm", {})
    kinds = [(k, body.get("step")) for k, _, body in recorder._queue]
    assert kinds == [("load", 0), ("pub", 0), ("kv", 0)]
    assert queued(recorder, "pub")[0]["pubs"][0][2] == "Z29vZA=="  # b"good"
    assert queued(recorder, "kv")[0]["rev"] == 5 and "_written" not in queued(recorder, "kv")[0]


def _workers() -> list[int]:
    """Sandbox worker processes that are children of this process."""
    import os

    out = []
    for pid in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if pid.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() \
                and b"edge.wasm.worker" in cmd:
            out.append(int(pid))
    return out


async def test_a_replay_that_fails_stops_the_sandbox_it_started(nats_url: str) -> None:
    """The sandbox worker starts while the records are read: a read that fails (no stream)
    and a window with no record stop it again."""
    import nats

    from edge.replay.records import ReplayError
    from edge.replay.replayer import replay
    from edge.replay.source import Window

    nc = await nats.connect(nats_url)
    try:
        before = _workers()
        with pytest.raises(ReplayError, match="no stream NOPE"):
            await replay(nc.jetstream(), "demo", Window(), stream="NOPE")
        js = nc.jetstream()
        await js.add_stream(name="REC", subjects=["edge.demo.rec.>"])
        await js.publish("edge.demo.rec.start", b'{"k":"start","t":1.0,"run":"r"}')
        with pytest.raises(ReplayError, match="no record falls in the window"):
            await replay(js, "demo", Window(t_from=5.0))
        for _ in range(50):
            if _workers() == before:
                break
            await asyncio.sleep(0.05)
        assert _workers() == before
    finally:
        await nc.close()
