"""Receiving cloud commands on the device: in order, once, and never after they expire.

The device's ``CMD`` stream sources the hub's ``CMD_<dev>`` stream, so commands issued while the
link was down arrive on reconnect. :class:`CommandReceiver` reads them through a durable pull
consumer with one unacknowledged message at a time (strict order; survives restarts of the
runtime and the server). A command is acked only after :meth:`CommandReceiver.reply` (or
:meth:`CommandReceiver.ack`), so a crash while handling redelivers it; the result is published to
``edge.<dev>.ack.<command id>`` with a message id derived from the command id, so a redelivered
command never produces two results. Commands past their ``Edge-Expires`` time are acked unseen
and counted in ``stats["expired"]``.

Exactly once across restarts:

* **Prompt retry.** A fresh receiver (runtime restart) resets its consumer to the ack floor
  (JetStream's ``CONSUMER.RESET``), so a command that was in flight when the device went down is
  delivered again at once, not after the ack wait. While a command is handled,
  :meth:`CommandReceiver.working` keeps it with in-progress acks, so a short ack wait (10 s) does
  not redeliver a slow command.
* **Deduplicated by its result.** Before a command is handed out, the receiver looks up the
  last message on its result subject in the device's ``EVT`` stream: a command whose result is
  already stored (the device died after storing the result, before the ack) is acked without
  running again and counted in ``stats["duplicates"]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck
from nats.js.errors import NotFoundError

from edge.errors import LifecycleError
from edge.nats import subjects as naming

log = logging.getLogger("edge.sync")

DEFAULT_DURABLE = "edge-cmd"
DEFAULT_ACK_WAIT_S = 10.0  # kept alive with in-progress acks while a command is handled
API_TIMEOUT_S = 5.0
MSG_ID_HEADER = "Nats-Msg-Id"


@dataclass
class Command:
    name: str
    subject: str
    payload: bytes
    command_id: str
    expires_at: float | None
    delivered: int
    msg: Msg = field(repr=False)


class CommandReceiver:
    """Durable, ordered reader of the device's ``CMD`` stream."""

    def __init__(
        self,
        js: JetStreamContext,
        device: str,
        *,
        durable: str = DEFAULT_DURABLE,
        ack_wait_s: float = DEFAULT_ACK_WAIT_S,
    ) -> None:
        self.js = js
        self.device = naming.check_device_id(device)
        self.durable = durable
        self.ack_wait_s = ack_wait_s
        self.stats = {"delivered": 0, "expired": 0, "replied": 0, "duplicates": 0, "resets": 0}
        self._sub: JetStreamContext.PullSubscription | None = None
        self._prefix = naming.command(device, "")

    async def start(self) -> None:
        if self._sub is not None:
            return
        cfg = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=1,
            ack_wait=self.ack_wait_s,
            filter_subject=naming.command(self.device),
        )
        self._sub = await self.js.pull_subscribe(
            naming.command(self.device), durable=self.durable, stream=naming.CMD_STREAM, config=cfg
        )
        await self._resume()

    async def _resume(self) -> None:
        """Redeliver at once what a previous run left unacknowledged (instead of after the ack
        wait): reset the consumer to its ack floor. Only when something is pending."""
        try:
            info = await self.js.consumer_info(naming.CMD_STREAM, self.durable)
        except Exception as exc:  # the consumer was just created by pull_subscribe
            log.debug("command consumer info: %s", exc)
            return
        if not info.num_ack_pending:
            return
        api: str = getattr(self.js, "_prefix", "$JS.API")
        subject = f"{api}.CONSUMER.RESET.{naming.CMD_STREAM}.{self.durable}"
        try:
            msg = await self.js._nc.request(subject, b"", timeout=API_TIMEOUT_S)
            problem: dict[str, object] | None = json.loads(msg.data).get("error")
        except Exception as exc:
            problem = {"description": repr(exc)}
        if problem:
            log.warning("could not reset the command consumer (redelivery after the ack wait): %s",
                        problem.get("description"))
            return
        self.stats["resets"] += 1
        log.info("command consumer reset: %d unacknowledged command(s) delivered again now",
                 info.num_ack_pending)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def next(self, timeout: float = 1.0) -> Command | None:
        """The next live command, or ``None`` if none arrived within ``timeout`` seconds."""
        await self.start()
        if self._sub is None:
            raise LifecycleError("the command receiver has no subscription; it was closed")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                msgs = await self._sub.fetch(1, timeout=left)
            except nats.errors.TimeoutError:
                return None
            msg = msgs[0]
            hdrs = msg.headers or {}
            exp_raw = hdrs.get(naming.EXPIRES_HEADER)
            expires = float(exp_raw) if exp_raw else None
            if expires is not None and time.time() > expires:
                self.stats["expired"] += 1
                log.info("command %s expired before delivery; dropped", msg.subject)
                await msg.ack_sync()
                continue
            command_id = hdrs.get(MSG_ID_HEADER) or f"seq-{msg.metadata.sequence.stream}"
            if await self._answered(command_id):
                self.stats["duplicates"] += 1
                log.info("command %s (%s) already has a stored result; acked, not run again",
                         command_id, msg.subject)
                await msg.ack_sync()
                continue
            self.stats["delivered"] += 1
            return Command(
                name=msg.subject[len(self._prefix) :],
                subject=msg.subject,
                payload=msg.data,
                command_id=command_id,
                expires_at=expires,
                delivered=msg.metadata.num_delivered or 1,
                msg=msg,
            )

    def result_subject(self, command_id: str) -> str:
        return naming.ack(self.device, _token(command_id))

    async def _answered(self, command_id: str) -> bool:
        """True if the device's EVT stream already holds this command's result."""
        try:
            await self.js.get_last_msg(naming.EVT_STREAM, self.result_subject(command_id))
        except NotFoundError:
            return False
        return True

    @contextlib.asynccontextmanager
    async def working(self, cmd: Command) -> AsyncIterator[None]:
        """Keep ``cmd`` from being redelivered while it is handled (in-progress acks)."""
        async def beat() -> None:
            while True:
                await asyncio.sleep(self.ack_wait_s / 3)
                with contextlib.suppress(Exception):
                    await cmd.msg.in_progress()

        task = asyncio.create_task(beat(), name="edge.sync.command-progress")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def ack(self, cmd: Command) -> None:
        await cmd.msg.ack_sync()

    async def reply(self, cmd: Command, payload: bytes) -> PubAck:
        """Publish the command's result (deduplicated by command id), then ack the command."""
        ack = await self.js.publish(
            self.result_subject(cmd.command_id),
            payload,
            headers={MSG_ID_HEADER: f"result-{cmd.command_id}"},
        )
        await cmd.msg.ack_sync()
        self.stats["replied"] += 1
        return ack


def _token(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in value) or "_"
