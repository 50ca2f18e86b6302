"""Replay as a check before an OTA rollout: the candidate run over a device's recorded window.

Key components
- :func:`replay_check`: replays ``window`` of ``device``'s records (the hub's copy
  ``REC_<device>`` on a client of the hub, or the device's own ``REC`` on a client of the device)
  with candidate modules or manifests instead of the recorded versions, and returns a
  :class:`CheckVerdict`: identical, or diverged with the first divergence and the counts of
  ticks, publishes, KV writes and decisions that differ.
- :func:`fetch_target`: a published OTA target (``component/<name>/<version>.tar`` in the hub's
  ``edge-ota`` object store) unpacked into a directory, its length and sha256 checked against
  the newest targets metadata there. The signatures are not checked here: the candidate only
  runs in the replay's isolated sandbox; a device checks them before it installs anything.
- :func:`rollout_check`: what ``edge rollout start ... --replay-check DEVICE[:WINDOW]`` runs
  (:func:`parse_check`), the rollout's ``NAME=VERSION`` components as the candidates.

See docs/replay.md, *Before a rollout*.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.js.errors import NotFoundError

from edge.nats import subjects as naming
from edge.replay.records import REC_STREAM, ReplayError
from edge.replay.replayer import Divergence, ReplayReport, replay
from edge.replay.source import Window, parse_time

log = logging.getLogger("edge.replay.check")

#: The window a check replays when ``--replay-check`` names only the device.
DEFAULT_CHECK_WINDOW = "-10m"
#: The hub's object store of OTA metadata and targets (edge.ota.repo.OTA_BUCKET).
OTA_BUCKET = "edge-ota"
#: Largest target artifact fetched for a check (bytes).
MAX_TARGET_BYTES = 64 * 2**20


@dataclass
class CheckVerdict:
    """The outcome of one replay check."""

    device: str
    stream: str
    candidates: dict[str, str]  # component -> what ran instead (path, or name@version)
    report: ReplayReport
    differing: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return self.report.identical

    @property
    def first(self) -> Divergence | None:
        return self.report.first

    def sentence(self) -> str:
        what = ", ".join(f"{n} {c}" for n, c in sorted(self.candidates.items()))
        r = self.report
        head = (f"replay check of {what} on {self.device}'s records ({self.stream}, "
                f"{r.recorded_s:.1f} s recorded, {r.records} records)")
        if self.identical:
            return f"{head}: every output identical to the record"
        counts = "; ".join(f"{n}: " + ", ".join(f"{v} {k}" for k, v in c.items() if v)
                           for n, c in sorted(self.differing.items()) if any(c.values()))
        first = self.first
        return f"{head}: DIVERGES ({counts}); {first.sentence() if first else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "stream": self.stream, "candidates": self.candidates,
                "identical": self.identical, "differing": self.differing,
                "report": self.report.to_dict()}


def parse_check(text: str) -> tuple[str, Window]:
    """``DEVICE[:FROM[..TO]]`` (times as ``edge replay --from``; default the last 10 minutes)."""
    device, _, window = text.partition(":")
    try:
        naming.check_device_id(device)
    except Exception as err:
        raise ReplayError(f"--replay-check '{text}': '{device}' is not a device id (use "
                          "DEVICE[:FROM[..TO]], e.g. drone7:-10m)", reason="usage") from err
    t_from, sep, t_to = (window or DEFAULT_CHECK_WINDOW).partition("..")
    try:
        return device, Window(parse_time(t_from), parse_time(t_to) if sep and t_to else
                              float("inf"))
    except ReplayError as err:
        raise ReplayError(f"--replay-check '{text}': {err.message}", reason="usage") from err


async def _record_js(nc: Any, device: str, stream: str | None) -> tuple[Any, str]:
    """The JetStream context and stream holding ``device``'s records: the hub's
    ``REC_<device>`` if the client's server has it, else its ``REC`` (a client of the device)."""
    js = nc.jetstream()
    if stream is not None:
        return js, stream
    hub_copy = naming.hub_stream(REC_STREAM, device)
    for name in (hub_copy, REC_STREAM):
        try:
            await js.stream_info(name)
            return js, name
        except NotFoundError:
            continue
    raise ReplayError(f"no records of {device} here: neither the hub's copy {hub_copy} (provision "
                      f"it with `edge cloud provision --record {device}` for a device with [sync] "
                      f"record = true) nor a device's {REC_STREAM}", device=device,
                      reason="no-stream")


