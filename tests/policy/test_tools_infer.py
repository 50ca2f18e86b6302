"""The tools' ``run_model`` in a running device passes the policy point twice: the tool call
(``call run_model``, the tools permissions as the grant) and the inference (``infer`` of the
model, granted by the permission to call ``run_model``): a deny rule on the model, a rate limit
on inference hit and recovered, and the inference time metered for the caller."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.config import load_config
from edge.runtime import Runtime

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
DEV = "tinf"

POLICY = """
[[rule]]
name = "no-fc-for-b"
effect = "deny"
principal = "caller:b"
action = "infer"
resource = "fc"

[[limit]]
name = "infer-rate"
principal = "caller:*"
action = "infer"
rate = 0.5
burst = 2
"""

CONFIG = """
[device]
id = "tinf"
[policy]
file = "policy.toml"
watch_interval = 0
[tools.callers]
a = ["run_model"]
b = ["run_model"]
[[models]]
name = "fc"
path = "fc.tflite"
"""


def fc_model() -> bytes:
    spec = importlib.util.spec_from_file_location("tflite_modelgen_tinf", ROOT / "tests" / "inference" / "tflite_modelgen.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.float_fc(np.eye(3, 4, dtype=np.float32), np.zeros(3, np.float32))  # type: ignore[no-any-return]


async def test_run_model_is_decided_as_a_call_and_as_an_infer_and_metered(tmp_path: Path) -> None:
    (tmp_path / "fc.tflite").write_bytes(fc_model())
    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "device.toml").write_text(CONFIG)
    rt = Runtime(load_config(tmp_path / "device.toml", data_dir=tmp_path / "data"))
    await rt.start()
    try:
        assert rt.nc is not None

        async def run(caller: str) -> dict[str, Any]:
            assert rt.nc is not None
            body = {"model": "fc", "inputs": [{"data": [[0.0, 1.0, 2.0, 3.0]]}]}
            msg = await rt.nc.request(f"edge.{DEV}.tools.run_model", json.dumps(body).encode(), timeout=5,
                                      headers={"Edge-Caller": caller})
            return json.loads(msg.data)  # type: ignore[no-any-return]

        first = await run("a")
        assert first["ok"] is True, first
        assert np.asarray(first["result"]["outputs"][0]["data"]).ravel().tolist() == [0.0, 1.0, 2.0]
        denied = await run("b")  # may call the tool, may not run the model
        assert denied["ok"] is False and denied["error"]["rule"] == "no-fc-for-b"
        assert "caller 'b' may not run model 'fc'" in denied["error"]["message"]
        results = [await run("a") for _ in range(3)]  # burst 2: the first was one of them
        assert [r["ok"] for r in results][-1] is False
        over = next(r for r in results if not r["ok"])
        assert over["error"]["rule"] == "infer-rate" and "rate limit of 0.5 a second" in over["error"]["why"]
        await asyncio.sleep(2.1)  # one token back
        assert (await run("a"))["ok"] is True
        msg = await rt.nc.request(f"edge.{DEV}.api.accounting.get", b'{"top": 50}', timeout=5)
        rows = {r["principal"]: r for r in json.loads(msg.data)["result"]["top"]["messages"]}
        a = rows["caller:a"]
        assert a["calls"] == 5 and a["infer_s"] > 0 and a["denied"] >= 1
        assert rows["caller:b"]["denied"] == 1 and rows["caller:b"]["infer_s"] == 0
    finally:
        await rt.stop()
