"""Drivers configured in a device config run inside the runtime: readings become components and
telemetry, commands on NATS reach actuators and are answered (and recorded), faults stay
contained, and a command to a driver that is down is answered at once with the driver's state."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.serial.sim_fc import SimFlightController
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
    assert ack["ok"] is True and ack["value"] == 1.0 and ack["id"]
    # `nats req` on a command subject gets the answer; the ack subject still has the record
    reply = await device.nc.request("edge.hw1.cmd.pod.status_led", b'{"on": true}', timeout=5,
                                    headers={"Edge-Command-Id": "led-1"})
    answer = json.loads(reply.data)
    assert answer == {"ok": True, "id": "led-1", "value": 1.0}
    assert json.loads((await acks.next_msg(timeout=5)).data) == answer
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


FC_CONFIG = """
[device]
id = "fly1"
[[drivers]]
name = "fc"
kind = "mavlink"
entity = "drone1"
port = "{port}"
heartbeat_s = 0.1
link_timeout_s = 1.0
command_timeout_s = 1.0
"""


async def test_rtl_during_a_serial_outage_is_answered_at_once(tmp_path: Path) -> None:
    sim = SimFlightController(rate_hz=20, heartbeat_hz=10)
    await sim.start(str(tmp_path / "fc"))  # a stable link to the emulated flight controller's pty
    path = tmp_path / "fly.toml"
    path.write_text(FC_CONFIG.format(port=tmp_path / "fc"))
    rt = Runtime(load_config(path, data_dir=tmp_path / "data"))
    await rt.start()

    def fc_state() -> str:
        return str(next(d for d in rt.status()["drivers"] if d["name"] == "fc")["state"])

    try:
        assert rt.nc is not None
        nc = rt.nc
        acks = await nc.subscribe("edge.fly1.ack.drone1.rtl")
        await wait_for(lambda: fc_state() == "running")
        answer = json.loads((await nc.request("edge.fly1.cmd.drone1.rtl", b"{}", timeout=5)).data)
        assert answer["command"] == "MAV_CMD_NAV_RETURN_TO_LAUNCH"  # the flight controller's own answer
        assert json.loads((await acks.next_msg(timeout=5)).data) == answer
        sim.disconnect()  # serial outage: the port is gone, the driver fails and backs off
        await wait_for(lambda: fc_state() == "backoff")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:  # a retry may be starting the instant we ask: driver-down is an answer too
            t0 = loop.time()
            answer = json.loads((await nc.request("edge.fly1.cmd.drone1.rtl", b"{}", timeout=5)).data)
            assert loop.time() - t0 < 1.0, "answered at once, not after a timeout"
            assert answer["ok"] is False and answer["driver"] == "fc" and "driver 'fc'" in answer["error"]
            assert answer["reason"] in ("backoff", "driver-down")
            assert json.loads((await acks.next_msg(timeout=5)).data) == answer  # recorded, once
            if answer["reason"] == "backoff" or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert answer["reason"] == "backoff" and answer["state"] == "backoff"
        assert answer["retry_in_s"] is not None and answer["last_error"]
        assert "is in backoff after" in answer["error"] and "retry in" in answer["error"]
        assert rt.status()["commands"]["answers"]["backoff"] >= 1
    finally:
        await rt.stop()
        await sim.stop()


async def test_a_command_to_a_missing_driver_is_answered_with_its_state(tmp_path: Path) -> None:
    path = tmp_path / "gone.toml"
    path.write_text(FC_CONFIG.format(port=tmp_path / "no-such-port").replace('"fly1"', '"gone1"'))
    rt = Runtime(load_config(path, data_dir=tmp_path / "data"))
    await rt.start()
    try:
        assert rt.nc is not None
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        reply = await rt.nc.request("edge.gone1.cmd.drone1.arm", b"{}", timeout=5,
                                    headers={"Edge-Command-Id": "arm-1"})
        assert loop.time() - t0 < 1.0
        answer = json.loads(reply.data)
        assert answer["ok"] is False and answer["id"] == "arm-1" and answer["driver"] == "fc"
        assert answer["reason"] in ("backoff", "driver-down") and "no-such-port" in answer["last_error"]
        # a verb no driver has is a different answer
        other = json.loads((await rt.nc.request("edge.gone1.cmd.drone1.fly", b"{}", timeout=5)).data)
        assert other["reason"] == "no-handler"
    finally:
        await rt.stop()
