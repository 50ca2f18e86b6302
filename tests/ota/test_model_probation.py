"""Model probation: a newly activated model that fails inferences, or runs over
``[ota] model_latency_ms``, during its probation rolls back to the previous model (docs/ota.md)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nats.aio.client import Client

from edge.errors import EdgeError
from edge.inference.config import ModelSpec
from edge.inference.registry import ModelRegistry
from edge.ota import hub, repo as fleet
from edge.ota.config import read_ota
from edge.config.table import Table
from edge.ota.models import pack_model
from edge.runtime import Runtime

from support import device_config, ota_status, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from tflite_modelgen import float_fc  # type: ignore[import-not-found]  # noqa: E402

pytestmark = pytest.mark.timeout(90)
Make = Callable[..., Awaitable[Runtime]]


def _fc(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return bytes(float_fc(rng.normal(size=(3, 4)).astype(np.float32),
                          rng.normal(size=3).astype(np.float32)))


def _sha(seed: int) -> str:
    return hashlib.sha256(_fc(seed)).hexdigest()


def _registry(rt: Runtime) -> ModelRegistry:
    assert rt.layers is not None
    registry = rt.layers.layers[-1].models  # type: ignore[attr-defined]
    assert isinstance(registry, ModelRegistry)
    return registry


def _serving(rt: Runtime) -> str:
    return str(_registry(rt).get("fc").sha256)


@pytest.fixture
async def make(tmp_path: Path, nc: Client, nats_url: str) -> AsyncIterator[Make]:
    repo = tmp_path / "fleet"
    fleet.keygen(repo)
    fleet.publish(repo, pack_model(_fc(2)), kind="model", name="fc", version="2.0.0")
    fleet.publish(repo, pack_model(_fc(3)), kind="model", name="fc", version="3.0.0")
    await fleet.upload(nc.jetstream(), repo)
    first = tmp_path / "fc1.tflite"
    first.write_bytes(_fc(1))
    started: list[Runtime] = []

    async def start(**kw: Any) -> Runtime:
        cfg = device_config(tmp_path, nats_url, repo / "metadata" / "1.root.json",
                            probation_s=1.5, **kw)
        cfg.models.append(ModelSpec("fc", path=str(first)))
        rt = Runtime(cfg)
        await rt.start()
        started.append(rt)
        js = nc.jetstream()  # 2.0.0 commits untouched: the version a failure rolls back to
        await hub.put_desired(js, "dev1", {"revision": "m2", "models": {"fc": "2.0.0"}})
        await wait_for(lambda: ota_status(rt)["revision"] == "m2")
        await hub.put_desired(js, "dev1", {"revision": "m3", "models": {"fc": "3.0.0"}})
        await wait_for(lambda: _serving(rt) == _sha(3))
        return rt

    try:
        yield start
    finally:
        for rt in started:
            await rt.stop()


async def _rolled_back(rt: Runtime) -> str:
    await wait_for(lambda: ota_status(rt)["rolled_back"] == 1 and _serving(rt) == _sha(2))
    st = ota_status(rt)
    assert st["revision"] == "m2" and st["active"] == {"model:fc": "2.0.0"}
    return str(st["bad"]["model:fc@3.0.0"])


async def test_inference_failure_on_probation_rolls_back(make: Make) -> None:
    rt = await make()
    with pytest.raises(EdgeError):  # inputs the new model refuses: an inference error
        await _registry(rt).infer("fc", [np.zeros((1, 5), np.float32)])
    reason = await _rolled_back(rt)
    assert reason.startswith("model: fc 3.0.0 failed 1 inference(s)"), reason


async def test_latency_over_budget_on_probation_rolls_back(make: Make) -> None:
    rt = await make(model_latency_ms=0.000001)
    await _registry(rt).infer("fc", [np.zeros((1, 4), np.float32)])
    reason = await _rolled_back(rt)
    assert reason.startswith("budget: model fc 3.0.0 ran in") and "over its 1e-06 ms budget" in reason


async def test_served_within_budget_commits(make: Make) -> None:
    rt = await make(model_latency_ms=60_000.0)
    await _registry(rt).infer("fc", [np.zeros((1, 4), np.float32)])
    await wait_for(lambda: ota_status(rt)["revision"] == "m3")
    assert ota_status(rt)["rolled_back"] == 0 and _serving(rt) == _sha(3)


def test_model_latency_key_is_checked(tmp_path: Path) -> None:
    with pytest.raises(EdgeError) as err:
        read_ota(Table({"model_latency_ms": -1}, key="ota", file=str(tmp_path / "edge.toml")))
    assert "model_latency_ms" in str(err.value)
