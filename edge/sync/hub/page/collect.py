"""What the fleet page shows, read from the hub's JetStream (docs/sync.md, "Fleet page").

:class:`FleetCollector` builds one snapshot of the fleet per poll. It only *reads* the hub, through
the public hub API (:func:`edge.sync.hub.fleet.list_devices` and
:func:`~edge.sync.hub.fleet.fleet_status`) and direct last-message reads of the per-device hub
streams, so it works against any hub that provisions devices with :mod:`edge.sync.hub.fleet`:

* the latest heartbeat (``TELE_<dev>``, subject ``edge.<dev>.tele._device.heartbeat``, see
  :mod:`edge.sync.device.heartbeat`): a device is ``online`` while the heartbeat's age (hub clock
  now minus the time the hub stored it) is at most the ``ttl_s`` it carries (capped to
  :data:`MAX_TTL_S`), ``offline`` after that, ``never`` without a heartbeat;
* the latest faults (``EVT_<dev>``: ``edge.<dev>.evt.runtime.fault`` and
  ``edge.<dev>.evt.*.agent_fault``), kept per device in a small ring as they appear;
* link state, last seen and lag by sequence from ``fleet_status``.

A heartbeat that is not a JSON object of version 1 with a valid ``ttl_s`` is counted
(``malformed``) and ignored; the device is then shown as if it had none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from edge.errors import EdgeError
from edge.nats import subjects as naming
from edge.nats.service import loads
from edge.sync.device.heartbeat import HEARTBEAT_VERSION, heartbeat_subject
from edge.sync.hub.fleet import list_devices
from edge.sync.hub.fleet import fleet_status as hub_fleet_status
from edge.world.schema import is_finite_number

log = logging.getLogger("edge.sync.hub.page")

MAX_TTL_S = 3600.0  # a heartbeat cannot keep its device "online" longer than this
MAX_CONCURRENT = 16  # devices read at the same time in one poll
RECENT_FAULTS = 5  # faults kept per device
FAULT_SUBJECTS = ("runtime.fault", "*.agent_fault")  # under edge.<dev>.evt.


@dataclass
class DeviceView:
    """One row of the fleet page."""

    device: str
    state: str  # "online" | "offline" | "never"
    heartbeat_age_s: float | None
    ttl_s: float | None
    seq: int | None
    uptime_s: float | None
    link: str
    last_seen_s: float | None
    lag: int
    tele_messages: int
    evt_messages: int
    cmd_pending: int
    components: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    desired: dict[str, Any] | None = None  # desired versions: empty until OTA sets them
    faults: int = 0
    denied: int = 0
    recent_faults: list[dict[str, Any]] = field(default_factory=list)
    positions: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(value: Any) -> float | None:
    return float(value) if is_finite_number(value) else None


def parse_heartbeat(data: bytes) -> dict[str, Any]:
    """The heartbeat body as a dict; EdgeError if it is not a version-1 heartbeat."""
    try:
        body = loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise EdgeError(f"heartbeat is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise EdgeError("heartbeat is not a JSON object")
    if body.get("v") != HEARTBEAT_VERSION:
        raise EdgeError(f"heartbeat version {body.get('v')!r} is not {HEARTBEAT_VERSION}", version=body.get("v"))
    ttl = _num(body.get("ttl_s"))
    if ttl is None or ttl <= 0:
        raise EdgeError(f"heartbeat ttl_s {body.get('ttl_s')!r} is not a positive number")
    return body


def _list_of_dicts(value: Any, keys: tuple[str, ...], limit: int = 64) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    out = []
    for item in value[:limit]:
        if isinstance(item, dict):
            out.append({k: item.get(k) for k in keys if k in item})
    return out


def _positions(value: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in _list_of_dicts(value, ("entity", "lat", "lon", "alt", "x", "y")):
        entity = str(p.get("entity", ""))[:64]
        lat, lon, x, y = (_num(p.get(k)) for k in ("lat", "lon", "x", "y"))
        if lat is not None and lon is not None and -90 <= lat <= 90 and -180 <= lon <= 180:
            out.append({"entity": entity, "lat": lat, "lon": lon, "alt": _num(p.get("alt"))})
        elif x is not None and y is not None:
            out.append({"entity": entity, "x": x, "y": y})
    return out


def _stored_at(msg: RawStreamMsg) -> float | None:
    """Unix time at which the hub stored ``msg`` (its arrival at the hub, also for sourced messages)."""
    return msg.time.timestamp() if msg.time is not None else None


class FleetCollector:
    """Reads the fleet from the hub's JetStream; :meth:`poll` returns one snapshot."""

    def __init__(self, js: JetStreamContext, *, down_after_s: float | None = None) -> None:
        self.js = js
        self.down_after_s = down_after_s
        self.polls = 0
        self.errors = 0
        self.malformed = 0
        self.last_error: str | None = None
        self._faults: dict[str, deque[dict[str, Any]]] = {}
        self._good: dict[str, tuple[dict[str, Any], float]] = {}  # device -> last good heartbeat, hub time
        self._seen_seq: dict[str, int] = {}  # device -> stream seq of the latest heartbeat read
        self._fault_seqs: dict[str, set[int]] = {}

    async def poll(self) -> dict[str, Any]:
        """A snapshot: ``{"t", "hub", "devices": [...], "counts", "collector"}``."""
        t0 = time.time()
        try:
            devices = await list_devices(self.js)
            sem = asyncio.Semaphore(MAX_CONCURRENT)

            async def one(d: str) -> DeviceView | None:
                async with sem:
                    return await self.device(d)

            views = [v for v in await asyncio.gather(*(one(d) for d in devices)) if v is not None]
            hub = "up"
        except Exception as err:  # the hub restarting: keep serving, say so
            self.errors += 1
            self.last_error = str(err) or type(err).__name__
            log.debug("fleet poll failed: %s", self.last_error)
            views, hub = [], "unreachable"
        self.polls += 1
        counts = {"online": 0, "offline": 0, "never": 0}
        for v in views:
            counts[v.state] += 1
        return {
            "t": round(t0, 3),
            "hub": hub,
            "devices": [v.as_dict() for v in views],
            "counts": counts,
            "collector": self.status(),
        }

    async def device(self, device: str) -> DeviceView | None:
        """The view of one device (None if it was deprovisioned meanwhile)."""
        kwargs = {} if self.down_after_s is None else {"down_after_s": self.down_after_s}
        try:
            st = (await hub_fleet_status(self.js, [device], **kwargs))[0]
        except EdgeError:
            return None
        view = DeviceView(
            device=device, state="never", heartbeat_age_s=None, ttl_s=None, seq=None, uptime_s=None,
            link=st.link, last_seen_s=st.last_seen_s, lag=st.lag, tele_messages=st.tele_messages,
            evt_messages=st.evt_messages, cmd_pending=st.cmd_pending, errors=list(st.errors),
        )
        await self._heartbeat(view)
        await self._recent_faults(view)
        return view

    async def _heartbeat(self, view: DeviceView) -> None:
        stream = naming.hub_stream(naming.TELE_STREAM, view.device)
        try:
            msg = await self.js.get_last_msg(stream, heartbeat_subject(view.device))
        except NotFoundError:
            return
        if self._seen_seq.get(view.device) != msg.seq:  # each stored heartbeat is parsed once
            self._seen_seq[view.device] = msg.seq or 0
            try:
                parsed = parse_heartbeat(msg.data or b"")
            except EdgeError as err:
                self.malformed += 1
                log.warning("device %s: malformed heartbeat (stream seq %s) ignored: %s",
                            view.device, msg.seq, err.message)
            else:
                stored = _stored_at(msg) or time.time()
                self._good[view.device] = (parsed, stored)
        good = self._good.get(view.device)
        if good is None:  # only malformed heartbeats so far
            return
        body, stored = good  # after a malformed one: the last good heartbeat, still ageing
        age = max(0.0, time.time() - stored)
        ttl = min(float(body["ttl_s"]), MAX_TTL_S)
        view.heartbeat_age_s = round(age, 2)
        view.ttl_s = ttl
        view.state = "online" if age <= ttl else "offline"
        seq, uptime = _num(body.get("seq")), _num(body.get("uptime_s"))
        view.seq = int(seq) if seq is not None else None
        view.uptime_s = uptime
        view.components = _list_of_dicts(body.get("components"), ("name", "version", "state"))
        view.models = _list_of_dicts(body.get("models"), ("name", "version", "state"))
        view.faults = int(_num(body.get("faults")) or 0)
        view.denied = int(_num(body.get("denied")) or 0)
        view.positions = _positions(body.get("positions"))

    async def _recent_faults(self, view: DeviceView) -> None:
        d = view.device
        stream = naming.hub_stream(naming.EVT_STREAM, d)
        ring = self._faults.setdefault(d, deque(maxlen=RECENT_FAULTS))
        seen = self._fault_seqs.setdefault(d, set())
        for tail in FAULT_SUBJECTS:
            try:
                msg = await self.js.get_last_msg(stream, f"{naming.PREFIX}.{d}.evt.{tail}")
            except NotFoundError:
                continue
            if msg.seq is None or msg.seq in seen:
                continue
            seen.add(msg.seq)
            try:
                body = loads(msg.data or b"")
            except ValueError:
                body = None
            if not isinstance(body, dict):
                self.malformed += 1
                continue
            stored = _stored_at(msg)
            ring.append({
                "t": stored, "subject": msg.subject, "seq": msg.seq,
                "what": str(body.get("component") or body.get("agent") or body.get("entity") or ""),
                "message": str(body.get("message") or body.get("reason") or body.get("error") or "")[:200],
            })
        if len(seen) > 4 * RECENT_FAULTS:  # keep only the sequences still in the ring
            seen.intersection_update(int(f["seq"]) for f in ring)
        view.recent_faults = sorted(ring, key=lambda f: f["seq"], reverse=True)

    def status(self) -> dict[str, Any]:
        return {"polls": self.polls, "errors": self.errors, "malformed": self.malformed,
                "last_error": self.last_error}
