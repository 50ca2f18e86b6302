"""The device's side of edge-to-cloud sync, as a runtime layer (``edge status`` section ``sync``).

* ``[hub]`` makes the embedded nats-server a leaf node of the hub (read by
  :func:`edge.sync.device.config.read_hub`).
* The device streams (telemetry, events, commands) are created at start, with the limits of
  ``[sync]``; they exist standalone too, so the device records offline and the hub catches up.
* Commands the cloud queued for this device (the ``CMD`` stream, sourced from the hub) are played
  onto the local command subjects as requests (:class:`~edge.nats.commands.CommandClient`), in
  order and once, with the cloud command's id as the command id (so a redelivered command is
  answered from the router's memory instead of running twice); the answer (or the reason there
  was none) becomes the command's result on ``edge.<device>.ack.<command id>``.

Details and the picture: docs/sync.md.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from edge.errors import EdgeError
from edge.layer import DeviceContext
from edge.nats.commands import CommandClient, CommandError, encode_answer
from edge.sync.device.commands import Command, CommandReceiver
from edge.sync.device.leaf import HubLink
from edge.sync.device.streams import DeviceStreamConfig, DropMonitor, ensure_device_streams, stream_usage

log = logging.getLogger("edge.sync.device")

COMMAND_ANSWER_TIMEOUT = 15.0  # seconds a cloud command waits for the local answer (> the router's 10 s handler bound)
POLL_INTERVAL = 5.0  # seconds between stream-usage polls (drops are counted then)
LINK_POLL_INTERVAL = 1.0  # seconds between checks of the leaf link
RESYNC_AFTER = (0.0, 3.0, 10.0)  # seconds after a link-up at which the whole state is re-written


class UplinkLayer:
    """Creates the device streams, plays cloud commands locally, reports stream usage and drops."""

    name = "sync"

    def __init__(self, streams: DeviceStreamConfig, hub: HubLink | None) -> None:
        self.streams = streams
        self.hub = hub
        self._tasks: list[asyncio.Task[None]] = []
        self._receiver: CommandReceiver | None = None
        self._usage: dict[str, dict[str, Any]] = {}
        self.dropped: dict[str, int] = {}
        self.commands = {"played": 0, "answered": 0, "refused": 0, "unanswered": 0, "errors": 0}
        self.link_up = False
        self.link_ups = 0

    async def start(self, ctx: DeviceContext) -> None:
        await ensure_device_streams(ctx.js, self.streams)
        self._tasks.append(asyncio.create_task(self._poll(ctx), name="edge.sync.device.poll"))
        if self.hub is not None:
            self._receiver = CommandReceiver(ctx.js, ctx.device)
            self._tasks.append(asyncio.create_task(self._commands(ctx), name="edge.sync.device.commands"))
            if ctx.server is not None:
                self._tasks.append(asyncio.create_task(self._watch_link(ctx), name="edge.sync.device.link"))
        log.info("device streams ready%s", f", leaf of {self.hub.url}" if self.hub else " (standalone)")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        if self._receiver is not None:
            await self._receiver.close()

    async def _poll(self, ctx: DeviceContext) -> None:
        monitor = DropMonitor(ctx.js)
        names = [str(c.name) for c in self.streams.stream_configs()]
        while True:
            try:
                for name, new in (await monitor.poll()).items():
                    if new:
                        self.dropped[name] = self.dropped.get(name, 0) + new
                        log.warning("stream %s evicted %d messages (store limit)", name, new)
                for name in names:
                    u = await stream_usage(ctx.js, name)
                    self._usage[name] = {"messages": u.messages, "bytes": u.bytes, "fill": round(u.fill, 3),
                                         "removed": u.removed}
            except EdgeError as err:
                log.debug("stream poll: %s", err)
            except Exception as err:  # NATS briefly away: try again next round
                log.debug("stream poll failed: %s", err)
            await asyncio.sleep(POLL_INTERVAL)

    async def _watch_link(self, ctx: DeviceContext) -> None:
        """On every link-up, rewrite the whole entity state once.

        The hub mirrors the state bucket through a consumer-based mirror; with nats-server 2.15 we
        saw it miss keys written before the link's first connection while later writes arrive. The
        state is latest-value, so re-writing every key after a link-up makes the mirror complete
        (telemetry and events are sourced streams and arrive in full; see docs/sync.md).
        """
        server = ctx.server
        if server is None:
            return
        up_since = 0.0
        pending: list[float] = []
        loop = asyncio.get_running_loop()
        while True:
            try:
                leafz = await server.monitor("leafz")
                up = int(leafz.get("leafnodes", 0)) > 0
            except Exception:
                up = False
            if up and not self.link_up:
                self.link_ups += 1
                up_since = loop.time()
                pending = list(RESYNC_AFTER)
                log.info("leaf link to %s up; state resync queued", self.hub.url if self.hub else "?")
            if up and pending and loop.time() - up_since >= pending[0]:
                pending.pop(0)
                ctx.world.mark_all_dirty()
            elif self.link_up and not up:
                log.warning("leaf link down; recording locally until it returns")
            self.link_up = up
            await asyncio.sleep(LINK_POLL_INTERVAL)

    async def _commands(self, ctx: DeviceContext) -> None:
        assert self._receiver is not None
        while True:
            try:
                cmd = await self._receiver.next(timeout=1.0)
                if cmd is not None:
                    await self._play(ctx, cmd)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.commands["errors"] += 1
                log.warning("cloud command handling failed: %s", err)
                await asyncio.sleep(1.0)

    async def _play(self, ctx: DeviceContext, cmd: Command) -> None:
        """Send the command locally as a request; its answer is the command's result."""
        if self._receiver is None:
            return
        client = CommandClient(ctx.nc, ctx.device)
        self.commands["played"] += 1
        try:
            async with self._receiver.working(cmd):
                res = await client.request(cmd.subject, cmd.payload, timeout=COMMAND_ANSWER_TIMEOUT,
                                           caller="cloud", command_id=cmd.command_id)
        except CommandError as err:
            self.commands["unanswered"] += 1
            answer = err.to_answer()
        else:
            self.commands["answered"] += 1
            if not res.ok:
                self.commands["refused"] += 1
            answer = res.answer
        await self._receiver.reply(cmd, encode_answer(answer))

    def status(self) -> dict[str, Any]:
        return {
            "hub": self.hub.url if self.hub else None,
            "link": ("up" if self.link_up else "down") if self.hub else "standalone",
            "link_ups": self.link_ups,
            "streams": self._usage,
            "dropped": self.dropped,
            "commands": {**self.commands, **(self._receiver.stats if self._receiver else {})},
        }
