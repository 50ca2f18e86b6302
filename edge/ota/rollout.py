"""Fleet rollouts: one desired state taken to the devices a label selector picks, batch by batch.

A rollout (:class:`RolloutSpec`) is run by :func:`run_rollout` on the hub side: it writes the
desired state of the canary devices first, then of each batch, and moves on only once every
device of the batch reported the revision committed, failed (rolled back: its version marked
bad, with the reason; or refused) or timed out (no report within ``device_timeout_s``: counted as
failed, never blocking the rest). When the failed share of the devices tried so far passes
``max_failure_pct`` it halts by itself, naming the failing devices and their reasons; devices
not reached keep what they run. A device that was offline picks the desired state up when it
returns (a late success is recorded). A newer rollout supersedes a running one (the older one
stops at its next step). Progress lives in the hub's KV bucket ``edge-ota-rollouts`` (key = the
rollout id, plus ``current``), which ``edge rollout status`` reads.

Device labels are the hub's KV bucket ``edge-ota-labels`` (key = device id, value = a JSON
object); the selector ``k=v,k2=v2`` matches devices having every pair.

With a fleet policy (``policy_file``), each device of a batch is decided before its desired
state is written (:func:`check_deploy`: operator ``operator``, action ``deploy``, every artifact
of the rollout, the device's labels): a denied device is not given anything and is recorded as
``denied`` with the rule and the reason; it does not count as failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from edge.nats import subjects
from edge.ota import hub
from edge.ota.errors import OtaError

log = logging.getLogger("edge.ota.rollout")

ROLLOUTS_BUCKET = "edge-ota-rollouts"
LABELS_BUCKET = "edge-ota-labels"
POLL_S = 0.5


@dataclass(frozen=True)
class RolloutSpec:
    id: str
    selector: dict[str, str]
    components: dict[str, str]
    canary: int = 1
    batch: int = 5
    max_failure_pct: float = 20.0
    probation_s: float | None = None
    device_timeout_s: float = 300.0
    policy_file: str | None = None  # the fleet policy deciding deploy per device (None: no check)
    operator: str = "cloud"  # the operator the fleet policy decides for

    def check(self) -> None:
        subjects.check_id(self.id, "rollout id")
        if self.canary < 0 or self.batch < 1:
            raise OtaError("a rollout needs canary >= 0 and batch >= 1", reason="invalid")
        if not 0 <= self.max_failure_pct <= 100:
            raise OtaError("max_failure_pct must be within 0..100", reason="invalid")
        if not self.components:
            raise OtaError("a rollout needs at least one artifact (NAME=VERSION)", reason="invalid")


def parse_selector(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise OtaError(f"selector part {part!r}: use key=value", reason="invalid")
        out[k] = v
    return out


async def _kv(js: Any, bucket: str) -> Any:
    from nats.js.errors import BucketNotFoundError

    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=bucket, history=1)


async def set_labels(js: Any, device: str, labels: dict[str, str]) -> None:
    kv = await _kv(js, LABELS_BUCKET)
    await kv.put(subjects.check_device_id(device), json.dumps(labels).encode())


async def get_labels(js: Any, device: str) -> dict[str, str]:
    """The labels of ``device`` (empty when it has none, or a record that is not a JSON object)."""
    from nats.js.errors import KeyNotFoundError

    kv = await _kv(js, LABELS_BUCKET)
    try:
        raw = json.loads((await kv.get(subjects.check_device_id(device))).value or b"{}")
    except (KeyNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def check_deploy(policy: Any, operator: str, device: str, artifacts: dict[str, str],
                 labels: dict[str, str]) -> str | None:
    """None if the fleet ``policy`` lets ``operator`` give ``device`` every artifact, else why not
    (the first artifact denied, the rule and the reason)."""
    for artifact in hub.artifact_names(artifacts):
        d = policy.artifact(operator, device, artifact, labels)
        if not d.allowed:
            return f"{artifact}: {d.reason} (rule '{d.rule}')"
    return None


async def select(js: Any, selector: dict[str, str]) -> list[str]:
    """Devices whose labels hold every pair of ``selector``, sorted."""
    from nats.js.errors import NoKeysError

    kv = await _kv(js, LABELS_BUCKET)
    try:
        keys = await kv.keys()
    except NoKeysError:
        return []
    out = []
    for device in keys:
        try:
            labels = json.loads((await kv.get(device)).value or b"{}")
        except (ValueError, Exception):  # noqa: BLE001  a bad label record is skipped
            continue
        if all(labels.get(k) == v for k, v in selector.items()):
            out.append(device)
    return sorted(out)


@dataclass
class DeviceProgress:
    state: str = "pending"  # pending | updating | committed | failed | timed_out | denied
    batch: int = -1
    reason: str = ""
    started: float = 0.0
    finished: float = 0.0


@dataclass
class RolloutRecord:
    spec: dict[str, Any]
    status: str = "running"  # running | completed | halted | superseded
    started: float = field(default_factory=time.time)
    finished: float = 0.0
    halt_reason: str = ""
    devices: dict[str, DeviceProgress] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({**asdict(self)}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RolloutRecord:
        raw = json.loads(data)
        devices = {k: DeviceProgress(**v) for k, v in raw.pop("devices", {}).items()}
        return cls(devices=devices, **raw)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.devices.values():
            out[p.state] = out.get(p.state, 0) + 1
        return out


async def _get_entry(js: Any, rollout_id: str) -> tuple[RolloutRecord | None, int]:
    """The record of ``rollout_id`` (``current``: the latest) and its KV revision (0: none)."""
    from nats.js.errors import KeyNotFoundError

    kv = await _kv(js, ROLLOUTS_BUCKET)
    try:
        if rollout_id == "current":
            rollout_id = ((await kv.get("current")).value or b"").decode()
        entry = await kv.get(rollout_id)
    except KeyNotFoundError:
        return None, 0
    return RolloutRecord.from_json(entry.value or b"{}"), int(entry.revision or 0)


async def get_record(js: Any, rollout_id: str = "current") -> RolloutRecord | None:
    return (await _get_entry(js, rollout_id))[0]


async def _store(js: Any, rec: RolloutRecord, *, stop_if_superseded: bool = True) -> bool:
    """Write ``rec`` unless the stored record says it was superseded (False then). A
    compare-and-set on the record's KV revision: a concurrent supersede is never overwritten."""
    from nats.js.errors import KeyWrongLastSequenceError

    kv = await _kv(js, ROLLOUTS_BUCKET)
    key = str(rec.spec["id"])
    for _ in range(10):
        current, revision = await _get_entry(js, key)
        if stop_if_superseded and current is not None and current.status == "superseded":
            rec.status, rec.halt_reason, rec.finished = "superseded", current.halt_reason, current.finished
            return False
        try:
            if revision:
                await kv.update(key, rec.to_json(), last=revision)
            else:
                await kv.create(key, rec.to_json())
            return True
        except KeyWrongLastSequenceError:
            continue  # written meanwhile: read again
    raise OtaError(f"rollout {key}: its record keeps changing under it", reason="invalid")


