"""The hub side of desired state: what each device should run, and what it reports it runs.

Desired state is the hub's KV bucket ``edge-ota-desired`` (key = device id), read by each device
through its leaf link (the hub's JetStream domain). Reports are device events
(``edge.<device>.evt.ota.report``) the uplink carries into the hub's ``EVT_<device>``.
"""

from __future__ import annotations

import json
from typing import Any

from edge.nats import subjects
from edge.ota.config import DESIRED_BUCKET
from edge.ota.errors import OtaError


async def _kv(js: Any, bucket: str) -> Any:
    from nats.js.errors import BucketNotFoundError

    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=bucket, history=1, direct=True)


#: Prefixes of artifact names (as in the pointer file and ``edge ota desire``) -> desired-state key.
PREFIXES = {"model:": "models", "config:": "config", "policy:": "policy"}


def desired_document(revision: str, artifacts: dict[str, str]) -> dict[str, Any]:
    """The desired-state document of ``artifacts``: ``name`` (a component), ``model:<name>``,
    ``config:<name>``, ``policy:<name>`` -> version."""
    if not revision:
        raise OtaError("a desired state needs a revision", reason="invalid")
    doc: dict[str, Any] = {"revision": revision, "components": {}}
    for name, version in artifacts.items():
        prefix, key = next(((p, k) for p, k in PREFIXES.items() if name.startswith(p)), ("", "components"))
        doc.setdefault(key, {})[name[len(prefix):]] = version
    if len(doc.get("policy", {})) > 1:
        raise OtaError("a desired state names at most one policy", reason="invalid")
    return doc


def artifact_names(artifacts: dict[str, str]) -> list[str]:
    """Each artifact as the resource the fleet policy decides on: ``<kind>.<name>.<version>``."""
    out = []
    for name, version in sorted(artifacts.items()):
        prefix = next((p for p in PREFIXES if name.startswith(p)), "")
        kind = prefix[:-1] if prefix else "component"
        out.append(f"{kind}.{name[len(prefix):]}.{version}")
    return out


async def set_desired(js: Any, device: str, revision: str, components: dict[str, str]) -> None:
    """Ask ``device`` to run ``components`` (name -> version; ``model:``, ``config:`` and
    ``policy:`` names for the other kinds) as ``revision``."""
    subjects.check_device_id(device)
    kv = await _kv(js, DESIRED_BUCKET)
    await kv.put(device, json.dumps(desired_document(revision, components)).encode())


async def put_desired(js: Any, device: str, desired: dict[str, Any]) -> None:
    """Write a whole desired-state document (as a rollout does)."""
    kv = await _kv(js, DESIRED_BUCKET)
    await kv.put(subjects.check_device_id(device), json.dumps(desired).encode())


async def get_desired(js: Any, device: str) -> dict[str, Any] | None:
    from nats.js.errors import KeyNotFoundError

    kv = await _kv(js, DESIRED_BUCKET)
    try:
        entry = await kv.get(device)
    except KeyNotFoundError:
        return None
    return dict(json.loads(entry.value or b"{}"))


async def get_report(js: Any, device: str) -> dict[str, Any] | None:
    """What ``device`` last reported (None if it never did): the last
    ``edge.<device>.evt.ota.report`` in the hub's ``EVT_<device>`` (or, on a device's own
    server, its ``EVT`` stream)."""
    from nats.js.errors import NotFoundError

    subject = subjects.event(device, "ota", "report")
    for stream in (subjects.hub_stream(subjects.EVT_STREAM, device), subjects.EVT_STREAM):
        try:
            msg = await js.get_last_msg(stream, subject)
        except NotFoundError:
            continue
        try:
            return dict(json.loads(msg.data or b"{}"))
        except ValueError:
            return None
    return None


def ota_inbox(device: str) -> str:
    """The inbox prefix of a device's update connection: replies and object-store deliveries
    from the hub come back on the device's own subjects, which its leaf login may receive."""
    return f"{subjects.device_prefix(device)}.ota.inbox"


def ota_exports(device: str, *, bucket: str = "edge-ota") -> tuple[list[str], list[str]]:
    """(stream subjects, service subjects) the hub's ``CLOUD`` account shares with the account of
    ``device`` for updates (edge.sync.hub.accounts): read the fleet's object store and its own
    desired state. Nothing else: no other device's keys. The services are imported by the
    device's account under ``edge.<d>.hub.API...`` (:func:`edge.nats.subjects.hub_api`)."""
    d = subjects.check_device_id(device)
    obj = f"OBJ_{bucket}"
    services = [
        f"$JS.API.STREAM.INFO.{obj}",
        f"$JS.API.STREAM.MSG.GET.{obj}",  # object info (the metadata message of one name)
        f"$JS.API.DIRECT.GET.{obj}.>",
        f"$JS.API.CONSUMER.CREATE.{obj}",  # an ordered consumer over one object's chunks
        f"$JS.API.CONSUMER.CREATE.{obj}.>",
        f"$JS.API.CONSUMER.DELETE.{obj}.>",
        f"$JS.FC.{obj}.>",  # flow-control replies of those consumers
        f"$JS.API.STREAM.INFO.KV_{DESIRED_BUCKET}",
        f"$JS.API.DIRECT.GET.KV_{DESIRED_BUCKET}.$KV.{DESIRED_BUCKET}.{d}",
    ]
    return [f"{ota_inbox(d)}.>"], services  # chunk deliveries come back on the device's inbox


async def ensure_buckets(js: Any) -> None:
    """Create the desired-state and report buckets (the hub's side owns them)."""
    await _kv(js, DESIRED_BUCKET)
