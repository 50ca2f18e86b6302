"""The embedded demo with the example policy (``edge run --config examples/demo-policy.toml``):
every part of the demo that sends commands names itself, so nothing the demo needs is denied; the
pilot launches drone-0 through the policy point as ``caller:demo-pilot``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge.config import load_config
from edge.runtime import Runtime

pytestmark = pytest.mark.timeout(90)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def test_the_demo_runs_under_the_example_policy_without_a_denial(tmp_path: Path) -> None:
    rt = Runtime(load_config(EXAMPLES / "demo-policy.toml", data_dir=tmp_path))
    await rt.start()
    try:
        async with asyncio.timeout(60):
            while not rt.status()["demo_pilot"]["launched"]:
                await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # the demo running a while: agents, tools, vision
        status = rt.status()
        assert status["policy"]["enforcing"] and status["policy"]["denied"] == 0, status["policy"]
        layer = next(layer for layer in rt.layers or [] if layer.name == "policy")
        usage = {r["principal"]: r for r in layer.accounting(100)["top"]["messages"]}  # type: ignore[attr-defined]
        assert usage["caller:demo-pilot"]["commands"] >= 3  # set_mode, arm, takeoff
        assert "caller:anonymous" not in usage
    finally:
        await rt.stop()
