"""The hub's copy of a device's replay records: ``REC_<dev>`` sourcing the device's ``REC``.

A device with ``[sync] record = true`` gives its ``REC`` stream a durable sync consumer
(:func:`edge.sync.device.streams.rec_sync_consumer`); :func:`provision_rec` creates, on the hub,
the stream that sources it across the leaf link (through that consumer, like ``TELE_<dev>``),
with its own limits. It keeps the record subjects, so ``edge replay --url <hub> --device <dev>
--stream REC_<dev> --domain hub`` replays a window there without the device (docs/replay.md).
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    ExternalStream,
    StreamConfig,
    StreamConsumerSource,
    StreamInfo,
    StreamSource,
)

from edge.nats import subjects as naming
from edge.replay.records import REC_STREAM
from edge.sync.device.streams import ensure_stream, rec_sync_consumer

#: Limits of a hub's copy of one device's records (the device's own: 1 h, 256 MiB).
DEFAULT_HUB_REC_MAX_BYTES = 1024 * 2**20
DEFAULT_HUB_REC_MAX_AGE_S = 24 * 3600.0


def hub_rec_config(device: str, *, max_bytes: int = DEFAULT_HUB_REC_MAX_BYTES,
                   max_age_s: float = DEFAULT_HUB_REC_MAX_AGE_S,
                   replicas: int = 1) -> StreamConfig:
    """``REC_<dev>``: the device's ``REC`` sourced through its durable sync consumer."""
    d = naming.check_device_id(device)
    if max_bytes <= 0 or max_age_s <= 0:
        raise ValueError(f"a hub's REC copy needs positive limits (got {max_bytes} bytes, "
                         f"{max_age_s} s)")
    consumer = rec_sync_consumer(d)
    return StreamConfig(
        name=naming.hub_stream(REC_STREAM, d),
        subjects=[],
        max_bytes=max_bytes,
        max_age=max_age_s,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        sources=[StreamSource(
            name=REC_STREAM,
            external=ExternalStream(api=naming.js_api(d)),
            consumer=StreamConsumerSource(name=consumer.name, deliver_subject=consumer.deliver_subject),
        )],
        description=f"replay records sourced from device {d}",
    )


async def provision_rec(js: JetStreamContext, device: str, *,
                        max_bytes: int = DEFAULT_HUB_REC_MAX_BYTES,
                        max_age_s: float = DEFAULT_HUB_REC_MAX_AGE_S,
                        replicas: int = 1) -> StreamInfo:
    """Create (or update) the hub's ``REC_<dev>`` (idempotent)."""
    return await ensure_stream(js, hub_rec_config(device, max_bytes=max_bytes,
                                                  max_age_s=max_age_s, replicas=replicas))
