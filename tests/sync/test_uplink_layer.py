"""A device runtime as a leaf node of a hub: telemetry and state go up, cloud commands come down
to a driver and their results go back, across a hub outage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from edge.config import load_config
from edge.errors import ConfigError
from edge.runtime import Runtime
from edge.sync.hub.fleet import fleet_status, provision_device, send_command
from edge.sync.hub.server import HubServer

DEVICE = """
[device]
id = "dev1"
[hub]
url = "{leaf}"
user = "dev1"
password = "{password}"
[sync]
tele_max_bytes = 4000000
[state]
persist_interval = 0.2
[[entities]]
id = "pod"
components = {{ position = {{ x = 1.5 }} }}
[[drivers]]
name = "lamp"
kind = "led"
entity = "pod"
backend = "emulated"
pin = 22
[[drivers]]
name = "baro"
kind = "bme280"
entity = "pod"
backend = "emulated"
bus = 3
address = 0x76
rate_hz = 10
"""


async def eventually(fn, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            result = await fn()
            if result:
                return result
        except Exception:
            if loop.time() > deadline:
                raise
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    server = HubServer(tmp_path / "hub")
    await server.start(supervise=True)
    try:
        yield server
    finally:
        await server.stop()


async def test_device_syncs_through_the_hub(tmp_path: Path, hub: HubServer) -> None:
    cred = await hub.add_device("dev1")
    cloud = await nats.connect(hub.client_url)
    js = cloud.jetstream()
    await provision_device(js, "dev1")
    path = tmp_path / "dev1.toml"
    path.write_text(DEVICE.format(leaf=hub.leaf_url, password=cred.password))
    rt = Runtime(load_config(path, data_dir=tmp_path / "dev1"))
    await rt.start()
    try:
        # telemetry from the emulated barometer reaches the hub's stream for this device
        async def tele_on_hub() -> bool:
            info = await js.stream_info("TELE_dev1")
            return info.state.messages > 5

        await eventually(tele_on_hub)
        # entity state is mirrored into the hub's KV bucket for the device, including what was
        # written before the link came up (the uplink resyncs state on link-up)
        async def state_on_hub() -> bool:
            kv = await js.key_value("edge-state-dev1")
            return json.loads((await kv.get("pod.position")).value or b"")["x"] == 1.5

        await eventually(state_on_hub)
        # a command queued in the cloud reaches the LED driver; its result comes back up
        acks = await cloud.subscribe("edge.dev1.ack.>")  # results are mirrored into EVT_dev1
        await send_command(js, "dev1", "pod.lamp", json.dumps({"on": True}).encode(), msg_id="c-1")
        await eventually(lambda: _is_on(rt), timeout=20)

        async def result_on_hub() -> dict[str, object]:
            msg = await js.get_last_msg("EVT_dev1", "edge.dev1.ack.c-1")
            return json.loads(msg.data or b"")  # type: ignore[no-any-return]

        # the command's result is the driver's answer to the request, under the cloud command's id
        assert await eventually(result_on_hub) == {"ok": True, "id": "c-1", "value": 1.0}
        await acks.unsubscribe()
        assert rt.status()["sync"]["commands"]["played"] == 1
        assert rt.status()["sync"]["commands"]["answered"] == 1
        # the hub sees the device's link as up
        status = await eventually(lambda: _fleet_up(js))
        assert status.device == "dev1"
    finally:
        await rt.stop()
        await cloud.close()


async def _is_on(rt: Runtime) -> bool:
    return rt.world.has("pod", "lamp") and rt.world.get("pod", "lamp")["value"] == 1.0


async def _fleet_up(js):  # type: ignore[no-untyped-def]
    statuses = await fleet_status(js, ["dev1"])
    return statuses[0] if statuses[0].link == "up" else None


def test_hub_and_sync_config_errors_name_key_and_file(tmp_path: Path) -> None:
    for text, key in [
        ('[hub]\nuser = "x"\n', "hub.url"),
        ('[hub]\nurl = "nats-leaf://h"\nport = 3\n', "hub.port"),
        ("[sync]\ntele_max_bytes = -1\n", "sync.tele_max_bytes"),
        ("[sync]\nturbo = 1\n", "sync.turbo"),
    ]:
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_config(path)  # refused at load
        assert err.value.key == key and err.value.file == str(path)
