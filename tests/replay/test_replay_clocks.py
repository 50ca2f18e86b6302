"""Clock reads inside edge_init and edge_on_message: recorded with the load and the message
batches, fed back in a replay, and a divergence where a recorded value is altered."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from edge.replay.records import ReplayError
from edge.replay.replayer import Replayer
from edge.replay.source import Records, Window
from edge.runtime import Runtime
from replay_support import DEVICE, ROOT, all_records, build_stamp, fleet_config

MESSAGES = 12


async def _record_stamp(tmp_path: Path, nats_url: str, client: Client) -> tuple[Records, float]:
    """Run the demo fleet with the stamp component, send it MESSAGES messages, return the
    records and the time before its load."""
    cfg = fleet_config(tmp_path / "dev", nats_url)
    manifest = build_stamp(tmp_path / "stamp")
    replies: list[bytes] = []
    async def on_reply(msg: Msg) -> None:
        replies.append(msg.data)

    sub = await client.subscribe(f"edge.{DEVICE}.evt.stamp", cb=on_reply)
    rt = Runtime(cfg)
    await rt.start()
    try:
        t0 = time.time()
        await rt.load_component(str(manifest))
        await asyncio.sleep(0.5)  # its subscription reaches the server
        for i in range(MESSAGES):
            await client.publish(f"edge.{DEVICE}.cmd.stamp", b"x" * (i + 1))
            await client.flush()
            await asyncio.sleep(0.03)
        for _ in range(100):
            if len(replies) >= MESSAGES:
                break
            await asyncio.sleep(0.05)
    finally:
        await rt.stop()
        await sub.unsubscribe()
    assert len(replies) == MESSAGES
    born = {r.split()[0] for r in replies}
    assert len(born) == 1  # edge_init's read, kept in memory
    return await all_records(client.jetstream()), t0


def _of(records: Records, kind: str, component: str = "stamp") -> list[tuple[int, dict[str, Any]]]:
    return [(s, r) for s, r in records.items if r["k"] == kind and r.get("c") == component]


async def test_init_and_message_clock_reads_are_recorded_and_replayed(
        tmp_path: Path, nats_url: str, js_nc: Client) -> None:
    records, t0 = await _record_stamp(tmp_path, nats_url, js_nc)
    (load_seq, load), = [(s, r) for s, r in _of(records, "load") if not r.get("checkpoint")]
    assert [k for k, _ in load["clock"]] == [0]  # one clock_ms read in edge_init
    assert abs(load["clock"][0][1] / 1000 - load["t"]) < 5.0
    msgs = _of(records, "msg")
    assert sum(len(r["msgs"]) for _, r in msgs) == MESSAGES
    for _, r in msgs:  # one clock_ms read per message, in the batch's record
        assert [k for k, _ in r["clock"]] == [0] * len(r["msgs"])
    (_, born), = _of(records, "kv")
    assert born["key"] == "born" and isinstance(born.get("rev"), int)

    window = Window(t0)
    report = await Replayer(DEVICE, records, window, systems=["stamp"]).run()
    assert report.identical, report.render()
    stamp = report.components["stamp"]
    assert stamp.reads_clock and stamp.messages == len(msgs)
    assert stamp.publishes == MESSAGES and stamp.kv_puts == 1

    # an altered clock value of one message batch: that batch's publish diverges, and only it
    seq, target = msgs[len(msgs) // 2]
    altered = copy.deepcopy(records)
    for s, r in altered.items:
        if s == seq and r["k"] == "msg" and r["step"] == target["step"]:
            r["clock"][0][1] += 5000
    report2 = await Replayer(DEVICE, altered, window, systems=["stamp"]).run()
    first = report2.first
    assert first is not None, report2.render()
    assert (first.what, first.step) == ("publish", target["step"])
    now = int(str(first.recorded).split("now=")[1].split()[0])
    assert str(first.replayed).split("now=")[1].startswith(str(now + 5000))
    assert report2.components["stamp"].publishes_differing == 1

    # an altered clock value of edge_init: the KV write and every reply derived from it differ
    init = copy.deepcopy(records)
    for s, r in init.items:
        if s == load_seq and r["k"] == "load":
            r["clock"][0][1] += 1
    report3 = await Replayer(DEVICE, init, window, systems=["stamp"]).run()
    first = report3.first
    assert first is not None and first.what == "kv", report3.render()
    assert report3.components["stamp"].publishes_differing == MESSAGES

    # a batch recorded with fewer reads than the component makes: a clock divergence there
    short = copy.deepcopy(records)
    for s, r in short.items:
        if s == seq and r["k"] == "msg" and r["step"] == target["step"]:
            r["clock"] = []
    report4 = await Replayer(DEVICE, short, window, systems=["stamp"]).run()
    first = report4.first
    assert first is not None and (first.what, first.seq) == ("clock", seq), report4.render()
    assert first.context["call"] == "edge_on_message"
    assert first.replayed == [(0, 0)]  # a read past the recorded ones answers 0

    # and one for edge_init: the load's divergence, at the load
    no_init = copy.deepcopy(records)
    for s, r in no_init.items:
        if s == load_seq and r["k"] == "load":
            r["clock"] = []
    report5 = await Replayer(DEVICE, no_init, window, systems=["stamp"]).run()
    first = report5.first
    assert first is not None and (first.what, first.seq) == ("clock", load_seq)
    assert first.context["call"] == "edge_init"

    # a malformed clock field of a message batch stops the replay with its stream sequence
    bad = copy.deepcopy(records)
    for s, r in bad.items:
        if s == seq and r["k"] == "msg":
            r["clock"] = [["x"]]
    with pytest.raises(ReplayError, match=f"msg record at stream seq {seq}.*malformed clock"):
        await Replayer(DEVICE, bad, window, systems=["stamp"]).run()

    # a batch written without its reads (its component was unloaded first) stops it too
    lost = copy.deepcopy(records)
    for s, r in lost.items:
        if s == seq and r["k"] == "msg":
            r["clock_lost"] = True
    with pytest.raises(ReplayError, match=f"stream seq {seq}.*without its clock reads"):
        await Replayer(DEVICE, lost, window, systems=["stamp"]).run()

    # a batch whose reads were not kept stops the replay with its stream sequence
    cut = copy.deepcopy(records)
    for s, r in cut.items:
        if s == seq and r["k"] == "msg":
            r["clock_cut"] = 3
    with pytest.raises(ReplayError, match=f"stream seq {seq}.*read the clock 3 times more"):
        await Replayer(DEVICE, cut, window, systems=["stamp"]).run()


ALLOW_ALL = '[[rule]]\nname = "all"\neffect = "allow"\nprincipal = "*"\naction = "*"\n'


async def test_policy_in_use_and_kv_revisions_are_recorded_and_reported(
        tmp_path: Path, nats_url: str, js_nc: Client) -> None:
    from edge.policy.config import PolicyConfig

    policy = tmp_path / "policy.toml"
    policy.write_text(ALLOW_ALL)
    cfg = fleet_config(tmp_path / "dev", nats_url)
    cfg.policy = PolicyConfig(file=policy, watch_interval=0)
    manifest = build_stamp(tmp_path / "stamp")
    rt = Runtime(cfg)
    await rt.start()
    try:
        await rt.load_component(str(manifest))  # edge_init writes "born"
        await asyncio.sleep(0.3)
        await rt.unload_component("stamp")
        t0 = time.time()
        await rt.load_component(str(manifest))  # loaded with "born" at its revision
        await asyncio.sleep(0.3)
        policy.write_text(ALLOW_ALL + '\n[[rule]]\nname = "none"\neffect = "deny"\n'
                          'principal = "caller:nobody"\naction = "call"\n')
        rt.reload_policy()
        await asyncio.sleep(0.5)
    finally:
        await rt.stop()
    records = await all_records(js_nc.jetstream())
    pols = [r for _, r in records.items if r["k"] == "policy"]
    assert [p["reload"] for p in pols] == [False, True]
    import hashlib

    assert pols[1]["sha256"] == hashlib.sha256(policy.read_bytes()).hexdigest()
    assert pols[0]["sha256"] != pols[1]["sha256"] and pols[0]["enforcing"]
    assert (pols[0]["rules"], pols[1]["rules"]) == (1, 2)
    assert pols[1]["generation"] == pols[0]["generation"] + 1
    kvs = [r for _, r in _of(records, "kv")]
    loads = [r for _, r in _of(records, "load") if not r.get("checkpoint")]
    assert len(loads) == 2 and "kv_rev" not in loads[0]
    assert loads[1]["kv_rev"] == {"born": kvs[0]["rev"]}  # the revision the first write got
    assert kvs[1]["rev"] > kvs[0]["rev"]
    report = await Replayer(DEVICE, records, Window(t0), systems=["stamp"]).run()
    assert [(p["sha256"], p["generation"]) for p in report.policies] == [
        (p["sha256"], p["generation"]) for p in pols]
    assert report.components["stamp"].versions[-1]["kv_rev"] == {"born": kvs[0]["rev"]}
    text = report.render()
    assert f"policy at seq {report.policies[1]['seq']}: {policy} sha256 {pols[1]['sha256'][:12]}" in text


def test_message_records_wait_for_their_clock_reads(tmp_path: Path) -> None:
    """The recorder holds a clock-reading component's msg records until the batch's reads come
    (in order), writes one still waiting at an unload with clock_lost, and never holds those of
    a component that reads no clock."""
    from edge.replay.recorder import MAX_WAITING, RecorderLayer
    from edge.wasm.manifest import load_manifest, read_module

    stamp = load_manifest(build_stamp(tmp_path / "stamp"), DEVICE)
    echo = load_manifest(ROOT / "components" / "echo" / "manifest.toml", DEVICE)
    rec = RecorderLayer()
    rec.on_load(stamp, read_module(stamp), {}, [(0, 111)])
    rec.on_load(echo, read_module(echo), {})
    rec.on_deliver("stamp", [("a", b"1")], 0)
    rec.on_deliver("stamp", [("b", b"2"), ("c", b"3")], 0)
    rec.on_deliver("echo", [("d", b"4")], 0)
    kinds = [(k, c) for k, c, _ in rec._queue]
    assert kinds == [("load", "stamp"), ("load", "echo"), ("msg", "echo")]  # stamp's wait
    assert rec._queue[0][2]["clock"] == [[0, 111]]
    rec.on_message_clocks("echo", [], 0)  # nothing of echo waits: ignored
    rec.on_message_clocks("stamp", [(0, 5)], 0)
    first = rec._queue[-1][2]
    assert (first["k"], first["msgs"], first["clock"]) == ("msg", [["a", "MQ=="]], [[0, 5]])
    rec.on_unload("stamp")
    lost, unload = rec._queue[-2][2], rec._queue[-1][2]
    assert lost["clock_lost"] is True and "clock" not in lost and len(lost["msgs"]) == 2
    assert unload["k"] == "unload"
    # answers that lag: past MAX_WAITING the oldest is written without its reads, and its answer,
    # when it comes, is not given to the next one
    rec.on_load(stamp, read_module(stamp), {})
    before = len(rec._queue)
    for i in range(MAX_WAITING + 2):
        rec.on_deliver("stamp", [("x", b"%d" % i)], 0)
    early = [b for _, _, b in list(rec._queue)[before:]]
    assert [b["msgs"][0][1] for b in early] == ["MA==", "MQ=="] and all(b["clock_lost"] for b in early)
    rec.on_message_clocks("stamp", [(0, 1)], 0)
    rec.on_message_clocks("stamp", [(0, 2)], 0)
    assert len(rec._queue) - before == 2  # the answers of the two written early
    rec.on_message_clocks("stamp", [(0, 3)], 0)
    third = rec._queue[-1][2]
    assert third["msgs"][0][1] == "Mg==" and third["clock"] == [[0, 3]]
