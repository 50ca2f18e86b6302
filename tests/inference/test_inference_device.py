"""Inference in a running device: the object store watch swaps models in (and refuses bad ones, shown
in ``edge status``), and detections reach the agents on the subject they subscribe to."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import api
from tflite_modelgen import float_fc

from edge.cli.status import render
from edge.config import parse_config
from edge.inference.blazeface import face_model_path
from edge.inference.registry import DIGEST_HEADER
from edge.runtime import Runtime

pytestmark = pytest.mark.timeout(60)


def model(scale: float) -> bytes:
    import numpy as np

    return float_fc(np.arange(12, dtype=np.float32).reshape(3, 4) * scale, np.zeros(3, np.float32))


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


async def put(store: Any, name: str, data: bytes, digest: str) -> None:
    await store.put(name, data, meta=api.ObjectMeta(name=name, headers={DIGEST_HEADER: digest}))


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.05)


async def test_running_device_swaps_new_versions_and_refuses_bad_ones(tmp_path: Path, nats_url: str,
                                                                      nc: Client) -> None:
    store = await nc.jetstream().create_object_store("models")
    v1, v2 = model(0.5), model(-1.5)
    await put(store, "fc.tflite", v1, sha(v1))
    cfg = parse_config({"device": {"id": "inf"}, "nats": {"url": nats_url},
                        "models": [{"name": "fc", "object": "fc.tflite"}], "tools": {"enabled": False}},
                       data_dir=tmp_path / "inf")
    rt = Runtime(cfg)
    await rt.start()
    try:
        def fc_status() -> dict[str, Any]:
            return dict(rt.status()["inference"]["models"]["fc"])

        assert fc_status()["sha256"] == sha(v1) and rt.status()["inference"]["watched_buckets"] == ["models"]
        await put(store, "fc.tflite", v2, sha(v2))  # a new version: swapped in
        await until(lambda: fc_status()["sha256"] == sha(v2))
        assert fc_status()["loads"] == 2 and fc_status()["load_errors"] == 0

        await put(store, "fc.tflite", v1, "ab" * 32)  # digest mismatch: refused, v2 serving
        await until(lambda: fc_status()["load_errors"] == 1)
        st = fc_status()
        assert st["sha256"] == sha(v2) and st["state"] == "serving" and "does not match" in st["last_load_error"]
        junk = b"\x00not a flatbuffer" * 40  # corrupt, with its own correct digest: refused
        await put(store, "fc.tflite", junk, sha(junk))
        await until(lambda: fc_status()["load_errors"] == 2)
        st = fc_status()
        assert st["sha256"] == sha(v2) and st["last_load_error_ago_s"] < 5
        text = render(rt.status())
        line = next(ln for ln in text.splitlines() if ln.strip().startswith("model fc:"))
        assert "2 load errors" in line and "s ago" in line and f"serving sha256 {sha(v2)[:12]}" in line
        assert st["last_load_error"] in line
    finally:
        await rt.stop()


async def test_missing_bucket_is_an_error_in_status(tmp_path: Path, nats_url: str) -> None:
    cfg = parse_config({"device": {"id": "inf2"}, "nats": {"url": nats_url},
                        "models": [{"name": "fc", "object": "fc.tflite", "bucket": "nobucket"}],
                        "tools": {"enabled": False}}, data_dir=tmp_path / "inf2")
    rt = Runtime(cfg)
    await rt.start()
    try:
        errors = rt.status()["inference"]["errors"]
        assert set(errors) == {"fc", "watch:nobucket"} and errors["fc"]["ago_s"] >= 0
        text = render(rt.status())
        assert any(ln.strip().startswith("watch:nobucket:") and "s ago" in ln for ln in text.splitlines())
    finally:
        await rt.stop()


async def test_vision_detections_reach_the_wasm_follow_agent(tmp_path: Path, nats_url: str, nc: Client,
                                                             components_dir: Path) -> None:
    cfg = parse_config({
        "device": {"id": "vis"}, "nats": {"url": nats_url},
        "drivers": [{"name": "camera", "kind": "camera", "entity": "cam", "backend": "emulated",
                     "source": "synthetic", "face": True, "fps": 10, "width": 320, "height": 240}],
        "models": [{"name": "face", "path": str(face_model_path())}],
        "vision": [{"model": "face", "entity": "cam"}],
        "components": [{"manifest": str(components_dir / "follow_agent" / "manifest.toml")}],
        "tools": {"enabled": False},
    }, data_dir=tmp_path / "vis")
    got: dict[str, list[Any]] = {"det": [], "cmd": []}

    async def on_det(msg: Any) -> None:
        got["det"].append(json.loads(msg.data))

    async def on_cmd(msg: Any) -> None:
        got["cmd"].append(json.loads(msg.data))

    await nc.subscribe("edge.vis.evt.cam.detections", cb=on_det)
    await nc.subscribe("edge.vis.cmd.cam.velocity", cb=on_cmd)
    rt = Runtime(cfg)
    await rt.start()
    try:
        await until(lambda: bool(got["det"]) and bool(got["cmd"]), 30)  # the wasm agent heard the pipeline
        assert got["det"][0]["items"] and got["det"][0]["entity"] == "cam"
        assert set(got["cmd"][0]) == {"x", "y", "z"}
    finally:
        await rt.stop()
