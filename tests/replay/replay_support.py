"""Shared pieces of the replay tests: a demo fleet on a test nats-server, and a changed physics."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Any

from nats.js.client import JetStreamContext

from edge.config import DeviceConfig, embedded_default
from edge.demo.fleet import apply_demo
from edge.replay.records import REC_STREAM, rec_filter
from edge.replay.source import Records, Window, read_records
from edge.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "demo"


def fleet_config(data_dir: Path, url: str) -> DeviceConfig:
    """The demo fleet (physics, patrol, battery over 3 drones) without the emulated hardware."""
    cfg = apply_demo(embedded_default(data_dir=data_dir, drones=3))
    cfg.demo = False  # no emulated flight controller, camera or model: only the wasm systems
    cfg.nats.url = url
    return cfg


async def run_for(cfg: DeviceConfig, seconds: float, *, record: bool = True) -> None:
    rt = Runtime(cfg, record=record)
    await rt.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await rt.stop()


async def all_records(js: JetStreamContext) -> Records:
    return await read_records(js, REC_STREAM, DEVICE, Window())


def physics_variant(out_dir: Path, body: str, *, version: str = "2.0.0") -> Path:
    """A physics component whose update is ``body`` (C, over px/py/pz/vx/vy/vz[i], dt); returns
    its manifest."""
    spec = importlib.util.spec_from_file_location("edge_components_build",
                                                  ROOT / "components" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    src = (ROOT / "components" / "physics" / "physics.c").read_text()
    original = "        px[i] += vx[i] * dt;\n"
    assert original in src
    out_dir.mkdir(parents=True, exist_ok=True)
    c = out_dir / "physics.c"
    c.write_text(src.replace(original, body + "\n"))
    module = build.compile_wasm([c], out_dir / "physics.wasm")
    manifest = (ROOT / "components" / "physics" / "manifest.toml").read_text()
    manifest = manifest.replace('version = "1.0.0"', f'version = "{version}"')
    manifest = manifest.replace('module = "../build/physics.wasm"', f'module = "{module}"')
    path = out_dir / "manifest.toml"
    path.write_text(manifest)
    return path


def ticks_of(records: Records, component: str) -> list[tuple[int, dict[str, Any]]]:
    return [(s, r) for s, r in records.items if r["k"] == "tick" and r.get("c") == component]


async def publish_garbage(js: JetStreamContext) -> None:
    subject = rec_filter(DEVICE).replace(">", "tick.physics")
    await js.publish(subject, b"not a record")
    await js.publish(subject, json.dumps({"k": "nonsense"}).encode())


def build_stamp(out_dir: Path) -> Path:
    """The clock_stamp test component (clock reads in edge_init and edge_on_message), compiled
    with components/build.py; returns its manifest."""
    spec = importlib.util.spec_from_file_location("edge_components_build",
                                                  ROOT / "components" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    here = Path(__file__).resolve().parent / "components"
    out_dir.mkdir(parents=True, exist_ok=True)
    build.compile_wasm([here / "clock_stamp.c"], out_dir / "clock_stamp.wasm")
    path = out_dir / "manifest.toml"
    path.write_text((here / "clock_stamp.toml").read_text())
    return path
