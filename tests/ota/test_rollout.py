"""Fleet rollouts over real device runtimes: canary then batches, a device that never reports
times out without blocking the rest, failures past the threshold halt the rollout by themselves,
a newer rollout supersedes a running one (docs/ota.md, *Fleet rollouts*)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from edge.ota import hub, repo as fleet, rollout
from edge.ota.rollout import RolloutSpec
from edge.runtime import Runtime

import nats

from edge.sync.hub.fleet import provision_device
from edge.sync.hub.server import HubServer

from support import TRAP_CODE, component, leaf_device_config, publish_component, versions, wait_for

pytestmark = pytest.mark.timeout(120)
DEVICES = ["dev1", "dev2", "dev3"]


@pytest.fixture
async def hub_server(tmp_path: Path) -> AsyncIterator[HubServer]:
    server = HubServer(tmp_path / "hub")
    await server.start(supervise=True)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def cloud(hub_server: HubServer) -> AsyncIterator[Client]:
    nc = await nats.connect(hub_server.client_url)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def fleet_of_three(tmp_path: Path, cloud: Client,
                         hub_server: HubServer) -> AsyncIterator[dict[str, Runtime]]:
    nc = cloud
    js = nc.jetstream()
    repo = tmp_path / "fleet"
    fleet.keygen(repo)
    for v, code in (("1.0.0", b"\x41\x00"), ("2.0.0", b"\x41\x00"), ("3.0.0", TRAP_CODE)):
        publish_component(repo, tmp_path, component(tmp_path / "src", "blink", v, code))
    await fleet.upload(js, repo)
    for d in [*DEVICES, "ghost"]:  # ghost is labelled but never comes online
        await rollout.set_labels(js, d, {"fleet": "north"})
        await hub.set_desired(js, d, "base", {"blink": "1.0.0"})
    await rollout.set_labels(js, "south1", {"fleet": "south"})
    rts = {}
    for d in DEVICES:
        cred = await hub_server.add_device(d)
        await provision_device(js, d)
        assert hub_server.leaf_url is not None and cred.password is not None
        rt = Runtime(leaf_device_config(tmp_path, hub_server.leaf_url, cred.password,
                                        repo / "metadata" / "1.root.json", device=d, probation_s=0.3))
        await rt.start()
        rts[d] = rt
    try:
        yield rts
    finally:
        for rt in rts.values():
            await rt.stop()


async def test_rollout_batches_times_out_halts_and_supersedes(fleet_of_three: dict[str, Runtime],
                                                              cloud: Client) -> None:
    js = cloud.jetstream()
    assert await rollout.select(js, {"fleet": "north"}) == [*DEVICES, "ghost"]
    seen: list[dict[str, str]] = []
    spec = RolloutSpec("r-ok", {"fleet": "north"}, {"blink": "2.0.0"}, canary=1, batch=2,
                       max_failure_pct=30, probation_s=0.3, device_timeout_s=20)
    rec = await rollout.run_rollout(js, spec, on_progress=lambda r: seen.append(
        {d: p.state for d, p in r.devices.items()}))
    assert rec.status == "completed", rec.halt_reason
    states = {d: p.state for d, p in rec.devices.items()}
    assert states == {"dev1": "committed", "dev2": "committed", "dev3": "committed", "ghost": "timed_out"}
    assert {d: p.batch for d, p in rec.devices.items()} == {"dev1": 0, "dev2": 1, "dev3": 1, "ghost": 2}
    # the canary went alone: while dev1 updated, dev2 and dev3 had not been asked yet
    assert {"dev1": "updating", "dev2": "pending", "dev3": "pending", "ghost": "pending"} in seen
    assert all(versions(rt) == {"blink": "2.0.0"} for rt in fleet_of_three.values())
    assert (await rollout.get_record(js)).status == "completed"  # type: ignore[union-attr]

    # 3.0.0 traps on probation: the canary rolls back, the rollout halts by itself
    bad = RolloutSpec("r-bad", {"fleet": "north"}, {"blink": "3.0.0"}, canary=1, batch=2,
                      max_failure_pct=30, probation_s=5, device_timeout_s=20)
    rec = await rollout.run_rollout(js, bad)
    assert rec.status == "halted"
    assert "dev1" in rec.halt_reason and "trap" in rec.halt_reason
    assert rec.devices["dev1"].state == "failed" and rec.devices["dev2"].state == "pending"
    assert all(versions(rt) == {"blink": "2.0.0"} for rt in fleet_of_three.values())
    assert (await hub.get_desired(js, "dev2"))["revision"] == "r-ok"  # type: ignore[index]

    # a newer rollout supersedes a running one
    slow = asyncio.create_task(rollout.run_rollout(js, RolloutSpec(
        "r-slow", {"fleet": "north"}, {"blink": "2.0.0"}, canary=0, batch=10, device_timeout_s=60)))
    await asyncio.sleep(1.0)
    newer = await rollout.run_rollout(js, RolloutSpec(
        "r-new", {"fleet": "north"}, {"blink": "2.0.0"}, canary=0, batch=10, device_timeout_s=2,
        max_failure_pct=50))
    old = await asyncio.wait_for(slow, 10)
    assert old.status == "superseded" and "r-new" in old.halt_reason
    assert newer.status == "completed"


async def test_offline_device_times_out_then_picks_the_rollout_up(
        fleet_of_three: dict[str, Runtime], cloud: Client, hub_server: HubServer, tmp_path: Path) -> None:
    js = cloud.jetstream()
    rt3 = fleet_of_three.pop("dev3")
    cfg = rt3.config
    await rt3.stop()  # dev3 is offline when the rollout reaches it
    spec = RolloutSpec("r-late", {"fleet": "north"}, {"blink": "2.0.0"}, canary=0, batch=10,
                       max_failure_pct=50, probation_s=0.3, device_timeout_s=8)
    rec = await rollout.run_rollout(js, spec)
    assert rec.status == "completed"
    assert rec.devices["dev3"].state == "timed_out" and rec.devices["dev1"].state == "committed"
    rt3 = Runtime(cfg)  # back online: it reads its desired state and commits it
    await rt3.start()
    fleet_of_three["dev3"] = rt3
    await wait_for(lambda: versions(rt3) == {"blink": "2.0.0"}, timeout=40)

    async def late() -> bool:
        rec = await rollout.refresh_late(js, "r-late")
        return rec is not None and rec.devices["dev3"].state == "committed"

    for _ in range(80):
        if await late():
            break
        await asyncio.sleep(0.25)
    else:
        raise AssertionError("the late commit was not recorded")


FLEET_POLICY = '''[[rule]]
name = "ops-beta-blink"
effect = "allow"
principal = "operator:ops"
action = "deploy"
resource = "*.component.blink.>"
labels = { ring = "beta" }
'''


async def test_the_fleet_policy_decides_which_devices_a_rollout_may_give_its_artifacts(
        fleet_of_three: dict[str, Runtime], cloud: Client, tmp_path: Path, hub_server: HubServer) -> None:
    from edge.cli.main import build_parser, dispatch, main
    from edge.ota.errors import OtaError

    js = cloud.jetstream()
    for d, ring in (("dev1", "beta"), ("dev2", "stable"), ("dev3", "beta")):
        await rollout.set_labels(js, d, {"fleet": "north", "ring": ring})
    policy = tmp_path / "fleet-policy.toml"
    policy.write_text(FLEET_POLICY)
    spec = RolloutSpec("r-pol", {"fleet": "north"}, {"blink": "2.0.0"}, canary=1, batch=3,
                       max_failure_pct=0, probation_s=0.3, device_timeout_s=20, policy_file=str(policy),
                       operator="ops")
    rec = await rollout.run_rollout(js, spec)
    assert rec.status == "completed", rec.halt_reason  # denied devices are not failures
    states = {d: p.state for d, p in rec.devices.items()}
    assert states == {"dev1": "committed", "dev2": "denied", "dev3": "committed", "ghost": "denied"}
    assert rec.devices["dev2"].reason == "component.blink.2.0.0: no rule, manifest or permission grants it (rule 'default')"
    assert (await hub.get_desired(js, "dev2"))["revision"] == "base"  # type: ignore[index]
    assert versions(fleet_of_three["dev2"]) == {"blink": "1.0.0"}
    assert versions(fleet_of_three["dev1"]) == {"blink": "2.0.0"}
    from edge.cli.ota import render_rollout

    assert "dev2                 denied" in render_rollout(rec)
    # another operator is denied everywhere: no rule names it
    other = await rollout.run_rollout(js, RolloutSpec("r-pol2", {"fleet": "north"}, {"blink": "1.0.0"},
                                                      canary=0, policy_file=str(policy), operator="intern"))
    assert {p.state for p in other.devices.values()} == {"denied"}
    assert (await hub.get_desired(js, "dev1"))["revision"] == "r-pol"  # type: ignore[index]

    # edge ota desire: refused with the reason, the desired state unchanged
    async def arun(*argv: str) -> int:
        return await dispatch(build_parser().parse_args(list(argv)))

    url = hub_server.client_url
    with pytest.raises(OtaError) as info:
        await arun("ota", "desire", "dev2", "r9", "blink=2.0.0", "--hub", url, "--policy", str(policy),
                   "--operator", "ops")
    assert info.value.reason == "denied"
    assert "may not deploy to device 'dev2': component.blink.2.0.0: no rule, manifest or permission grants it (rule 'default')" \
        in info.value.message
    assert (await hub.get_desired(js, "dev2"))["revision"] == "base"  # type: ignore[index]
    code = await asyncio.to_thread(main, ["ota", "desire", "dev2", "r9", "blink=2.0.0", "--hub", url,
                                          "--policy", str(policy), "--operator", "ops"])
    assert code == 1  # the command exits non-zero (the sentence is on stderr)
    assert await arun("ota", "desire", "dev3", "r9", "blink=1.0.0", "--hub", url, "--policy", str(policy),
                      "--operator", "ops") == 0
    assert (await hub.get_desired(js, "dev3"))["revision"] == "r9"  # type: ignore[index]
