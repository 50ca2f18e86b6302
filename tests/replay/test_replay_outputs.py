"""A replay compares what a component produced (its calls' own publishes and KV puts), not what
the device's effects pipeline let out: a policy denial, the publish rate limit and the per-key
coalescing of KV puts on the device do not make a divergence, and the report says what the
device's pipeline did. A changed component still diverges at the step that changed."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from edge.policy.config import PolicyConfig
from edge.replay.replayer import Replayer
from edge.replay.source import Records, Window
from edge.runtime import Runtime
from replay_support import DEVICE, ROOT, all_records, fleet_config

MESSAGES = 12
HERE = Path(__file__).resolve().parent / "components"
ALLOW_ALL = '[[rule]]\nname = "all"\neffect = "allow"\nprincipal = "*"\naction = "*"\n'
DENY_SECRET = ('[[rule]]\nname = "no-secret"\neffect = "deny"\nprincipal = "component:outputs"\n'
               'action = "publish"\nresource = "edge.{device}.evt.out.secret"\n')


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


def build_outputs(out_dir: Path, *, pubs: int = 1, change_from: int | None = None,
                  limits: str = "") -> Path:
    """tests/replay/components/outputs.c compiled with ``PUBS`` publishes on evt.out.ok a
    message (and ``CHANGE_FROM``), with components/build.py; returns its manifest."""
    spec = importlib.util.spec_from_file_location("edge_components_build",
                                                  ROOT / "components" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    out_dir.mkdir(parents=True, exist_ok=True)
    defines = f"#define PUBS {pubs}\n"
    if change_from is not None:
        defines += f"#define CHANGE_FROM {change_from}\n"
    src = out_dir / "outputs.c"
    src.write_text(defines + (HERE / "outputs.c").read_text())
    build.compile_wasm([src], out_dir / "outputs.wasm")
    path = out_dir / "manifest.toml"
    path.write_text((HERE / "outputs.toml").read_text() + limits)
    return path


async def record_outputs(tmp_path: Path, nats_url: str, nc: Client, manifest: Path, *,
                         policy: str | None = None, pause_s: float = 0.03
                         ) -> tuple[Records, float, dict[str, list[bytes]]]:
    """Run the demo fleet with the outputs component, send it MESSAGES messages (of 1..MESSAGES
    bytes), return the records, the time before its load and what reached NATS per subject."""
    cfg = fleet_config(tmp_path / "dev", nats_url)
    if policy is not None:
        path = tmp_path / "policy.toml"
        path.write_text(policy)
        cfg.policy = PolicyConfig(file=path, watch_interval=0)
    seen: dict[str, list[bytes]] = {}

    async def on_msg(msg: Msg) -> None:
        seen.setdefault(msg.subject.rsplit(".", 1)[1], []).append(msg.data)

    sub = await nc.subscribe(f"edge.{DEVICE}.evt.out.>", cb=on_msg)
    rt = Runtime(cfg)
    await rt.start()
    try:
        t0 = time.time()
        await rt.load_component(str(manifest))
        await asyncio.sleep(0.5)  # its subscription reaches the server
        for i in range(MESSAGES):
            await nc.publish(f"edge.{DEVICE}.cmd.outputs", b"x" * (i + 1))
            await nc.flush()
            if pause_s:
                await asyncio.sleep(pause_s)
        for _ in range(60):
            if len(seen.get("ok", [])) >= MESSAGES:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        await rt.stop()
        await sub.unsubscribe()
    return await all_records(nc.jetstream()), t0, seen


def _of(records: Records, kind: str) -> list[dict[str, Any]]:
    return [r for _, r in records.items if r["k"] == kind and r.get("c") == "outputs"]


async def test_publishes_the_policy_denied_replay_identically(
        tmp_path: Path, nats_url: str, client: Client) -> None:
    manifest = build_outputs(tmp_path / "c")
    records, t0, seen = await record_outputs(tmp_path, nats_url, client, manifest,
                                             policy=ALLOW_ALL + DENY_SECRET)
    assert len(seen.get("ok", [])) == MESSAGES and "secret" not in seen  # the policy denied them
    pubs = _of(records, "pub")
    recorded = [e for r in pubs for e in r["pubs"]]
    assert sum(1 for e in recorded if e[0].endswith(".secret")) == MESSAGES  # still recorded
    assert sum(r.get("dev", {}).get("policy_denied", 0) for r in pubs) == MESSAGES
    report = await Replayer(DEVICE, records, Window(t0), systems=["outputs"]).run()
    c = report.components["outputs"]
    assert report.identical, report.render()
    assert (c.messages, c.publishes, c.publishes_differing) == (MESSAGES, 2 * MESSAGES, 0)
    assert c.device["policy_denied"] == MESSAGES
    assert f"the policy denied {MESSAGES} of these publishes" in report.render()
    assert report.to_dict()["components"]["outputs"]["device"]["policy_denied"] == MESSAGES

    # a component that changed only what it publishes to the denied subject still diverges, at
    # the first message that changed (the denied publishes are compared too)
    changed = build_outputs(tmp_path / "changed", change_from=7)
    what_if = await Replayer(DEVICE, records, Window(t0), systems=["outputs"],
                             what_if={"outputs": changed}).run()
    first = what_if.first
    assert first is not None and first.what == "publish", what_if.render()
    msgs = _of(records, "msg")
    assert first.step == msgs[6]["step"]
    assert first.recorded == f"edge.{DEVICE}.evt.out.secret secret n=7"
    assert first.replayed == f"edge.{DEVICE}.evt.out.secret changed n=7"
    assert what_if.components["outputs"].publishes_differing == MESSAGES - 6


async def test_publishes_over_the_rate_limit_replay_identically(
        tmp_path: Path, nats_url: str, client: Client) -> None:
    manifest = build_outputs(tmp_path / "c", pubs=3,
                             limits="publish_rate = 1.0\npublish_burst = 4\n")
    records, t0, seen = await record_outputs(tmp_path, nats_url, client, manifest, pause_s=0)
    let_out = sum(len(v) for v in seen.values())
    assert let_out < 4 * MESSAGES  # the rate limit refused some on the device
    pubs = _of(records, "pub")
    assert sum(len(r["pubs"]) for r in pubs) == 4 * MESSAGES  # every one the calls made
    limited = sum(r.get("dev", {}).get("rate_limited", 0) for r in pubs)
    assert limited == 4 * MESSAGES - let_out
    report = await Replayer(DEVICE, records, Window(t0), systems=["outputs"]).run()
    c = report.components["outputs"]
    assert report.identical, report.render()
    assert (c.publishes, c.publishes_differing) == (4 * MESSAGES, 0)
    assert c.device["rate_limited"] == limited
    assert f"the publish rate limit refused {limited}" in report.render()


async def test_kv_puts_to_one_key_replay_identically(
        tmp_path: Path, nats_url: str, client: Client) -> None:
    manifest = build_outputs(tmp_path / "c")
    records, t0, _ = await record_outputs(tmp_path, nats_url, client, manifest, pause_s=0)
    kvs = _of(records, "kv")
    assert len(kvs) == 3 * MESSAGES  # every put of every call, in the call's order
    by_step: dict[int, list[dict[str, Any]]] = {}
    for r in kvs:
        by_step.setdefault(r["step"], []).append(r)
    assert set(by_step) == {r["step"] for r in _of(records, "msg")}  # a batch is one step
    assert all([r["i"] for r in puts] == list(range(len(puts))) for puts in by_step.values())
    coalesced = [r for r in kvs if r.get("dev") == "coalesced"]
    written = [r for r in kvs if "rev" in r]
    assert len(coalesced) >= 2 * MESSAGES  # of three puts of one call, at most one is written
    assert len(coalesced) + len(written) == 3 * MESSAGES
    last = by_step[max(by_step)]
    assert last[-1] in written and b"12-3" == base64.b64decode(last[-1]["value"])  # the last wins
    report = await Replayer(DEVICE, records, Window(t0), systems=["outputs"]).run()
    c = report.components["outputs"]
    assert report.identical, report.render()
    assert (c.kv_puts, c.kv_differing) == (3 * MESSAGES, 0)
    assert c.device["kv_coalesced"] == len(coalesced)
    assert f"{len(coalesced)} KV puts were replaced by a later put" in report.render()

    # a changed record of one put (the component did not write that): a divergence at its step
    (step,) = [r["step"] for r in kvs if r["value"] == "NS0y"]  # "5-2": the fifth message's
    for r in kvs:
        if r["value"] == "NS0y":
            r["value"] = "OS05"  # "9-9"
    diverged = await Replayer(DEVICE, records, Window(t0), systems=["outputs"]).run()
    first = diverged.first
    assert first is not None and (first.what, first.step) == ("kv", step), diverged.render()
    assert first.recorded == "count 9-9" and first.replayed == "count 5-2"
    assert diverged.components["outputs"].kv_differing == 1