def device_outcome(report: dict[str, Any] | None, spec: RolloutSpec, since: float) -> tuple[str, str] | None:
    """``(state, reason)`` once ``report`` tells how the device took the rollout, else None."""
    if report is None:
        return None
    bad = report.get("bad") or {}
    for name, version in spec.components.items():
        if f"{name}@{version}" in bad:
            return "failed", str(bad[f"{name}@{version}"])
    if report.get("revision") == spec.id and report.get("probation") is None:
        return "committed", ""
    err = report.get("last_error") or {}
    if err and float(err.get("t", 0)) >= since and err.get("reason") not in ("download",):
        return "failed", f"refused ({err.get('reason')}): {err.get('message')}"
    return None


async def run_rollout(js: Any, spec: RolloutSpec, *, on_progress: Any = None) -> RolloutRecord:
    """Run ``spec`` to its end (completed, halted or superseded); returns its final record."""
    from nats.js.errors import KeyWrongLastSequenceError

    spec.check()
    fleet_policy = None
    if spec.policy_file is not None:
        from edge.policy.hub import FleetPolicy

        fleet_policy = FleetPolicy.from_file(spec.policy_file)  # a bad file stops it before anything
    hub.desired_document(spec.id, spec.components)  # a malformed set is refused before anything too
    kv = await _kv(js, ROLLOUTS_BUCKET)
    for _ in range(10):
        previous, revision = await _get_entry(js, "current")
        if previous is None or previous.status != "running" or previous.spec["id"] == spec.id:
            break
        previous.status = "superseded"
        previous.finished = time.time()
        previous.halt_reason = f"superseded by rollout {spec.id}"
        try:
            await kv.update(str(previous.spec["id"]), previous.to_json(), last=revision)
            break
        except KeyWrongLastSequenceError:
            continue  # it wrote progress meanwhile: read it again
    devices = await select(js, spec.selector)
    if not devices:
        raise OtaError(f"no device matches the selector {spec.selector}", reason="invalid")
    rec = RolloutRecord(spec=asdict(spec), devices={d: DeviceProgress() for d in devices})
    await _store(js, rec, stop_if_superseded=False)  # a reused id starts over
    await kv.put("current", spec.id.encode())
    batches: list[list[str]] = []
    rest = list(devices)
    if spec.canary:
        batches.append(rest[:spec.canary])
        rest = rest[spec.canary:]
    while rest:
        batches.append(rest[:spec.batch])
        rest = rest[spec.batch:]

    async def save() -> bool:
        """Store progress; False if a newer rollout superseded this one."""
        if not await _store(js, rec):
            return False
        if on_progress is not None:
            on_progress(rec)
        return True

    for index, batch in enumerate(batches):
        now = time.time()
        for d in batch:
            if fleet_policy is not None:
                why = check_deploy(fleet_policy, spec.operator, d, spec.components, await get_labels(js, d))
                if why is not None:  # not given anything; not a failure of the update
                    rec.devices[d] = DeviceProgress("denied", index, why, now, now)
                    log.warning("rollout %s: %s denied: %s", spec.id, d, why)
                    continue
            desired = hub.desired_document(spec.id, spec.components)
            if spec.probation_s is not None:
                desired["probation_s"] = spec.probation_s
            await hub.put_desired(js, d, desired)
            rec.devices[d] = DeviceProgress("updating", index, "", now)
        if not await save():
            return rec
        while any(rec.devices[d].state == "updating" for d in batch):
            await asyncio.sleep(POLL_S)
            changed = False
            for d in batch:
                p = rec.devices[d]
                if p.state != "updating":
                    continue
                outcome = device_outcome(await hub.get_report(js, d), spec, p.started)
                if outcome is None and time.time() - p.started > spec.device_timeout_s:
                    outcome = ("timed_out", f"no report within {spec.device_timeout_s:g} s")
                if outcome is not None:
                    p.state, p.reason, p.finished = outcome[0], outcome[1], time.time()
                    changed = True
            if changed:
                if not await save():
                    return rec
            else:
                current = await get_record(js, spec.id)
                if current is not None and current.status == "superseded":
                    rec.status, rec.halt_reason, rec.finished = ("superseded", current.halt_reason,
                                                                 current.finished)
                    return rec
        tried = [p for p in rec.devices.values() if p.batch >= 0 and p.state != "denied"]
        failed = [p for p in tried if p.state in ("failed", "timed_out")]
        if tried and 100.0 * len(failed) / len(tried) > spec.max_failure_pct:
            names = [f"{d} ({p.reason})" for d, p in rec.devices.items() if p.state in ("failed", "timed_out")]
            rec.status = "halted"
            rec.halt_reason = (f"{len(failed)} of {len(tried)} devices failed "
                               f"(over {spec.max_failure_pct:g} %): " + "; ".join(names))
            rec.finished = time.time()
            await save()
            log.warning("rollout %s halted: %s", spec.id, rec.halt_reason)
            return rec
    rec.status = "completed"
    rec.finished = time.time()
    await save()
    return rec


async def refresh_late(js: Any, rollout_id: str = "current") -> RolloutRecord | None:
    """Record devices that timed out but committed since (they were offline and came back)."""
    rec = await get_record(js, rollout_id)
    if rec is None:
        return None
    spec = RolloutSpec(**rec.spec)
    changed = False
    for d, p in rec.devices.items():
        if p.state == "timed_out":
            outcome = device_outcome(await hub.get_report(js, d), spec, p.started)
            if outcome is not None:
                p.state, p.reason, p.finished = outcome[0], outcome[1] or "late", time.time()
                changed = True
    if changed:
        await _store(js, rec, stop_if_superseded=False)
    return rec