async def replay_check(nc: Any, device: str, window: Window, candidates: Mapping[str, Path], *,
                       stream: str | None = None,
                       labels: Mapping[str, str] | None = None) -> CheckVerdict:
    """Replay ``window`` of ``device``'s records with ``candidates`` (component -> a ``.wasm``
    or a manifest) and compare every output (``nc``: a client on the hub or the device)."""
    if not candidates:
        raise ReplayError("a replay check needs at least one candidate", reason="usage")
    js, name = await _record_js(nc, device, stream)
    report = await replay(js, device, window, stream=name, what_if=dict(candidates))
    missing = sorted(set(candidates) - set(report.components))
    if missing:  # the window holds nothing of it: an identical replay would prove nothing
        raise ReplayError(f"component '{missing[0]}' ran nowhere in the window of {device}'s "
                          f"records ({name}): nothing to check the candidate against",
                          component=missing[0], device=device, reason="empty")
    differing = {n: {"ticks": c.ticks_differing, "publishes": c.publishes_differing,
                     "kv writes": c.kv_differing, "decisions": c.decisions_differing}
                 for n, c in report.components.items()}
    shown = {n: (labels or {}).get(n, str(p)) for n, p in candidates.items()}
    verdict = CheckVerdict(device, name, shown, report, differing)
    log.info("%s", verdict.sentence())
    return verdict


async def fetch_target(js: Any, name: str, version: str, dest: Path, *,
                       bucket: str = OTA_BUCKET) -> Path:
    """Unpack the published component target ``name`` ``version`` into ``dest`` (a
    directory that does not exist yet); returns its manifest path. Raises ReplayError when it is not published or its
    bytes do not match the targets metadata."""
    from edge.ota.bundle import MANIFEST, unpack
    from edge.ota.errors import OtaError

    path = f"component/{name}/{version}.tar"
    try:
        obs = await js.object_store(bucket)
        names = [i.name for i in await obs.list()]
    except NotFoundError:
        names = []
    metas = sorted((int(n.split("/")[-1].split(".")[0]), n) for n in names
                   if n.startswith("metadata/") and n.endswith(".targets.json")
                   and n.split("/")[-1].split(".")[0].isdigit())
    if not metas:
        raise ReplayError(f"no OTA targets are published on the hub (object store '{bucket}')",
                          reason="unknown")
    try:
        signed = json.loads((await obs.get(metas[-1][1])).data)["signed"]["targets"]
        entry = signed[path]
        sha, length = str(entry["hashes"]["sha256"]), int(entry["length"])
    except KeyError:
        raise ReplayError(f"no published OTA target {path} (targets metadata "
                          f"{metas[-1][1]})", component=name, reason="unknown") from None
    except (ValueError, TypeError) as err:
        raise ReplayError(f"the targets metadata {metas[-1][1]} is malformed: {err}",
                          reason="malformed") from err
    if length > MAX_TARGET_BYTES:
        raise ReplayError(f"OTA target {path} is {length} bytes, more than a check fetches "
                          f"({MAX_TARGET_BYTES})", component=name, reason="too_large")
    obj = f"targets/component/{name}/{sha}.{version}.tar"
    try:
        data = bytes((await obs.get(obj)).data or b"")
    except NotFoundError:
        raise ReplayError(f"OTA target {path} is in the metadata but {obj} is not in the "
                          "object store", component=name, reason="unknown") from None
    if len(data) != length or hashlib.sha256(data).hexdigest() != sha:
        raise ReplayError(f"OTA target {obj} does not match its metadata (length or sha256)",
                          component=name, reason="tampered")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        unpack(data, dest, artifact=path)  # a new, empty directory
    except OtaError as err:
        raise ReplayError(f"OTA target {path}: {err.message}", component=name,
                          reason="malformed") from err
    return dest / MANIFEST


async def rollout_check(nc: Any, check: str, components: Mapping[str, str]) -> CheckVerdict:
    """``--replay-check DEVICE[:WINDOW]`` of a rollout of ``components`` (name -> version):
    each published target replayed over the device's window (``nc``: a client on the hub)."""
    device, window = parse_check(check)
    with tempfile.TemporaryDirectory(prefix="edge-replay-check-") as tmp:
        candidates = {name: await fetch_target(nc.jetstream(), name, version, Path(tmp) / name)
                      for name, version in components.items()}
        labels = {name: f"{version} (OTA target)" for name, version in components.items()}
        return await replay_check(nc, device, window, candidates, labels=labels)


__all__ = ["CheckVerdict", "fetch_target", "parse_check", "replay_check", "rollout_check"]
