"""The device's own vision pipeline, the tools' ``capture_frame`` detection and a native agent's
commands pass the policy point in a running device: an emulated synthetic camera showing a face,
the real face model, a ``[[vision]]`` pipeline, the follow agent, ``edge-tools``.

* the pipeline's inference is principal ``device:<entity>``, action ``infer``, resource the model;
  the ``[[vision]]`` entry is the grant; a deny rule stops it (frames counted as ``denied``, no
  detections written) and a reload without the rule lets it run again; its time is metered;
* ``capture_frame``'s detection is the caller's ``infer`` of the model (a deny rule: 403 naming
  the rule; allowed: detections, the caller's inference time metered);
* the follow agent's commands are ``agent:<name>`` ``command``: denied by default, allowed by a
  rule after a reload.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from edge.inference.blazeface import face_model_path
from edge.runtime import Runtime

pytestmark = pytest.mark.timeout(120)

DEV = "vpol"

BASE = """
[[rule]]
name = "no-peeking"
effect = "deny"
principal = "caller:peeker"
action = "infer"
resource = "face"
reason = "peeker may not run the face model"
"""

DENY_PIPELINE = """
[[rule]]
name = "no-face-for-cam"
effect = "deny"
principal = "device:cam"
action = "infer"
resource = "face"
"""

ALLOW_AGENT = """
[[rule]]
name = "follow-may-steer"
effect = "allow"
principal = "agent:follow-cam"
action = "command"
resource = "cam.velocity"
"""

CONFIG = """
[device]
id = "vpol"
[policy]
file = "policy.toml"
watch_interval = 0
[tools.callers]
viewer = ["capture_frame"]
peeker = ["capture_frame"]
[[drivers]]
name = "camera"
kind = "camera"
entity = "cam"
backend = "emulated"
source = "synthetic"
face = true
fps = 10
width = 320
height = 240
[[models]]
name = "face"
path = "{model}"
[[vision]]
model = "face"
entity = "cam"
[[agents]]
kind = "follow"
entity = "cam"
"""


async def wait_for(pred: Callable[[], Any], timeout: float = 30.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (value := pred()):
            await asyncio.sleep(0.05)
    return value


def pipeline(rt: Runtime) -> dict[str, Any]:
    return dict(rt.status()["inference"]["pipelines"][0])


async def accounting(rt: Runtime) -> dict[str, Any]:
    assert rt.nc is not None
    msg = await rt.nc.request(f"edge.{DEV}.api.accounting.get", b'{"top": 100}', timeout=5)
    return json.loads(msg.data)["result"]  # type: ignore[no-any-return]


def row(acct: dict[str, Any], principal: str) -> dict[str, Any]:
    return next((r for r in acct["top"]["messages"] if r["principal"] == principal), {})


async def capture(rt: Runtime, caller: str) -> dict[str, Any]:
    assert rt.nc is not None
    msg = await rt.nc.request(f"edge.{DEV}.tools.capture_frame", b"{}", timeout=10,
                              headers={"Edge-Caller": caller})
    return json.loads(msg.data)  # type: ignore[no-any-return]


async def test_vision_capture_frame_and_agent_commands_pass_the_policy_point(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(BASE)
    (tmp_path / "device.toml").write_text(CONFIG.format(model=face_model_path()))
    rt = Runtime(load_config(tmp_path / "device.toml", data_dir=tmp_path / "data"))
    await rt.start()
    try:
        # granted by [[vision]]: the pipeline runs, writes detections, and is metered as device:cam
        await wait_for(lambda: pipeline(rt)["processed"] >= 3 and rt.world.has("cam", "detections"))
        assert pipeline(rt)["denied"] == 0
        acct = await accounting(rt)
        cam = row(acct, "device:cam")
        assert cam["messages"] >= 3 and cam["infer_s"] > 0 and cam["bytes"] >= 3 * 320 * 240 * 3
        # the follow agent saw the face and commanded: no rule allows agent commands yet
        await _until_async(lambda: _agent_denials(rt))
        follow = await _agent_denials(rt)
        assert follow and all(d["rule"] == "default" and d["resource"] == "cam.velocity" for d in follow)

        # capture_frame: the caller's inference
        viewer = await capture(rt, "viewer")
        assert viewer["ok"] is True and viewer["result"]["detections"] is not None
        peeker = await capture(rt, "peeker")
        assert peeker["ok"] is False and peeker["error"]["error"] == "ToolDenied"
        assert peeker["error"]["rule"] == "no-peeking" and "may not run model 'face'" in peeker["error"]["message"]
        acct = await accounting(rt)
        assert row(acct, "caller:viewer")["infer_s"] > 0 and row(acct, "caller:peeker")["denied"] == 1

        # a deny rule on the pipeline: its frames are denied, counted, nothing more is detected
        policy.write_text(BASE + DENY_PIPELINE + ALLOW_AGENT)
        rt.reload_policy()
        await wait_for(lambda: pipeline(rt)["denied"] >= 3)
        processed = pipeline(rt)["processed"]
        t = rt.world.get("cam", "detections")["t"]
        await wait_for(lambda: pipeline(rt)["denied"] >= 6)
        assert pipeline(rt)["processed"] == processed and rt.world.get("cam", "detections")["t"] == t
        acct = await accounting(rt)
        assert any(d["principal"] == "device:cam" and d["rule"] == "no-face-for-cam" and d["action"] == "infer"
                   for d in acct["denials"])

        # the rule removed again: the pipeline runs; the agent's commands are now allowed by a rule
        policy.write_text(BASE + ALLOW_AGENT)
        rt.reload_policy()
        before = row(await accounting(rt), "agent:follow-cam")
        assert before["denied"] >= 1 and before["denied"] <= before["commands"]
        await wait_for(lambda: pipeline(rt)["processed"] > processed + 3)
        await _until_async(lambda: _more_commands(rt, before["commands"] + 3))
        assert row(await accounting(rt), "agent:follow-cam")["denied"] == before["denied"]  # none since
    finally:
        await rt.stop()


async def _agent_denials(rt: Runtime) -> list[dict[str, Any]]:
    acct = await accounting(rt)
    return [d for d in acct["denials"] if d["principal"] == "agent:follow-cam"]


async def _more_commands(rt: Runtime, n: int) -> bool:
    return bool(row(await accounting(rt), "agent:follow-cam").get("commands", 0) >= n)


async def _until_async(pred: Callable[[], Any], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await pred():
            await asyncio.sleep(0.1)
