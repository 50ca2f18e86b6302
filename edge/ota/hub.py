"""The hub side of desired state: what each device should run, and what it reports it runs.

Both are JetStream KV buckets on the hub (``edge-ota-desired``, ``edge-ota-reports``), keyed by
device id; devices read and write them through their leaf link (the hub's JetStream domain).
"""

from __future__ import annotations

import json
from typing import Any

from edge.nats import subjects
from edge.ota.config import DESIRED_BUCKET, REPORTS_BUCKET
from edge.ota.errors import OtaError


async def _kv(js: Any, bucket: str) -> Any:
    from nats.js.errors import BucketNotFoundError

    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=bucket, history=1)


async def set_desired(js: Any, device: str, revision: str, components: dict[str, str]) -> None:
    """Ask ``device`` to run ``components`` (name -> version) as ``revision``."""
    subjects.check_device_id(device)
    if not revision:
        raise OtaError("a desired state needs a revision", reason="invalid")
    kv = await _kv(js, DESIRED_BUCKET)
    await kv.put(device, json.dumps({"revision": revision, "components": components}).encode())


async def get_desired(js: Any, device: str) -> dict[str, Any] | None:
    from nats.js.errors import KeyNotFoundError

    kv = await _kv(js, DESIRED_BUCKET)
    try:
        entry = await kv.get(device)
    except KeyNotFoundError:
        return None
    return dict(json.loads(entry.value or b"{}"))


async def get_report(js: Any, device: str) -> dict[str, Any] | None:
    """What ``device`` last reported (None if it never did)."""
    from nats.js.errors import KeyNotFoundError

    kv = await _kv(js, REPORTS_BUCKET)
    try:
        entry = await kv.get(device)
    except KeyNotFoundError:
        return None
    try:
        return dict(json.loads(entry.value or b"{}"))
    except ValueError:
        return None
