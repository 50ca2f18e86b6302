"""The other paths through the same engine: inference requests (the wasm ``infer`` bridge, with a
real generated model), and the hub: which operator may queue which command for which devices
(checked before anything is queued, also by ``edge cloud send --policy``) and which devices may
receive which OTA artifacts."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.cli.main import main
from edge.inference.bridge import RegistryInferBridge
from edge.inference.config import ModelSpec
from edge.inference.errors import InferenceError
from edge.inference.registry import ModelRegistry
from edge.policy.hub import FleetPolicy
from edge.policy.model import PolicyDenied
from edge.policy.point import PolicyPoint
from edge.policy.rules import parse_policy

ROOT = Path(__file__).resolve().parents[2]


def modelgen() -> object:
    path = ROOT / "tests" / "inference" / "tflite_modelgen.py"
    spec = importlib.util.spec_from_file_location("tflite_modelgen_policy", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


async def test_an_infer_is_decided_and_metered(tmp_path: Path) -> None:
    gen = modelgen()
    w = np.eye(3, 4, dtype=np.float32)
    model = tmp_path / "fc.tflite"
    model.write_bytes(gen.float_fc(w, np.zeros(3, np.float32)))  # type: ignore[attr-defined]
    registry = ModelRegistry()
    await registry.start()
    try:
        await registry.load(ModelSpec(name="fc", path=str(model)))
        point = PolicyPoint("dev1")
        point.load(parse_policy({"rule": [{"name": "no-fc-for-b", "effect": "deny", "principal": "component:b",
                                           "action": "infer", "resource": "fc"}]}, "dev1"))
        bridge = RegistryInferBridge(registry, policy=point)
        data = np.arange(4, dtype=np.float32).tobytes()
        out = np.frombuffer(await bridge.infer("a", "fc", data), np.float32)
        assert out.tolist() == [0.0, 1.0, 2.0]  # granted by the manifest, no rule against it
        with pytest.raises(InferenceError) as info:
            await bridge.infer("b", "fc", data)
        assert info.value.reason == "denied" and "rule 'no-fc-for-b'" in info.value.message
        a = point.meter.of("component", "a")
        assert a.messages == 1 and a.bytes == 16 and a.infer_s > 0
        assert point.meter.of("component", "b").denied == 1
    finally:
        await registry.close()


FLEET = {"rule": [
    {"name": "ops-rtl-north", "effect": "allow", "principal": "operator:ops", "action": "command",
     "resource": ["*.*.rtl", "*.*.hold"], "labels": {"fleet": "north"}},
    {"name": "admin-all", "effect": "allow", "principal": "operator:admin", "action": "command"},
    {"name": "never-dev9", "effect": "deny", "principal": "operator:*", "action": "command",
     "resource": "dev9.>"},
    {"name": "fw-beta", "effect": "allow", "principal": "operator:ops", "action": "deploy",
     "resource": "*.component.fw.2.>", "labels": {"ring": "beta"}},
    {"name": "fw-stable", "effect": "allow", "principal": "operator:ops", "action": "deploy",
     "resource": "*.component.fw.1.>"},
]}


def test_the_hub_decides_which_operator_may_command_which_devices() -> None:
    fleet = FleetPolicy(parse_policy(FLEET, "hub"))
    north = {"fleet": "north"}
    assert fleet.command("ops", "dev1", "drone-0.rtl", north).rule == "ops-rtl-north"
    assert not fleet.command("ops", "dev1", "drone-0.rtl", {"fleet": "south"}).allowed
    assert not fleet.command("ops", "dev1", "drone-0.arm", north).allowed
    assert fleet.command("admin", "dev1", "drone-0.arm").allowed
    assert fleet.command("admin", "dev9", "drone-0.rtl").rule == "never-dev9"
    assert fleet.command("nobody", "dev1", "drone-0.rtl").rule == "default"
    assert not fleet.command("admin", "dev1", "drone-0.*").allowed  # a wildcard is no subject
    with pytest.raises(PolicyDenied) as info:
        fleet.require_command("ops", "dev1", "drone-0.arm", north)
    assert info.value.fields["rule"] == "default" and "operator 'ops' may not send" in info.value.message


def test_the_hub_decides_which_operator_may_give_which_devices_which_artifacts() -> None:
    fleet = FleetPolicy(parse_policy(FLEET, "hub"))
    assert fleet.artifact("ops", "dev1", "component.fw.1.9.0").rule == "fw-stable"
    assert not fleet.artifact("ops", "dev1", "component.fw.2.0.0").allowed
    assert fleet.artifact("ops", "dev1", "component.fw.2.0.0", {"ring": "beta"}).rule == "fw-beta"
    assert fleet.artifact("ops", "dev1", "model.face.1.0.0").rule == "default"
    assert fleet.artifact("nobody", "dev1", "component.fw.1.9.0").rule == "default"  # the operator decides
    with pytest.raises(PolicyDenied) as info:
        fleet.require_artifact("ops", "dev1", "component.fw.2.0.0", {"ring": "stable"})
    assert info.value.fields["rule"] == "default" and "operator 'ops' may not deploy" in info.value.message
    assert info.value.fields["resource"] == "dev1.component.fw.2.0.0"


async def test_edge_cloud_send_queues_only_what_the_fleet_policy_allows(
        tmp_path: Path, nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import nats

    from edge.sync.hub import fleet as hubops

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await hubops.provision_device(js, "dev1")
        f = tmp_path / "fleet.toml"
        f.write_text('[[rule]]\nname = "ops-rtl"\neffect = "allow"\nprincipal = "operator:ops"\n'
                     'action = "command"\nresource = "*.*.rtl"\n')
        args = ["cloud", "send", "--hub-url", nats_url, "--policy", str(f), "--operator", "ops", "dev1"]
        code = await asyncio.to_thread(main, [*args, "drone-0.arm"])
        out = capsys.readouterr()
        assert code == 1 and "operator 'ops' may not send 'drone-0.arm' to device 'dev1'" in out.err
        assert "rule 'default'" in out.err
        code = await asyncio.to_thread(main, [*args, "drone-0.rtl"])
        assert code == 0 and "queued for dev1" in capsys.readouterr().out
        info = await js.stream_info("CMD_dev1")
        assert info.state.messages == 1  # only the allowed one was queued
        msg = await js.get_last_msg("CMD_dev1", "edge.dev1.cmd.drone-0.rtl")
        assert msg.subject == "edge.dev1.cmd.drone-0.rtl"
    finally:
        await nc.close()
