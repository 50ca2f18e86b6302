"""The runtime end to end, in process: embedded NATS, world, wasm components, device API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from edge.cli.client import ApiError, DeviceClient
from edge.config import DeviceConfig, EntitySpec, embedded_default
from edge.demo.fleet import apply_demo
from edge.runtime import Runtime


async def wait_for(pred, timeout: float = 10.0, step: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


@pytest.fixture
async def demo(tmp_path: Path, components_dir: Path) -> AsyncIterator[Runtime]:
    cfg = apply_demo(embedded_default(data_dir=tmp_path / "demo", drones=3))
    cfg.state.persist_interval = 0.2
    rt = Runtime(cfg)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


async def test_demo_fleet_moves_and_drains(demo: Runtime) -> None:
    world = demo.world
    start = world.get("drone-1", "position")
    level = world.get("drone-1", "battery")["level"]
    await wait_for(lambda: world.get("drone-1", "position") != start)
    v = world.get("drone-1", "velocity")
    assert abs((v["x"] ** 2 + v["y"] ** 2) ** 0.5 - 4.0) < 1e-6  # patrol steers at the drone's speed
    await wait_for(lambda: world.get("drone-1", "battery")["level"] < level, timeout=5)
    states = {c["name"]: c["state"] for c in demo.components_status()}
    assert states == {"physics": "running", "patrol": "running", "battery": "running"}


async def test_demo_hardware_and_vision_feed_the_hardware_drone(demo: Runtime) -> None:
    world = demo.world
    # the emulated flight controller (MAVLink over a pty) and GPS (NMEA) fill drone-0's components
    await wait_for(lambda: world.has("drone-0", "geo") and world.get("drone-0", "geo")["lat"] != 0.0)
    await wait_for(lambda: world.has("drone-0", "flight") and world.get("drone-0", "flight")["mode"] != "")
    await wait_for(lambda: world.has("drone-0", "imu") and abs(world.get("drone-0", "imu")["az"] - 9.8) < 0.5)
    status = demo.status()
    drivers = {d["name"]: d["state"] for d in status["drivers"]}
    assert set(drivers) == {"emulators", "fc", "gps", "imu", "power", "camera"}
    await wait_for(lambda: all(d["state"] == "running" for d in demo.status()["drivers"]))
    # the synthetic camera's frames go through the face model into the detections component
    # the demo camera draws a wandering face: the real model finds it
    await wait_for(lambda: world.has("drone-0", "detections") and world.get("drone-0", "detections")["count"] >= 1)
    item = world.get("drone-0", "detections")["items"][0]
    assert item["label"] == "face" and item["score"] >= 0.6
    inference = demo.status()["inference"]
    assert inference["models"]["face"]["state"] == "serving"
    assert inference["pipelines"][0]["processed"] > 0


async def test_api_entity_lifecycle(demo: Runtime) -> None:
    assert demo.server is not None
    async with DeviceClient(demo.server.url) as client:  # device discovered via $SRV.INFO
        assert client.device == "demo"
        ids = [e["id"] for e in await client.call("entity", "list", {"kind": "drone"})]
        assert ids == ["drone-0", "drone-1", "drone-2", "drone-3"]
        spawned = await client.call(
            "entity",
            "spawn",
            {"id": "scout", "kind": "drone", "components": {"position": {"x": 0}, "velocity": {"x": 2.0}}},
        )
        assert spawned["components"]["velocity"]["x"] == 2.0
        await wait_for(lambda: demo.world.get("scout", "position")["x"] > 0.1)  # physics picked it up
        got = await client.call("entity", "set", {"id": "scout", "component": "velocity", "values": {"x": 0}})
        assert got["x"] == 0.0
        with pytest.raises(ApiError, match="no field 'q'") as err:
            await client.call("entity", "set", {"id": "scout", "component": "velocity", "values": {"q": 1}})
        assert err.value.fields["component"] == "velocity"
        with pytest.raises(ApiError, match="already exists"):
            await client.call("entity", "spawn", {"id": "scout"})
        with pytest.raises(ApiError, match="needs 'id'"):
            await client.call("entity", "get", {})
        await client.call("entity", "rm", {"id": "scout"})
        assert "scout" not in demo.world
        status = await client.call("status", "get")
        assert status["nats"]["connected"] and len(status["components"]) == 3


async def test_malformed_api_request_is_answered_not_fatal(demo: Runtime) -> None:
    assert demo.nc is not None
    msg = await demo.nc.request("edge.demo.api.entity.get", b"{nope", timeout=2)
    assert b"not JSON" in msg.data
    msg = await demo.nc.request("edge.demo.api.entity.get", b"[1]", timeout=2)
    assert b"JSON object" in msg.data
    assert demo.world.get("drone-1", "position")  # still serving


async def test_component_unload_and_reload(demo: Runtime, components_dir: Path) -> None:
    await demo.unload_component("patrol")
    assert [c["name"] for c in demo.components_status()] == ["battery", "physics"]
    with pytest.raises(Exception, match="no component 'patrol'"):
        await demo.unload_component("patrol")
    await demo.load_component(str(components_dir / "patrol" / "manifest.toml"))
    await wait_for(lambda: any(c["name"] == "patrol" and c["state"] == "running" for c in demo.components_status()))


async def test_restart_resumes_from_persisted_state(tmp_path: Path, components_dir: Path) -> None:
    cfg = apply_demo(embedded_default(data_dir=tmp_path / "d", drones=2))
    rt = Runtime(cfg)
    await rt.start()
    rt.world.spawn("marker", components={"position": {"x": 42.0}})
    await wait_for(lambda: rt.world.get("drone-1", "position")["x"] != 0.0)
    await rt.stop()  # clean stop flushes everything
    moved = rt.world.get("drone-1", "position")

    cfg2 = apply_demo(embedded_default(data_dir=tmp_path / "d", drones=2))
    rt2 = Runtime(cfg2)
    t0 = asyncio.get_running_loop().time()
    await rt2.start()
    try:
        elapsed = asyncio.get_running_loop().time() - t0
        assert rt2.world.get("marker", "position")["x"] == 42.0
        # restored state wins over the config's initial values: drone-1 (4 m/s) continues from
        # where it stopped, so it is within the distance it can fly since the restart began
        now = rt2.world.get("drone-1", "position")
        dist = ((now["x"] - moved["x"]) ** 2 + (now["y"] - moved["y"]) ** 2) ** 0.5
        assert dist <= 4.0 * elapsed + 0.5
    finally:
        await rt2.stop()


async def test_bad_component_is_reported_and_device_still_starts(tmp_path: Path, components_dir: Path) -> None:
    bad = tmp_path / "bad" / "manifest.toml"
    bad.parent.mkdir()
    bad.write_text('name = "bad"\nversion = "1"\ncontract = 99\nmodule = "x.wasm"\n')
    cfg = DeviceConfig(device="t1", data_dir=tmp_path / "t1")
    cfg.components = [bad, components_dir / "physics" / "manifest.toml"]
    cfg.entities = [EntitySpec("e", components={"position": {}, "velocity": {"x": 1}})]
    rt = Runtime(cfg)
    await rt.start()
    try:
        assert [c["name"] for c in rt.components_status()] == ["physics"]
        assert rt.faults and rt.faults[0]["kind"] == "load" and "contract" in rt.faults[0]["message"]
        await wait_for(lambda: rt.world.get("e", "position")["x"] > 0)
    finally:
        await rt.stop()


def initfail_component(directory: Path) -> Path:
    """tests/wasm/components/initfail.c (edge_init returns 1) compiled, with its manifest."""
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("edge_components_build", root / "components" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    directory.mkdir(parents=True, exist_ok=True)
    build.compile_wasm([root / "tests" / "wasm" / "components" / "initfail.c"], directory / "initfail.wasm")
    manifest = directory / "manifest.toml"
    manifest.write_text('name = "initfail"\nversion = "1.0.0"\ncontract = 1\nmodule = "initfail.wasm"\n')
    return manifest


async def test_component_whose_edge_init_fails_is_refused_and_not_loaded(tmp_path: Path, components_dir: Path) -> None:
    bad = initfail_component(tmp_path / "initfail")
    cfg = DeviceConfig(device="t4", data_dir=tmp_path / "t4")
    cfg.components = [bad]  # at device start: reported, not loaded, the device comes up
    rt = Runtime(cfg)
    await rt.start()
    try:
        reason = "component 'initfail' failed to start: edge_init returned 1; it is not loaded"
        assert rt.components_status() == []
        assert [(f["kind"], f["message"]) for f in rt.faults] == [("load", reason)]
        assert rt.server is not None
        async with DeviceClient(rt.server.url) as client:  # `edge component load` answers an error
            with pytest.raises(ApiError) as err:
                await client.call("component", "load", {"manifest": str(bad)})
            assert err.value.message == reason
            assert err.value.fields["component"] == "initfail" and err.value.fields["path"] == str(bad)
            assert await client.call("component", "list") == []
            physics = str(components_dir / "physics" / "manifest.toml")
            assert await client.call("component", "load", {"manifest": physics}) == {"name": "physics", "version": "1.0.0"}
            assert [c["name"] for c in await client.call("component", "list")] == ["physics"]
    finally:
        await rt.stop()


async def test_component_querying_unknown_field_is_refused(tmp_path: Path, components_dir: Path) -> None:
    m = tmp_path / "q" / "manifest.toml"
    m.parent.mkdir()
    (m.parent / "q.wasm").write_bytes((components_dir / "build" / "physics.wasm").read_bytes())
    m.write_text(
        'name = "q"\nversion = "1.0.0"\ncontract = 1\nmodule = "q.wasm"\n'
        '[query]\nread = ["position.w"]\n[run]\ntick_hz = 1.0\n'
    )
    cfg = DeviceConfig(device="t2", data_dir=tmp_path / "t2")
    rt = Runtime(cfg)
    await rt.start()
    try:
        with pytest.raises(Exception, match="position.w"):
            await rt.load_component(str(m))
    finally:
        await rt.stop()


async def test_embedded_nats_server_restarted_and_state_keeps_flowing(demo: Runtime) -> None:
    assert demo.server is not None and demo.persister is not None
    old_pid = demo.server.pid
    await demo.server.kill()
    await wait_for(lambda: demo.server is not None and demo.server.running and demo.server.pid != old_pid, timeout=15)
    await wait_for(lambda: demo.nc is not None and demo.nc.is_connected, timeout=15)
    writes = demo.persister.writes
    await wait_for(lambda: demo.persister is not None and demo.persister.writes > writes, timeout=15)
    nc = await nats.connect(demo.server.url)
    try:
        kv = await nc.jetstream().key_value("edge-state")
        assert (await kv.get("drone-1.position")).value
    finally:
        await nc.close()


async def test_wasm_publish_and_private_kv_survive_restart(tmp_path: Path, components_dir: Path) -> None:
    def config() -> DeviceConfig:
        cfg = DeviceConfig(device="kvdev", data_dir=tmp_path / "kv")
        cfg.components = [components_dir / "battery" / "manifest.toml"]
        cfg.entities = [EntitySpec("b1", components={"battery": {"level": 0.21, "drain": 0.05}})]
        return cfg

    async def one_low_event(rt: Runtime) -> dict[str, object]:
        assert rt.nc is not None
        sub = await rt.nc.subscribe("edge.kvdev.evt.battery.low")
        msg = await sub.next_msg(timeout=5)
        await sub.unsubscribe()
        import json

        return dict(json.loads(msg.data))

    async def low_events(rt: Runtime) -> int:
        assert rt.js is not None
        kv = await rt.js.key_value("edge-components")
        return int.from_bytes((await kv.get("battery.low_events")).value or b"", "little")

    rt = Runtime(config())
    await rt.start()
    try:
        event = await one_low_event(rt)
        assert event["entity"] == "b1"
        for _ in range(50):
            try:
                if await low_events(rt) == 1:
                    break
            except Exception:
                pass
            await asyncio.sleep(0.1)
        assert await low_events(rt) == 1
    finally:
        await rt.stop()

    rt2 = Runtime(config())
    await rt2.start()
    try:
        rt2.world.set("b1", "battery", {"level": 0.21})
        await one_low_event(rt2)
        for _ in range(50):
            if await low_events(rt2) == 2:  # the counter continued from the stored snapshot
                break
            await asyncio.sleep(0.1)
        assert await low_events(rt2) == 2
    finally:
        await rt2.stop()
