"""Model updates: a signed .tflite with a stored probe, run before the model is handed to the
inference registry (docs/ota.md, *Artifacts and trust*)."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from nats.aio.client import Client

from edge.inference.config import ModelSpec
from edge.ota import hub, repo as fleet
from edge.ota.models import pack_model
from edge.runtime import Runtime

from support import device_config, ota_status, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from tflite_modelgen import float_fc  # noqa: E402

pytestmark = pytest.mark.timeout(90)


def _fc(seed: int, n_out: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    return float_fc(rng.normal(size=(n_out, 4)).astype(np.float32), rng.normal(size=n_out).astype(np.float32))


@pytest.fixture
async def device(tmp_path: Path, nc: Client, nats_url: str) -> AsyncIterator[Runtime]:
    repo = tmp_path / "fleet"
    fleet.keygen(repo)
    fleet.publish(repo, pack_model(_fc(2)), kind="model", name="fc", version="2.0.0")
    fleet.publish(repo, pack_model(_fc(3), expect=[[1, 5]]), kind="model", name="fc", version="3.0.0")
    fleet.publish(repo, pack_model(b"not a model" * 100, inputs=[np.zeros((1, 4), np.float32)], expect=[[1, 3]]),
                  kind="model", name="fc", version="4.0.0")
    await fleet.upload(nc.jetstream(), repo)
    first = tmp_path / "fc1.tflite"
    first.write_bytes(_fc(1))
    cfg = device_config(tmp_path, nats_url, repo / "metadata" / "1.root.json", probation_s=0.2)
    cfg.models.append(ModelSpec("fc", path=str(first)))
    rt = Runtime(cfg)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


def serving(rt: Runtime) -> str:
    return str(rt.layers.layers[-1].models.get("fc").sha256)  # type: ignore[union-attr]


async def test_model_update_probe_and_refusals(device: Runtime, nc: Client) -> None:
    js = nc.jetstream()
    assert serving(device) == hashlib.sha256(_fc(1)).hexdigest()
    await hub.put_desired(js, "dev1", {"revision": "m2", "models": {"fc": "2.0.0"}})
    await wait_for(lambda: ota_status(device)["revision"] == "m2")
    assert serving(device) == hashlib.sha256(_fc(2)).hexdigest()
    assert ota_status(device)["active"] == {"model:fc": "2.0.0"}
    # outputs of other shapes than its probe expects: refused, 2.0.0 keeps serving
    await hub.put_desired(js, "dev1", {"revision": "m3", "models": {"fc": "3.0.0"}})
    await wait_for(lambda: (ota_status(device)["last_error"] or {}).get("reason") == "probe")
    assert "[[1, 3]], expected [[1, 5]]" in ota_status(device)["last_error"]["message"]
    assert serving(device) == hashlib.sha256(_fc(2)).hexdigest()
    # a file the interpreter cannot load: refused too
    await hub.put_desired(js, "dev1", {"revision": "m4", "models": {"fc": "4.0.0"}})
    await wait_for(lambda: "4.0.0" in (ota_status(device)["last_error"] or {}).get("artifact", ""))
    assert ota_status(device)["last_error"]["reason"] == "probe"
    assert serving(device) == hashlib.sha256(_fc(2)).hexdigest() and ota_status(device)["revision"] == "m2"
