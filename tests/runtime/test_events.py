"""Nothing published is silently lost: events emitted by a layer while the device's own
nats-server is killed and restarted all land in the EVT stream, each exactly once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats
import pytest

from edge.config import DeviceConfig
from edge.layer import DeviceContext
from edge.runtime import Runtime

pytestmark = pytest.mark.timeout(90)

TOTAL = 3000
KILL_AT = 1000


class Emitter:
    """A layer that emits numbered events at a steady pace once started."""

    name = "emitter"

    def __init__(self) -> None:
        self.sent = 0
        self.ctx: DeviceContext | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self.ctx is not None
        while self.sent < TOTAL:
            for _ in range(20):
                self.ctx.events.emit(f"edge.{self.ctx.device}.evt.probe.tick", json.dumps({"n": self.sent}).encode())
                self.sent += 1
            await asyncio.sleep(0.005)  # ~4,000 events a second: the kill lands mid-stream

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def status(self) -> dict[str, Any]:
        return {"sent": self.sent}


async def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


async def test_events_survive_a_nats_server_kill(tmp_path: Path) -> None:
    emitter = Emitter()
    rt = Runtime(DeviceConfig(device="evt1", data_dir=tmp_path / "d"), layers=[emitter])
    await rt.start()
    try:
        assert rt.server is not None and rt.events is not None
        await wait_for(lambda: emitter.sent >= KILL_AT, 20, "emitter did not get going")
        await rt.server.kill()  # SIGKILL: JetStream goes away under load, the supervisor restarts it
        await wait_for(lambda: emitter.sent >= TOTAL, 40, "emitter did not finish")
        events = rt.events
        await wait_for(lambda: events.status()["queued"] == 0 and events.status()["in_flight"] == 0, 40,
                       f"outbox did not drain: {events.status()}")
        status = events.status()
        assert status["dropped"] == 0 and status["rejected"] == 0, status
        nc = await nats.connect(rt.server.url)
        try:
            js = nc.jetstream(timeout=10)
            info = await js.stream_info("EVT")
            assert info.state.messages == TOTAL, status
            seen = [json.loads((await js.get_msg("EVT", seq)).data or b"")["n"]
                    for seq in range(info.state.first_seq, info.state.last_seq + 1)]
            assert sorted(seen) == list(range(TOTAL))  # every event once: no gap, no duplicate
        finally:
            await nc.close()
        assert rt.status()["events"]["acked"] + rt.status()["events"]["duplicates"] >= TOTAL
    finally:
        await rt.stop()
