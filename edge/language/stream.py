"""The language layer's own stream, ``LANG``: what it adds to the device's language.

``edge.<d>.lang.<entity>.<kind>`` carries the lines that were in no stream before (``log``:
warning-and-above log lines, entity ``runtime``; ``tool_call``; ``note``) and the layer's output
(``novelty``). They live apart from ``EVT`` so the device's event budget, its sync to the hub and
everyone counting events see nothing new. Limits: ``max_bytes`` (default 8 MiB) and 7 days, the
oldest evicted first; a duplicate window so a retried publish is stored once.
"""

from __future__ import annotations

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from edge.nats import subjects

LANG_STREAM = "LANG"
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
MAX_AGE_S = 7 * 24 * 3600.0
DUPLICATE_WINDOW_S = 600.0


def lang_subject(device: str, entity: str, kind: str) -> str:
    """``edge.<device>.lang.<entity>.<kind>``."""
    return f"{subjects.device_prefix(device)}.lang.{entity}.{kind}"


def lang_config(device: str, max_bytes: int = DEFAULT_MAX_BYTES) -> StreamConfig:
    return StreamConfig(
        name=LANG_STREAM, subjects=[f"{subjects.device_prefix(device)}.lang.>"],
        retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD, max_bytes=max_bytes, max_age=MAX_AGE_S,
        duplicate_window=DUPLICATE_WINDOW_S, storage=StorageType.FILE,
        description=f"log lines, tool calls, notes and novelty of {device} (the language layer)")


async def ensure_lang_stream(js: JetStreamContext, device: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Create or update ``LANG`` (NatsError naming the stream when the server refuses)."""
    from edge.sync.device.streams import ensure_stream

    await ensure_stream(js, lang_config(device, max_bytes))
