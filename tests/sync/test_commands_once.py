"""Cloud commands arrive once: never as a plain publish down the leaf next to the command
stream's copy, promptly again after a device restart, and never run twice for a stored result."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from edge.nats import subjects as naming
from edge.sync.device.commands import MSG_ID_HEADER, CommandReceiver
from edge.sync.hub.fleet import send_command
from rigs.link import sync_rig

pytestmark = pytest.mark.timeout(60)


async def test_online_command_reaches_the_device_once(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        raw: list[str] = []

        async def on_raw(msg: Msg) -> None:
            raw.append(msg.subject)

        dev = rig.dev_nc["dev1"]
        await dev.subscribe(naming.command("dev1"), cb=on_raw)  # what the command router listens on
        await dev.flush()
        rx = CommandReceiver(rig.dev_js(), "dev1")
        for i in range(5):
            await send_command(rig.hub_js, "dev1", "pod.goto", str(i).encode(), msg_id=f"c{i}")
            cmd = await rx.next(timeout=10)
            assert cmd is not None and (cmd.command_id, cmd.payload) == (f"c{i}", str(i).encode())
            await rx.reply(cmd, b"ok")
        assert rig.hub_nc is not None
        await rig.hub_nc.publish("edge.dev1.cmd.pod.plain", b"x")  # a plain publish on the hub:
        await rig.hub_nc.flush()  # the hub's CMD_dev1 stores it, so it too comes once, as a command
        cmd = await rx.next(timeout=10)
        assert cmd is not None and cmd.name == "pod.plain"
        await rx.reply(cmd, b"ok")
        assert await rx.next(timeout=1.0) is None  # nothing twice from the stream
        assert raw == []  # and no copy down the leaf connection
        await rx.close()


async def test_in_flight_command_is_redelivered_promptly_after_restart(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        rx = CommandReceiver(rig.dev_js(), "dev1", ack_wait_s=20.0)
        await send_command(rig.hub_js, "dev1", "pod.arm", b"1", msg_id="arm-1")
        await send_command(rig.hub_js, "dev1", "pod.goto", b"2", msg_id="goto-2")
        cmd = await rx.next(timeout=10)
        assert cmd is not None and cmd.command_id == "arm-1"
        await rx.close()  # the runtime dies while handling it: no result, no ack
        rx2 = CommandReceiver(rig.dev_js(), "dev1", ack_wait_s=20.0)
        t0 = time.monotonic()
        again = await rx2.next(timeout=10)
        took = time.monotonic() - t0
        assert again is not None and again.command_id == "arm-1"  # (a reset restarts the delivery count)
        assert took < 3.0, f"redelivery took {took:.1f} s (ack wait 20 s)"
        assert rx2.stats["resets"] == 1
        await rx2.reply(again, b"done")
        nxt = await rx2.next(timeout=5)
        assert nxt is not None and nxt.command_id == "goto-2"
        await rx2.reply(nxt, b"done")
        await rx2.close()
        # a restart with nothing pending resets nothing
        rx3 = CommandReceiver(rig.dev_js(), "dev1")
        assert await rx3.next(timeout=0.5) is None and rx3.stats["resets"] == 0
        await rx3.close()


async def test_command_with_stored_result_is_not_run_again(tmp_path: Path) -> None:
    async with sync_rig(tmp_path) as rig:
        js = rig.dev_js()
        rx = CommandReceiver(js, "dev1", ack_wait_s=20.0)
        await send_command(rig.hub_js, "dev1", "pod.fire", b"1", msg_id="fire-1")
        await send_command(rig.hub_js, "dev1", "pod.land", b"2", msg_id="land-2")
        cmd = await rx.next(timeout=10)
        assert cmd is not None and cmd.command_id == "fire-1"
        # The result is stored, then the device dies before the command's ack.
        await js.publish(rx.result_subject("fire-1"), b"fired", headers={MSG_ID_HEADER: "result-fire-1"})
        await rx.close()
        rx2 = CommandReceiver(js, "dev1", ack_wait_s=20.0)
        t0 = time.monotonic()
        nxt = await rx2.next(timeout=10)
        assert nxt is not None and nxt.command_id == "land-2"  # fire-1 was not handed out again
        assert time.monotonic() - t0 < 3.0
        assert rx2.stats["duplicates"] == 1 and rx2.stats["delivered"] == 1
        await rx2.reply(nxt, b"landed")
        assert await rx2.next(timeout=0.5) is None
        await rx2.close()
        # one result per command on the hub
        await rig.wait_hub_count("EVT", 2)
        await asyncio.sleep(0.3)
        assert await rig.hub_count("EVT") == 2
