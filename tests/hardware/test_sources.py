"""One source per component: priority, fallback when the primary is stale or its driver is dead,
every source under its own component name, and how old each value is."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import pytest

from drivers.serial.sim_fc import SimFlightController
from drivers.serial.sim_gps import SimGPS
from edge.cli.status import render
from edge.config import parse_config
from edge.errors import ConfigError
from edge.hardware.sources import SourceArbiter, SourceInfo
from edge.runtime import Runtime

pytestmark = pytest.mark.timeout(60)


def test_priority_fallback_and_return() -> None:
    running = {"fc": True, "gps": True}
    arb = SourceArbiter([SourceInfo("fc", 0), SourceInfo("gps", 1, frozenset({"geo"}), stale_after_s=1.0)],
                        lambda n: running[n])
    assert arb.route("d", "geo", "fc", now=0.0) == ["geo"]  # a single source: no copies
    assert arb.route("d", "geo", "gps", now=0.1) == ["geo_gps", "geo"]  # gps is primary for geo
    assert arb.route("d", "geo", "fc", now=0.2) == ["geo_fc"]
    assert arb.route("d", "velocity", "gps", now=0.2) == ["velocity"]
    assert arb.route("d", "velocity", "fc", now=0.3) == ["velocity_fc", "velocity"]  # config order: fc first
    assert arb.route("d", "velocity", "gps", now=0.4) == ["velocity_gps"]
    # the gps goes quiet: beyond its 1 s the fc takes over geo
    assert arb.route("d", "geo", "fc", now=1.0) == ["geo_fc"]  # 0.9 s: gps still fresh
    assert arb.route("d", "geo", "fc", now=1.2) == ["geo_fc", "geo"]
    # ... and gives it back at the gps's next reading
    assert arb.route("d", "geo", "gps", now=1.3) == ["geo_gps", "geo"]
    running["gps"] = False  # a dead driver is stale at once
    assert arb.route("d", "geo", "fc", now=1.4) == ["geo_fc", "geo"]
    assert arb.status()["d.geo"]["switches"] == 4  # fc -> gps -> fc -> gps -> fc


CONFIG = {
    "device": {"id": "src"},
    "drivers": [
        {"name": "fc", "kind": "mavlink", "entity": "uav", "port": "", "heartbeat_s": 0.2,
         "link_timeout_s": 2.0, "telemetry_hz": 10},
        {"name": "gps", "kind": "nmea_gps", "entity": "uav", "port": "", "timeout_s": 1.0,
         "primary": ["geo"], "stale_after_s": 0.8},
    ],
    "tools": {"enabled": False},
}


async def test_gps_primary_fc_fallback_in_a_running_device(tmp_path: Path, nats_url: str) -> None:
    fc = SimFlightController(rate_hz=10, heartbeat_hz=5)  # at its home, 47.397742 N
    gps = SimGPS(rate_hz=5, position=(47.5, 8.6, 500.0))  # somewhere else: tell the sources apart
    raw = json.loads(json.dumps(CONFIG))
    raw["nats"] = {"url": nats_url}
    raw["drivers"][0]["port"] = await fc.start()
    raw["drivers"][1]["port"] = await gps.start()
    rt = Runtime(parse_config(raw, data_dir=tmp_path / "src"))
    await rt.start()
    nc = await nats.connect(nats_url)
    w = rt.world

    async def until(pred: object, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    if pred():  # type: ignore[operator]
                        return
                except Exception:  # noqa: BLE001, S110 - not there yet
                    pass
                await asyncio.sleep(0.05)

    async def fresh() -> dict[str, dict[str, object]]:
        msg = await nc.request("edge.src.api.entity.get", json.dumps({"id": "uav"}).encode(), timeout=2)
        return json.loads(msg.data)["result"]["freshness"] if "result" in json.loads(msg.data) else \
            json.loads(msg.data)["freshness"]

    try:
        await until(lambda: w.has("uav", "geo_fc") and w.has("uav", "geo_gps"))
        await until(lambda: abs(w.get("uav", "geo")["lat"] - 47.5) < 1e-6)  # the primary
        assert abs(w.get("uav", "geo_fc")["lat"] - 47.397742) < 1e-6  # the other, under its own name
        f = await fresh()
        assert f["geo"]["source"] == "gps" and f["geo"]["stale"] is False and f["geo"]["others"] == ["fc"]
        assert 0 <= f["geo"]["age_s"] < 1.0 and f["geo_fc"]["source"] == "fc"
        assert f["flight"]["source"] == "fc"  # one source: no copies
        assert not w.has("uav", "flight_fc")
        # for 1 s the value never jumps between the two
        for _ in range(20):
            assert abs(w.get("uav", "geo")["lat"] - 47.5) < 1e-6
            await asyncio.sleep(0.05)
        gps.disconnect()  # the gps dies: geo falls back to the flight controller's
        await until(lambda: abs(w.get("uav", "geo")["lat"] - 47.397742) < 1e-6, 5)
        f = await fresh()
        assert f["geo"]["source"] == "fc" and f["geo"]["stale"] is False
        assert f["geo_gps"]["stale"] is True  # the dead driver's value: stale at once
        assert f["gps"]["stale"] is True  # its single-source component too
        await asyncio.sleep(0.6)
        f = await fresh()
        assert f["geo_gps"]["age_s"] > 0.5 and f["gps"]["age_s"] > 0.5 and f["geo"]["age_s"] < 0.5
        line = next(ln for ln in render(rt.status()).splitlines() if ln.strip().startswith("driver gps"))
        assert "failed" in line and "s ago" in line and "SerialException" in line
    finally:
        await nc.close()
        await rt.stop()
        await gps.stop()
        await fc.stop()


def test_primary_must_name_components(tmp_path: Path) -> None:
    raw = json.loads(json.dumps(CONFIG))
    raw["drivers"][1]["primary"] = ["Geo!"]
    raw["drivers"][0]["port"] = raw["drivers"][1]["port"] = "/dev/null"
    with pytest.raises(ConfigError, match=r"drivers\[1\]\.primary"):
        parse_config(raw, data_dir=tmp_path / "x")


def test_variant_components_take_the_known_schema() -> None:
    from edge.hardware.context import variant_schema
    from edge.world.schema import SchemaRegistry

    reg = SchemaRegistry()
    pack = variant_schema("battery_1", reg, {"voltage": 12.0, "unknown": "level"})
    assert pack is not None and dict(pack.fields) == dict(reg.get("battery").fields)
    geo = variant_schema("geo_gps", reg, {"lat": 1.0})
    assert geo is not None and geo.units == reg.get("geo").units
    assert variant_schema("status_led", reg, {"value": 1.0}) is None  # no known prefix
    assert variant_schema("battery_led", reg, {"value": 1.0}) is None  # a prefix, but not its fields


async def test_two_packs_in_the_world_with_unknowns_flagged(tmp_path: Path, nats_url: str) -> None:
    fc = SimFlightController(rate_hz=10, heartbeat_hz=5, packs=2, unknown={1: ("remaining", "current")},
                             components=("gimbal",))
    raw = {"device": {"id": "bat"}, "nats": {"url": nats_url}, "tools": {"enabled": False},
           "drivers": [{"name": "fc", "kind": "mavlink", "entity": "uav", "port": await fc.start(),
                        "heartbeat_s": 0.2}]}
    rt = Runtime(parse_config(raw, data_dir=tmp_path / "bat"))
    await rt.start()
    try:
        w = rt.world
        async with asyncio.timeout(10):
            while not (w.has("uav", "battery_1") and w.has("uav", "battery")):
                await asyncio.sleep(0.05)
        b0, b1 = w.get("uav", "battery"), w.get("uav", "battery_1")
        assert b0["unknown"] == "" and b0["level"] == 1.0 and abs(b0["voltage"] - 12.6) < 0.02
        assert b1["unknown"] == "current,level" and abs(b1["voltage"] - 12.6) < 0.02
        assert w.schemas.get("battery_1").fields == w.schemas.get("battery").fields
        fc_status = next(d for d in rt.status()["drivers"] if d["name"] == "fc")
        assert fc_status["details"]["battery_packs"] == [0, 1]
        assert fc_status["details"]["components"]["154"]["type"] == "GIMBAL"
        assert fc_status["details"]["messages"]["BATTERY_STATUS"]["count"] > 0
    finally:
        await rt.stop()
        await fc.stop()


async def test_a_reading_the_world_refuses_is_counted_not_fatal(tmp_path: Path, nats_url: str) -> None:
    fc = SimFlightController(rate_hz=10, heartbeat_hz=5, packs=2)
    raw = {"device": {"id": "bad"}, "nats": {"url": nats_url}, "tools": {"enabled": False},
           "schemas": {"battery_1": {"fields": {"x": "f64"}}},  # a component of that name, other fields
           "drivers": [{"name": "fc", "kind": "mavlink", "entity": "uav", "port": await fc.start(),
                        "heartbeat_s": 0.2}]}
    rt = Runtime(parse_config(raw, data_dir=tmp_path / "bad"))
    await rt.start()
    try:
        def fc_status() -> dict[str, object]:
            return next(d for d in rt.status()["drivers"] if d["name"] == "fc")

        async with asyncio.timeout(10):
            while not fc_status()["details"]["malformed"]:  # type: ignore[index]
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        st = fc_status()
        assert st["state"] == "running" and "battery_1" in str(st["last_error"])
        assert rt.world.has("uav", "battery") and not rt.world.has("uav", "battery_1")
    finally:
        await rt.stop()
        await fc.stop()
