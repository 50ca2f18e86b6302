"""The envelope in a running device: the flight controller's entity is guarded, and a refused
command from any source (the tools service, a plain publish as a wasm system sends it, a command
request as agents, the uplink and `edge cmd` send it) never reaches the wire."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rigs.mavpeer import MavPeer

from edge.cli.status import render
from edge.config import load_config
from edge.nats.commands import CommandClient
from edge.runtime import Runtime

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[device]
id = "rt1"
[[drivers]]
name = "fc"
kind = "mavlink"
entity = "drone1"
port = "{port}"
heartbeat_s = 0.2
link_timeout_s = 2.0
[safety]
max_horizontal_speed = 3.0
[safety.pod]
ceiling = 50.0
"""


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[tuple[Runtime, MavPeer]]:
    peer = MavPeer("ardupilot")
    await peer.start()
    path = tmp_path / "rt.toml"
    path.write_text(CONFIG.format(port=peer.port))
    rt = Runtime(load_config(path, data_dir=tmp_path / "data"))
    await rt.start()
    try:
        world = rt.world
        assert world is not None
        for _ in range(200):
            if world.has("drone1", "flight"):
                break
            await asyncio.sleep(0.02)
        yield rt, peer
    finally:
        await rt.stop()
        await peer.stop()


async def test_every_source_is_checked_and_nothing_refused_reaches_the_wire(
        device: tuple[Runtime, MavPeer]) -> None:
    rt, peer = device
    assert rt.nc is not None
    nc = rt.nc
    assert rt.status()["safety"]["guarded"] == ["drone1", "pod"]  # the driver's entity and the table's
    acks = await nc.subscribe("edge.rt1.ack.drone1.velocity")
    # a command request (agents, the uplink's replay of cloud commands, edge cmd)
    res = await CommandClient(nc, "rt1").send("drone1", "velocity", {"x": 1.0}, timeout=5, caller="agent")
    assert res.answer["reason"] == "envelope" and res.answer["envelope"]["rule"] == "disarmed"
    assert json.loads((await acks.next_msg(timeout=5)).data)["reason"] == "envelope"
    # the tools service
    msg = await nc.request("edge.rt1.tools.send_command", json.dumps(
        {"entity": "drone1", "verb": "velocity", "args": {"x": 1.0}}).encode(), timeout=5)
    ack = json.loads(msg.data)["result"]["ack"]
    assert ack["ok"] is False and ack["reason"] == "envelope"
    assert json.loads((await acks.next_msg(timeout=5)).data)["reason"] == "envelope"
    # a plain publish, as a wasm system publishes a command: no reply, the record says why
    await nc.publish("edge.rt1.cmd.drone1.velocity", b'{"x": 2.0}')
    record = json.loads((await acks.next_msg(timeout=5)).data)
    assert record["ok"] is False and record["reason"] == "envelope"
    await asyncio.sleep(0.3)
    assert peer.setpoints() == []
    assert rt.status()["safety"]["decisions"]["refused"] == 3
    text = render(rt.status())  # edge status's text view
    assert "safety:" in text and "guarded: drone1, pod" in text and "refused=3" in text


async def test_the_configured_limits_apply_in_the_device(device: tuple[Runtime, MavPeer]) -> None:
    rt, peer = device
    assert rt.nc is not None and rt.world is not None
    client = CommandClient(rt.nc, "rt1")
    assert (await client.send("drone1", "set_mode", {"mode": "GUIDED"}, timeout=5)).ok
    assert (await client.send("drone1", "arm", {}, timeout=5)).ok
    for _ in range(200):
        f = rt.world.get("drone1", "flight") if rt.world.has("drone1", "flight") else {}
        if f.get("armed") and f.get("mode") == "GUIDED":
            break
        await asyncio.sleep(0.02)
    rt.world.set("drone1", "position", {"x": 0.0, "y": 0.0, "z": 5.0})
    res = await client.send("drone1", "velocity", {"x": 4.0, "y": 0.0, "z": 0.0}, timeout=5)
    assert res.ok and res.answer["envelope"]["applied"]["x"] == 3.0  # [safety] max_horizontal_speed
    sp = peer.setpoints()[-1].msg
    assert sp.vy == pytest.approx(3.0)
