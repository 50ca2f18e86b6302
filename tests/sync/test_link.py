"""Device <-> hub through a real leaf node: sourcing, KV mirror, commands, status, security."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from edge.nats.server import NatsServer
from edge.nats import subjects as naming
from edge.errors import NatsError
from edge.sync.hub.fleet import (
    deprovision_device,
    fleet_status,
    list_devices,
    provision_device,
    run_hub,
    send_command,
)
from edge.sync.device.commands import CommandReceiver
from edge.sync.device.leaf import HubLink, device_server_options
from edge.nats.publisher import Publisher, _parse_ack
from edge.sync.device.streams import DeviceStreamConfig, ensure_device_streams
from rigs.link import read_stream, sync_rig
from isolation_support import assert_confined

pytestmark = pytest.mark.timeout(60)


async def test_streams_and_state_reach_the_hub(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        js = rig.dev_js()
        kv = await js.create_key_value(bucket=naming.STATE_BUCKET)
        await kv.put("e1.pos", b"1,2")
        async with Publisher(rig.dev_nc["dev1"]) as pub:
            for i in range(200):
                await pub.publish(f"edge.dev1.tele.t{i % 2}", str(i).encode())
                await pub.publish("edge.dev1.evt.e", str(i).encode(), msg_id=f"e{i}")
            await pub.flush(10)
        await rig.wait_hub_count("TELE", 200)
        await rig.wait_hub_count("EVT", 200)
        tele = await read_stream(rig.hub_js, "TELE_dev1")
        for sub in ("edge.dev1.tele.t0", "edge.dev1.tele.t1"):
            seq = [int(d) for s, d, _ in tele if s == sub]
            assert seq == sorted(seq) and len(seq) == 100
        evt = await read_stream(rig.hub_js, "EVT_dev1")
        assert [d for _, d, _ in evt] == [str(i).encode() for i in range(200)]
        # The hub reads the device's entity state as its own KV bucket.
        hkv = await rig.hub_js.key_value(naming.hub_state_bucket("dev1"))
        for _ in range(100):
            try:
                if (await hkv.get("e1.pos")).value == b"1,2":
                    break
            except nats.js.errors.KeyNotFoundError:
                pass
            await asyncio.sleep(0.05)
        else:
            pytest.fail("state mirror never got e1.pos")
        [st] = await fleet_status(rig.hub_js)
        assert st.device == "dev1" and st.link == "up" and st.lag == 0
        assert st.tele_messages == 200 and st.evt_messages == 200 and not st.errors


async def test_commands_offline_delivered_in_order_once_and_expire(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        rx = CommandReceiver(rig.dev_js(), "dev1", ack_wait_s=1.0)
        await send_command(rig.hub_js, "dev1", "arm", b"0")
        cmd = await rx.next(timeout=10)
        assert cmd is not None and cmd.name == "arm"
        await rx.reply(cmd, b"ok")
        await rig.links["dev1"].cut()
        for i in range(5):
            await send_command(rig.hub_js, "dev1", "goto", str(i).encode())
        await send_command(rig.hub_js, "dev1", "stale", b"x", ttl_s=0.3)
        await send_command(rig.hub_js, "dev1", "after", b"y")
        assert await rx.next(timeout=0.5) is None  # offline: nothing arrives
        await asyncio.sleep(0.5)  # "stale" expires meanwhile
        await rig.links["dev1"].restore()
        got: list[tuple[str, bytes]] = []
        while len(got) < 7 and (cmd := await rx.next(timeout=5)) is not None:
            got.append((cmd.name, cmd.payload))
            if cmd.name == "goto" and cmd.payload == b"2" and cmd.delivered == 1:
                continue  # not acked: must come again (after ack_wait), before anything else
            await rx.reply(cmd, b"done")
        assert await rx.next(timeout=0.3) is None  # nothing more, nothing twice
        names = [n for n, _ in got]
        assert names == ["goto", "goto", "goto", "goto", "goto", "goto", "after"]
        assert [p for _, p in got[:6]] == [b"0", b"1", b"2", b"2", b"3", b"4"]
        assert rx.stats["expired"] == 1
        # One result per command reaches the hub, even for the redelivered one.
        await rig.wait_hub_count("EVT", 7)
        await asyncio.sleep(0.3)
        assert await rig.hub_count("EVT") == 7
        # A fresh receiver (runtime restart) resumes after the last acked command.
        await rx.close()
        await send_command(rig.hub_js, "dev1", "later", b"z")
        rx2 = CommandReceiver(rig.dev_js(), "dev1")
        cmd = await rx2.next(timeout=10)
        assert cmd is not None and cmd.name == "later"


async def test_device_cannot_touch_other_devices_subjects(tmp_path: Path) -> None:
    async with sync_rig(tmp_path, ("devA", "devB")) as rig:
        assert rig.hub_nc is not None
        await assert_confined(rig.hub_nc, rig.dev_nc["devA"], rig.devices["devA"].url, "devA", "devB")
        # B still gets what the cloud queues for it through the CMD stream
        await send_command(rig.hub_js, "devB", "secret", b"s")
        b_cmd = await CommandReceiver(rig.dev_js("devB"), "devB").next(timeout=10)
        assert b_cmd is not None and b_cmd.name == "secret"


async def test_wrong_password_never_links(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        await provision_device(rig.hub_js, "intruder", hub=rig.hub)
        assert rig.hub.leaf_url is not None
        srv = NatsServer(
            device_server_options(
                "intruder",
                tmp_path / "intruder",
                HubLink(url=rig.hub.leaf_url, user="intruder", password="wrong"),
            )
        )
        await srv.start()
        try:
            nc = await nats.connect(srv.url)
            js = nc.jetstream()
            await ensure_device_streams(js, DeviceStreamConfig("intruder"))
            await js.publish("edge.intruder.evt.x", b"1")
            await asyncio.sleep(1.5)
            st = {s.device: s for s in await fleet_status(rig.hub_js)}
            assert st["intruder"].link == "never" and st["intruder"].evt_messages == 0
            assert st["dev1"].link == "up"
            await nc.close()
        finally:
            await srv.stop()
        assert (
            "Authorization Violation" in rig.hub.log_tail(200) or "authorization" in srv.log_tail(200).lower()
        )


async def test_standalone_device_without_hub(tmp_path: Path) -> None:
    srv = NatsServer(device_server_options("solo", tmp_path / "solo"))
    await srv.start()
    try:
        assert "remotes" not in srv.config_path.read_text()
        nc = await nats.connect(srv.url)
        js = nc.jetstream()
        infos = await ensure_device_streams(js, DeviceStreamConfig("solo"))
        assert [i.config.name for i in infos] == ["TELE", "EVT"]  # no CMD without a hub
        ack = await js.publish("edge.solo.evt.boot", b"1")
        assert ack.domain == "solo"
        await nc.close()
    finally:
        await srv.stop()


async def test_run_hub_fleet_status_down_and_deprovision(tmp_path: Path) -> None:
    hub = await run_hub(tmp_path / "hub", ["d1"])
    try:
        assert hub.health()["supervised"] is True and hub.leaf_url is not None
        cred = hub.devices["d1"]
        dev = NatsServer(
            device_server_options(
                "d1", tmp_path / "d1", HubLink(url=hub.leaf_url, user="d1", password=cred.password)
            )
        )
        await dev.start()
        nc = await nats.connect(dev.url)
        await ensure_device_streams(nc.jetstream(), DeviceStreamConfig("d1", hub_domain="hub"))
        async with Publisher(nc) as pub:
            await pub.publish("edge.d1.evt.boot", b"1")
            await pub.flush(5)
        hc = await nats.connect(hub.client_url)
        js = hc.jetstream()
        for _ in range(300):
            [st] = await fleet_status(js)
            if st.evt_messages == 1 and st.link == "up":
                break
            await asyncio.sleep(0.05)
        assert st.link == "up" and st.last_seen_s is not None and st.last_seen_s < 5
        await nc.close()
        await dev.stop()  # the device goes away: no heartbeats any more
        await asyncio.sleep(1.5)
        [st] = await fleet_status(js, down_after_s=1.0)
        assert st.link == "down" and st.last_seen_s is not None and st.last_seen_s > 1.0
        await deprovision_device(js, "d1")
        assert await list_devices(js) == []
        with pytest.raises(NatsError, match="not provisioned"):
            await fleet_status(js, ["d1"])
        await hc.close()
    finally:
        await hub.stop()


def test_fast_ack_parser() -> None:
    ack = _parse_ack(b'{"stream":"EVT","seq":42,"domain":"dev1","duplicate": true}')
    assert ack is not None and (ack.stream, ack.seq, ack.domain, ack.duplicate) == ("EVT", 42, "dev1", True)
    ack = _parse_ack(b'{"stream":"S","seq":7}')
    assert ack is not None and (ack.seq, ack.domain, ack.duplicate) == (7, None, None)
    assert _parse_ack(b'{"nothing":1}') is None


class _PartialListHub:
    """A hub cluster just after a node loss, as its JetStream API answers: ``STREAM.LIST`` leaves
    out the streams whose leader is being elected (naming them only under ``missing``),
    ``STREAM.NAMES`` (from the meta layer's assignments) names every stream, in pages."""

    _prefix = "$JS.API"
    _timeout = 5.0
    streams = ["CMD_a", "EVT_a", "TELE_a", "CMD_b", "EVT_b", "TELE_b", "TELE_c", "EVT_c"]

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []

    async def _api_request(self, subject: str, req: bytes = b"", timeout: float = 5) -> dict[str, object]:
        import json

        self.requests.append((subject, req))
        assert subject == "$JS.API.STREAM.NAMES", subject
        offset = int(json.loads(req or b"{}").get("offset", 0))
        return {"total": len(self.streams), "offset": offset, "limit": 3,
                "streams": self.streams[offset: offset + 3]}

    async def streams_info(self, offset: int = 0) -> list[object]:
        raise AssertionError("STREAM.LIST drops streams without a leader: not used to list devices")


async def test_list_devices_names_every_provisioned_device_while_streams_elect_leaders() -> None:
    hub = _PartialListHub()
    assert await list_devices(hub) == ["a", "b", "c"]  # type: ignore[arg-type]
    assert len(hub.requests) == 3  # every page
