"""The checks that a device is confined to its own subjects on the hub, whatever its login kind."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

REFUSED = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError)


async def assert_confined(hub_nc: Client, dev_nc: Client, dev_url: str, own: str, other: str) -> None:
    """Device ``own`` (connected as ``dev_nc`` to its leaf server at ``dev_url``) reaches the hub on
    its own subjects (events up, its API answering the back end), and is refused ``other``'s:
    publishing, commands, API, and the hub's JetStream API (its own command stream only, under
    ``edge.<own>.hub.API``). Positive controls come first so a dead link cannot pass for isolation."""
    seen: list[str] = []
    dev_rx: list[str] = []

    async def on_hub(msg: Msg) -> None:
        seen.append(msg.subject)

    async def on_dev(msg: Msg) -> None:
        dev_rx.append(msg.subject)

    await hub_nc.subscribe("edge.>", cb=on_hub)
    await hub_nc.flush()
    await dev_nc.subscribe(f"edge.{other}.>", cb=on_dev)
    await dev_nc.subscribe(f"edge.{own}.cmd.>", cb=on_dev)
    await dev_nc.flush()
    for _ in range(100):  # upward: the device's own subject reaches the hub once the link is up
        await dev_nc.publish(f"edge.{own}.evt.ping", b"1")
        await dev_nc.flush()
        await asyncio.sleep(0.05)
        if f"edge.{own}.evt.ping" in seen:
            break
    assert f"edge.{own}.evt.ping" in seen
    for _ in range(5):
        await dev_nc.publish(f"edge.{other}.evt.spoof", b"x")
    await dev_nc.flush()
    async def on_api(msg: Msg) -> None:
        await msg.respond(b"pong")

    await dev_nc.subscribe(f"edge.{own}.evt.down", cb=on_dev)
    await dev_nc.subscribe(f"edge.{own}.api.ping", cb=on_api)
    await dev_nc.flush()
    answer = None
    for _ in range(100):  # downward: the device API answers the back end through the link
        try:
            answer = await hub_nc.request(f"edge.{own}.api.ping", b"", timeout=0.2)
            break
        except REFUSED:
            await asyncio.sleep(0.05)
    assert answer is not None and answer.data == b"pong"
    # nothing else comes down as a plain publish: not its events, not commands (they come only
    # through the command stream), nothing of the other device
    await hub_nc.publish(f"edge.{own}.evt.down", b"m")
    await hub_nc.publish(f"edge.{own}.cmd.pod.plain", b"p")
    await hub_nc.publish(f"edge.{other}.cmd.secret", b"s")
    await hub_nc.flush()
    with pytest.raises(REFUSED):
        await hub_nc.request(f"edge.{other}.api.ping", b"", timeout=0.3)
    await asyncio.sleep(0.3)
    assert f"edge.{other}.evt.spoof" not in seen
    # (its own spoof publishes on edge.<other>.evt are local and may loop back to dev_nc)
    assert [s for s in dev_rx if not s.startswith(f"edge.{other}.evt.spoof")] == []
    # the hub's JetStream API: its own streams only (a client whose reply inbox lies in the
    # device's namespace, so the answer may flow down its link)
    api = await nats.connect(dev_url, inbox_prefix=f"edge.{own}.inbox")
    try:
        hub_js = api.jetstream(prefix=f"edge.{own}.hub.API", timeout=1.0)
        assert (await hub_js.stream_info(f"CMD_{own}")).config.name == f"CMD_{own}"
        for stream in (f"CMD_{other}", f"TELE_{other}"):
            with pytest.raises(REFUSED):
                await hub_js.stream_info(stream)
    finally:
        await api.close()
