"""Shared parts of the OTA tests: a fleet repository, crafted components, a device runtime."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.config import DeviceConfig, EntitySpec
from edge.ota import repo as fleet
from edge.ota.bundle import pack
from edge.ota.config import OtaConfig
from edge.runtime import Runtime
from edge.wasm.wasmbin import Section, encode_u32

def _vec(items: list[bytes]) -> bytes:
    return encode_u32(len(items)) + b"".join(items)


def _export(name: str, kind: int) -> bytes:
    return encode_u32(len(name)) + name.encode() + bytes((kind,)) + encode_u32(0)


def tick_module(code: bytes) -> bytes:
    """A contract-1 module: one page of memory and an ``edge_tick`` whose body is ``code``."""
    body = b"\x00" + code + b"\x0b"
    return (b"\x00asm\x01\x00\x00\x00"
            + Section(1, _vec([b"\x60\x02\x7f\x7c\x01\x7f"])).encode()
            + Section(3, _vec([b"\x00"])).encode()
            + Section(5, _vec([b"\x00\x01"])).encode()
            + Section(7, _vec([_export("memory", 2), _export("edge_tick", 0)])).encode()
            + Section(10, _vec([encode_u32(len(body)) + body])).encode())


OK_CODE = b"\x41\x00"  # i32.const 0: the tick succeeds
TRAP_CODE = b"\x00"  # unreachable: the tick traps


def component(base: Path, name: str, version: str, code: bytes = OK_CODE, *, contract: int = 1,
              tick_hz: float = 20.0, extra: str = "", module: bytes | None = None) -> Path:
    d = base / f"{name}-{version}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "mod.wasm").write_bytes(module if module is not None else tick_module(code))
    (d / "manifest.toml").write_text(
        f'name = "{name}"\nversion = "{version}"\ncontract = {contract}\nmodule = "mod.wasm"\n\n'
        f'[query]\nread = ["position.x"]\nwrite = []\n\n[run]\ntick_hz = {tick_hz}\n{extra}')
    return d / "manifest.toml"


def init_fail_module() -> bytes:
    """A module whose ``edge_init`` returns 1 (a failed init) and whose tick would succeed."""
    tick_body = b"\x00\x41\x00\x0b"
    init_body = b"\x00\x41\x01\x0b"
    return (b"\x00asm\x01\x00\x00\x00"
            + Section(1, _vec([b"\x60\x02\x7f\x7c\x01\x7f", b"\x60\x00\x01\x7f"])).encode()
            + Section(3, _vec([b"\x00", b"\x01"])).encode()
            + Section(5, _vec([b"\x00\x01"])).encode()
            + Section(7, _vec([_export("memory", 2), _export("edge_tick", 0),
                               encode_u32(9) + b"edge_init" + b"\x00" + encode_u32(1)])).encode()
            + Section(10, _vec([encode_u32(len(tick_body)) + tick_body,
                                encode_u32(len(init_body)) + init_body])).encode())


def publish_component(repo: Path, src: Path, manifest: Path, **kw: Any) -> str:
    data, meta = pack(manifest)
    return fleet.publish(repo, data, kind="component", name=str(meta["name"]),
                         version=str(meta["version"]), custom={"contract": meta["contract"]}, **kw)


def device_config(tmp: Path, url: str, root: Path, *, probation_s: float = 0.5, device: str = "dev1",
                  **kw: Any) -> DeviceConfig:
    cfg = DeviceConfig(device=device, data_dir=tmp / f"data-{device}")
    cfg.nats.url = url
    cfg.entities.append(EntitySpec("e1", "drone", {}, {"position": {"x": 0.0}}))
    cfg.ota = OtaConfig(root=root, hub_domain="", poll_s=0.2, probation_s=probation_s, **kw)
    return cfg


async def wait_for(pred: Callable[[], Any], timeout: float = 15.0, step: float = 0.05) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


def ota_status(rt: Runtime) -> dict[str, Any]:
    return dict(rt.status()["ota"])


def versions(rt: Runtime) -> dict[str, str]:
    return {c["name"]: c["version"] for c in rt.components_status()}


def loads(data: bytes) -> Any:
    return json.loads(data)


def leaf_device_config(tmp: Path, leaf_url: str, password: str, root: Path, *, device: str,
                       probation_s: float = 0.5) -> DeviceConfig:
    """A device with its own embedded nats-server, a leaf of the hub at ``leaf_url``."""
    from edge.sync.device.leaf import HubLink

    cfg = DeviceConfig(device=device, data_dir=tmp / f"data-{device}")
    cfg.hub = HubLink(url=leaf_url, user=device, password=password)
    cfg.entities.append(EntitySpec("e1", "drone", {}, {"position": {"x": 0.0}}))
    cfg.ota = OtaConfig(root=root, hub_domain="hub", poll_s=0.2, probation_s=probation_s)
    return cfg
