"""Durable sourcing consumers (flow-control acked push consumers owned by the sourced side).

Plain cross-domain sources make the *sourcing* server create an ephemeral consumer on the other
side. If that request is sent while the link is down, the server waits up to 30 s for an answer
and then backs off for up to 2 minutes, so catch-up after an outage (or after a hub restart) can
take minutes. With a durable sourcing consumer (``ack_policy: flow_control``), created here by the
side that owns the stream, the sourcing stream only attaches to it: the consumer keeps its position
across restarts of either server, and resumes pushing as soon as the link is back.

The stream config of the sourcing side references it with
``StreamSource(..., consumer=StreamConsumerSource(name, deliver_subject))``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from edge.errors import NatsError

log = logging.getLogger("edge.sync")

SOURCE_HEARTBEAT_NS = 1_000_000_000  # the server requires exactly 1 s for flow-control acking
DEFAULT_SYNC_MAX_ACK_PENDING = 10_000  # messages in flight on the link before flow control waits
API_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SyncConsumer:
    stream: str
    name: str
    deliver_subject: str
    filter_subjects: tuple[str, ...]
    max_ack_pending: int = DEFAULT_SYNC_MAX_ACK_PENDING

    def request(self) -> dict[str, object]:
        return {
            "stream_name": self.stream,
            "config": {
                "durable_name": self.name,
                "name": self.name,
                "deliver_subject": self.deliver_subject,
                "deliver_policy": "all",
                "ack_policy": "flow_control",
                "flow_control": True,
                "idle_heartbeat": SOURCE_HEARTBEAT_NS,
                "max_ack_pending": self.max_ack_pending,
                "filter_subjects": list(self.filter_subjects),
                "description": "durable sourcing consumer for the other side of the link",
            },
        }


async def ensure_sync_consumer(nc: NATS, consumer: SyncConsumer, *, api: str = "$JS.API") -> None:
    """Create the durable sourcing consumer if missing (idempotent for the same config)."""
    subject = f"{api}.CONSUMER.CREATE.{consumer.stream}.{consumer.name}"
    try:
        msg = await nc.request(subject, json.dumps(consumer.request()).encode(), timeout=API_TIMEOUT_S)
    except Exception as exc:
        raise NatsError(
            f"Could not create sourcing consumer {consumer.name} on {consumer.stream}: {exc!r}.",
            stream=consumer.stream,
            consumer=consumer.name,
        ) from exc
    resp = json.loads(msg.data)
    err = resp.get("error")
    if err:
        raise NatsError(
            f"Could not create sourcing consumer {consumer.name} on "
            f"{consumer.stream}: {err.get('description')}.",
            stream=consumer.stream,
            consumer=consumer.name,
            code=err.get("err_code"),
        )
    log.debug("sourcing consumer %s on %s ready", consumer.name, consumer.stream)
