"""Drivers configured in a device config run inside the runtime: readings become components and
telemetry, commands on NATS reach actuators and are acknowledged, faults stay contained."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.config import load_config
from edge.errors import ConfigError
from edge.runtime import Runtime

CONFIG = """
[device]
id = "hw1"
[[drivers]]
name = "baro"
kind = "bme280"
entity = "pod"
backend = "emulated"
bus = 1
address = 0x76
rate_hz = 20
[[drivers]]
name = "status_led"
kind = "led"
entity = "pod"
backend = "emulated"
pin = 17
[[drivers]]
name = "ghost"
kind = "bme280"
entity = "pod"
backend = "real"
bus = 99
address = 0x77
rate_hz = 5
"""


async def wait_for(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[Runtime]:
    path = tmp_path / "hw.toml"
    path.write_text(CONFIG)
    rt = Runtime(load_config(path, data_dir=tmp_path / "data"))
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


async def test_sensor_readings_become_components_and_telemetry(device: Runtime) -> None:
    assert device.nc is not None
    sub = await device.nc.subscribe("edge.hw1.tele.pod.environment")
    msg = await sub.next_msg(timeout=5)
    reading = json.loads(msg.data)
    assert 800_00 < reading["pressure"] < 1100_00  # Pa, from the emulated chip's datasheet encoding
    await wait_for(lambda: device.world.has("pod", "environment"))
    env = device.world.get("pod", "environment")
    assert -40 < env["temperature"] < 85


async def test_actuator_command_acknowledged_and_state_recorded(device: Runtime) -> None:
    assert device.nc is not None
    acks = await device.nc.subscribe("edge.hw1.ack.pod.status_led")
    await device.nc.publish("edge.hw1.cmd.pod.status_led", json.dumps({"on": True}).encode())
    ack = json.loads((await acks.next_msg(timeout=5)).data)
    assert ack["ok"] is True
    await wait_for(lambda: device.world.has("pod", "status_led"))
    assert device.world.get("pod", "status_led")["value"] == 1.0
    await device.nc.publish("edge.hw1.cmd.pod.status_led", b"{not json")
    bad = json.loads((await acks.next_msg(timeout=5)).data)
    assert bad["ok"] is False  # a malformed command is refused with an ack, the driver keeps going
    await device.nc.publish("edge.hw1.cmd.pod.status_led", json.dumps({"on": False}).encode())
    assert json.loads((await acks.next_msg(timeout=5)).data)["ok"] is True
    # the driver-introduced component got a schema; a wrongly typed write is refused
    with pytest.raises(Exception, match="status_led"):
        device.world.set("pod", "status_led", {"value": "bright"})


async def test_missing_device_is_reported_and_the_rest_keeps_running(device: Runtime) -> None:
    await wait_for(lambda: any(d["name"] == "ghost" and d["errors"] > 0 for d in device.status()["drivers"]))
    drivers = {d["name"]: d for d in device.status()["drivers"]}
    assert drivers["ghost"]["state"] != "running"
    assert drivers["ghost"]["failure_cause"]
    assert drivers["baro"]["state"] == "running"


def test_bad_driver_config_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[drivers]]\nname = "baro"\nkind = "bme280"\nentity = "pod"\nrate_hz = "fast"\n')
    with pytest.raises(ConfigError) as err:  # at load, before anything is built
        load_config(path)
    assert err.value.file == str(path) and "rate_hz" in (err.value.key or "")
