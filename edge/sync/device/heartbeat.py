"""The device heartbeat: a small periodic summary the hub's fleet page reads (docs/sync.md).

Every ``interval_s`` the layer publishes one JSON message on ``edge.<device>.tele._device.heartbeat``
through the device's telemetry path (best effort, captured by ``TELE`` and sourced to the hub's
``TELE_<device>`` like all telemetry, so heartbeats recorded during an outage arrive with the
backlog). The hub counts a device online while its latest heartbeat is younger than the ``ttl_s``
the heartbeat itself carries (``ttl_factor`` times the interval).

The body (``v`` = :data:`HEARTBEAT_VERSION`)::

    {"v": 1, "device": "dev1", "seq": 17, "t": 1764640000.5, "interval_s": 2.0, "ttl_s": 6.0,
     "uptime_s": 34.1,
     "components": [{"name": "patrol", "version": "1.0.0", "state": "running"}],
     "models": [{"name": "face", "version": "<sha256 prefix>", "state": "serving"}],
     "faults": 0, "last_fault": null, "denied": 0,
     "positions": [{"entity": "drone-0", "lat": 47.39, "lon": 8.54, "alt": 488.0},
                   {"entity": "drone-1", "x": -14.4, "y": 12.4}]}

``positions`` holds at most :data:`MAX_POSITIONS` entities (``geo`` first, then ``position``),
so a heartbeat stays small however large the world is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from edge.errors import ConfigError
from edge.layer import DeviceContext
from edge.nats import subjects
from edge.tasks import cancel_and_wait
from edge.world.store import World

log = logging.getLogger("edge.sync.device.heartbeat")

HEARTBEAT_VERSION = 1
HEARTBEAT_ENTITY = "_device"  # subject token of the device itself (entity ids of the world are not touched)
HEARTBEAT_KIND = "heartbeat"
DEFAULT_INTERVAL_S = 2.0
DEFAULT_TTL_FACTOR = 3.0  # a device is offline after missing this many intervals
MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 3600.0
MAX_POSITIONS = 32
MAX_LISTED = 32  # components / models listed in one heartbeat

StatusFn = Callable[[], dict[str, Any]]


def heartbeat_subject(device: str) -> str:
    """``edge.<device>.tele._device.heartbeat``."""
    return subjects.telemetry(subjects.check_device_id(device), HEARTBEAT_ENTITY, HEARTBEAT_KIND)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def positions_of(world: World, limit: int = MAX_POSITIONS) -> list[dict[str, Any]]:
    """Up to ``limit`` entity positions: ``geo`` (lat/lon/alt) first, then local ``position`` (x/y)."""
    geo: list[dict[str, Any]] = []
    local: list[dict[str, Any]] = []
    for meta in world.entities():
        comps = world.components_of(meta.id)
        if "geo" in comps:
            g = world.get(meta.id, "geo")
            lat, lon = _finite(g.get("lat")), _finite(g.get("lon"))
            if lat is not None and lon is not None:
                geo.append({"entity": meta.id, "lat": lat, "lon": lon, "alt": _finite(g.get("alt"))})
        elif "position" in comps:
            p = world.get(meta.id, "position")
            x, y = _finite(p.get("x")), _finite(p.get("y"))
            if x is not None and y is not None:
                local.append({"entity": meta.id, "x": x, "y": y})
    return (geo + local)[:limit]


def summary_of(status: dict[str, Any]) -> dict[str, Any]:
    """Versions, fault and denial counts from the runtime's status (``edge status --json``)."""
    comps = [c for c in status.get("components") or [] if isinstance(c, dict)]
    denied = 0
    for c in comps:
        counters = c.get("counters") or {}
        denied += int(counters.get("denied", 0) or 0) + int(counters.get("denied_infer", 0) or 0)
    tools = status.get("tools") or {}
    if isinstance(tools.get("denied"), dict):
        denied += sum(int(v or 0) for v in tools["denied"].values())
    models = (status.get("inference") or {}).get("models") or {}
    faults = [f for f in status.get("faults") or [] if isinstance(f, dict)]
    last = faults[-1] if faults else None
    return {
        "components": [
            {"name": str(c.get("name")), "version": str(c.get("version", "")), "state": str(c.get("state", "?"))}
            for c in comps[:MAX_LISTED]
        ],
        "models": [
            {"name": str(name), "version": str(m.get("sha256") or "")[:12], "state": str(m.get("state", "?"))}
            for name, m in list(models.items())[:MAX_LISTED] if isinstance(m, dict)
        ],
        "faults": len(faults),
        "last_fault": None if last is None else {
            "t": last.get("t"), "component": last.get("component"), "kind": last.get("kind"),
            "message": str(last.get("message", ""))[:200],
        },
        "denied": denied,
    }


def heartbeat_message(device: str, seq: int, *, interval_s: float, ttl_s: float, uptime_s: float,
                      summary: dict[str, Any] | None = None,
                      positions: list[dict[str, Any]] | None = None, t: float | None = None) -> bytes:
    """One heartbeat body (the layer's, and the one lightweight publishers in benchmarks send)."""
    msg: dict[str, Any] = {
        "v": HEARTBEAT_VERSION, "device": device, "seq": seq, "t": round(time.time() if t is None else t, 3),
        "interval_s": interval_s, "ttl_s": ttl_s, "uptime_s": round(uptime_s, 1),
    }
    if summary:
        msg.update(summary)
    msg["positions"] = (positions or [])[:MAX_POSITIONS]
    return json.dumps(msg, separators=(",", ":")).encode()


class HeartbeatLayer:
    """Publishes the device heartbeat every ``interval_s`` (``edge status`` section ``heartbeat``)."""

    name = "heartbeat"

    def __init__(self, status: StatusFn | None = None, *, interval_s: float = DEFAULT_INTERVAL_S,
                 ttl_factor: float = DEFAULT_TTL_FACTOR) -> None:
        if not MIN_INTERVAL_S <= interval_s <= MAX_INTERVAL_S:
            raise ConfigError(f"heartbeat interval {interval_s} s is outside {MIN_INTERVAL_S}..{MAX_INTERVAL_S} s",
                              key="interval_s")
        if ttl_factor < 1.0:
            raise ConfigError(f"heartbeat ttl factor {ttl_factor} must be at least 1", key="ttl_factor")
        self._status = status
        self.interval_s = interval_s
        self.ttl_s = interval_s * ttl_factor
        self.seq = 0
        self.sent = 0
        self.errors = 0
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def start(self, ctx: DeviceContext) -> None:
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._run(ctx), name="edge.sync.device.heartbeat")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def body(self, ctx: DeviceContext) -> bytes:
        self.seq += 1
        return heartbeat_message(
            ctx.device, self.seq, interval_s=self.interval_s, ttl_s=self.ttl_s,
            uptime_s=time.monotonic() - self._started,
            summary=summary_of(self._status()) if self._status is not None else None,
            positions=positions_of(ctx.world),
        )

    async def _run(self, ctx: DeviceContext) -> None:
        subject = heartbeat_subject(ctx.device)
        while True:
            try:
                await ctx.events.telemetry(subject, self.body(ctx))
                self.sent += 1
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a status part failing must not stop the heartbeat
                self.errors += 1
                log.warning("heartbeat not sent: %s", err)
            await asyncio.sleep(self.interval_s)

    def status(self) -> dict[str, Any]:
        return {"interval_s": self.interval_s, "ttl_s": self.ttl_s, "seq": self.seq, "sent": self.sent,
                "errors": self.errors}
