"""Promises of docs/abi.md checked by a component written from the docs alone, through a real
Runtime (embedded or external nats-server, sandbox workers, compiled C).

The finding behind this file: ``publish`` accepted a payload of exactly 1 MiB (the documented
limit), and the runtime forwarded it with its origin headers. nats-server counts headers in its
``max_payload`` (1 MiB by default), answered ``Maximum Payload Violation`` and closed the
connection, which nats-py does not reconnect: one component's publish cut the whole device off
NATS. The limit now leaves room for the headers (``PUBLISH_HEADER_ROOM``), and the runtime never
sends a message larger than the server it is connected to accepts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from sandbox_support import build_module, wait_for, write_manifest

from edge.config import DeviceConfig
from edge.config.device import NatsConfig
from edge.runtime import Runtime
from edge.wasm.abi import PUBLISH_HEADER_ROOM, PUBLISH_MAX_BYTES
from edge.wasm.origin import MAX_HOPS, header_bytes, origin_headers, origin_id

pytestmark = pytest.mark.timeout(120)

DEV = "dp"

#: on a message "m" publishes EDGE_PUBLISH_MAX (edge.h) bytes on evt.big.data, on "o" one byte more, on
#: "s" a small one; the publish's result goes to evt.big.rc as one signed byte
BIG = r"""
#include "edge.h"
EDGE_INBOX(16)
static uint8_t big[EDGE_PUBLISH_MAX + 1];
static const char data_subj[] = "edge.DEV.evt.big.data";
static const char rc_subj[] = "edge.DEV.evt.big.rc";
EDGE_ON_MESSAGE {
    (void)subject; (void)subject_len;
    if (data_len != 1) return 1;
    int32_t n = data[0] == 'm' ? EDGE_PUBLISH_MAX : data[0] == 'o' ? EDGE_PUBLISH_MAX + 1 : 5;
    for (int32_t i = 0; i < n; i++) big[i] = (uint8_t)i;
    int8_t rc = (int8_t)edge_publish(data_subj, sizeof data_subj - 1, big, n);
    return edge_publish(rc_subj, sizeof rc_subj - 1, &rc, 1);
}
"""


@pytest.fixture(scope="module")
def big_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("big")
    src = tmp / "big.c"
    src.write_text(BIG.replace("DEV", DEV))  # the SDK's EDGE_PUBLISH_MAX: the host's limit?
    return Path(build_module().compile_wasm([src], tmp / "big.wasm"))


class Tap:
    def __init__(self) -> None:
        self.msgs: list[Msg] = []

    async def on_msg(self, msg: Msg) -> None:
        self.msgs.append(msg)


async def start(tmp: Path, big_module: Path, nats: NatsConfig | None = None) -> Runtime:
    rt = Runtime(DeviceConfig(device=DEV, data_dir=tmp / "data", nats=nats or NatsConfig()))
    await rt.start()
    path = write_manifest(tmp, "big", big_module, subscribe=(f"edge.{DEV}.big.in",),
                          publish=(f"edge.{DEV}.evt.big.>",), memory_pages=18)
    await rt.load_component(str(path))
    return rt


@pytest.fixture
async def runtime(tmp_path: Path, big_module: Path) -> AsyncIterator[Runtime]:
    rt = await start(tmp_path, big_module)
    try:
        yield rt
    finally:
        await rt.stop()


async def ask(rt: Runtime, rcs: Tap, what: bytes) -> int:
    """Send ``what`` to the component; its publish's result."""
    before = len(rcs.msgs)
    await rt.sandbox.ctx.nc.publish(f"edge.{DEV}.big.in", what)
    await wait_for(lambda: len(rcs.msgs) > before, timeout=10)
    return int.from_bytes(rcs.msgs[before].data, "little", signed=True)


def test_the_header_room_holds_the_longest_origin_headers() -> None:
    longest = origin_headers(origin_id("c" * 64, "d" * 64), 10 ** 6 - 1)  # names 1-64, 6 digits
    assert MAX_HOPS < 10 ** 6
    assert header_bytes(longest) <= PUBLISH_HEADER_ROOM
    assert PUBLISH_MAX_BYTES + PUBLISH_HEADER_ROOM == 1024 * 1024  # nats-server's default


async def test_the_largest_payload_is_delivered_and_the_device_stays_connected(
        runtime: Runtime) -> None:
    nc = runtime.sandbox.ctx.nc
    data, rcs = Tap(), Tap()
    await nc.subscribe(f"edge.{DEV}.evt.big.data", cb=data.on_msg)
    await nc.subscribe(f"edge.{DEV}.evt.big.rc", cb=rcs.on_msg)
    assert await ask(runtime, rcs, b"m") == 0
    await wait_for(lambda: data.msgs, timeout=10)
    assert len(data.msgs[0].data) == PUBLISH_MAX_BYTES
    assert data.msgs[0].data[:3] == bytes([0, 1, 2])
    assert data.msgs[0].headers and data.msgs[0].headers["Edge-Component"] == f"big@{DEV}"
    assert await ask(runtime, rcs, b"o") == -2  # one byte more: refused at the call
    await asyncio.sleep(0.3)
    assert len(data.msgs) == 1
    assert nc.is_connected and not nc.is_closed
    assert await ask(runtime, rcs, b"s") == 0  # the device still publishes
    await wait_for(lambda: len(data.msgs) == 2)


async def test_a_message_over_an_external_servers_max_payload_is_dropped_not_fatal(
        tmp_path: Path, big_module: Path, nats_servers: object,
        caplog: pytest.LogCaptureFixture) -> None:
    srv = await nats_servers("small", extra="max_payload: 524288")  # type: ignore[operator]
    rt = await start(tmp_path, big_module, NatsConfig(url=srv.url))
    try:
        nc = rt.sandbox.ctx.nc
        assert nc.max_payload == 524288
        data, rcs = Tap(), Tap()
        await nc.subscribe(f"edge.{DEV}.evt.big.data", cb=data.on_msg)
        await nc.subscribe(f"edge.{DEV}.evt.big.rc", cb=rcs.on_msg)
        with caplog.at_level(logging.WARNING, logger="edge.wasm.layer"):
            assert await ask(rt, rcs, b"m") == 0  # accepted at the call, too large for this server
            await wait_for(lambda: rt.sandbox.oversize.get("big") == 1)
        warning = next(r.getMessage() for r in caplog.records if "max_payload" in r.getMessage())
        assert "'big'" in warning and f"edge.{DEV}.evt.big.data" in warning and "524288" in warning
        assert nc.is_connected and not nc.is_closed
        assert await ask(rt, rcs, b"s") == 0
        await wait_for(lambda: len(data.msgs) == 1)
        assert len(data.msgs[0].data) == 5  # only the small one went out
    finally:
        await rt.stop()
