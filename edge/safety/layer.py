"""The envelope as a layer: every motion command to a guarded entity is checked before it runs.

Key components
- :class:`SafetyLayer` (``edge status`` section ``safety``): installs the guard on the device's
  command router (:meth:`~edge.nats.commands.CommandRouter.set_guard`), the one point every
  command passes between its source (agents, wasm systems, the tools service, cloud commands
  replayed by the uplink, ``edge cmd``) and the handler that puts it on the wire. For a guarded
  entity it reads the vehicle's state from the world (``flight``, ``position``, ``attitude``,
  ``battery``, ``geo``), asks :func:`edge.safety.envelope.check`, and lets the command run as
  sent, runs it clamped (the answer's ``envelope`` says what was limited), refuses it (``ok:
  false``, reason ``envelope``, with the rule and, on a low battery, ``offer: "rtl"``) or runs a
  ``hold`` instead (``ok: false``, reason ``envelope``, with the hold's own answer under ``ran``).
  Every decision that is not a plain pass is also an event on ``edge.<d>.evt.<entity>.safety``;
  refusals (nothing ran) within a budget of :data:`REFUSAL_EVENTS` every
  :data:`REFUSAL_WINDOW_S`, the rest counted (``refusals_unrecorded``): ``EVT`` never evicts.
- The command-stream failsafe: while a rate command (a non-zero ``velocity`` or ``yaw_rate``) is
  in force, a guarded entity that gets no fresh motion command for ``failsafe_s`` seconds is sent
  ``hold`` (through the router, as caller ``safety-failsafe``), and the event says so.

Guarded entities: every ``[safety.<entity>]`` of the config and every entity of a vehicle driver
(the flight controller), given by the composition root.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from edge.budget import RecordBudget
from edge.layer import DeviceContext
from edge.nats import subjects
from edge.nats.commands import CommandClient, CommandError, CommandRequest, GuardVerdict
from edge.safety.config import SafetyConfig
from edge.safety.envelope import GUARDED_VERBS, Decision, VehicleState, check
from edge.world.store import World

log = logging.getLogger("edge.safety")

FAILSAFE_CALLER = "safety-failsafe"
FAILSAFE_POLL_S = 0.1  # seconds between failsafe checks
HOLD_TIMEOUT_S = 5.0  # seconds the failsafe's hold waits for its answer
EVENT_KIND = "safety"
#: Events of refused commands (nothing ran) kept every REFUSAL_WINDOW_S, as the router's records of
#: refusals (edge.nats.commands): a flood of refused commands must not fill EVT, which never evicts.
#: Clamps, holds and failsafe holds (something ran) are always recorded.
REFUSAL_EVENTS = 100
REFUSAL_WINDOW_S = 5.0
RATE_VERBS = ("velocity", "yaw_rate")
#: Verbs after which no rate command is in force (the failsafe has nothing to stop).
STOPPING_VERBS = frozenset({"hold", "land", "rtl", "disarm", "position", "goto", "takeoff"})


def _finite(values: dict[str, Any], key: str) -> float | None:
    v = values.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def read_state(world: World, entity: str) -> VehicleState:
    """The vehicle's state from its world components (absent or non-finite values are unknown)."""
    if entity not in world:
        return VehicleState()

    def comp(name: str) -> dict[str, Any]:
        return world.get(entity, name) if world.has(entity, name) else {}

    flight, pos, att, bat, geo = comp("flight"), comp("position"), comp("attitude"), comp("battery"), comp("geo")
    armed = flight.get("armed")
    mode = flight.get("mode")
    yaw = _finite(att, "yaw")
    unknown = bat.get("unknown")
    level_unknown = isinstance(unknown, str) and "level" in unknown.split(",")  # MAVLink's "unknown" sentinel
    return VehicleState(
        armed=armed if isinstance(armed, bool) else None,
        mode=mode if isinstance(mode, str) and mode else None,
        x=_finite(pos, "x"), y=_finite(pos, "y"), z=_finite(pos, "z"),
        yaw=None if yaw is None else math.degrees(yaw) % 360.0,
        battery=None if level_unknown else _finite(bat, "level"),
        lat=_finite(geo, "lat"), lon=_finite(geo, "lon"),
    )


def _is_rate(verb: str, args: dict[str, Any]) -> bool:
    if verb == "velocity":
        return any(_finite(args, k) for k in ("x", "y", "z", "yaw_rate"))
    if verb == "yaw_rate":
        return bool(_finite(args, "rate"))
    return False


class SafetyLayer:
    """Guards the motion commands of ``guarded`` entities with their envelope."""

    name = "safety"

    def __init__(self, config: SafetyConfig, guarded: Iterable[str] = ()) -> None:
        self.config = config
        self.guarded = set(guarded) | set(config.entities)
        self.decisions: collections.Counter[str] = collections.Counter()
        self.failsafe_holds = 0
        self.last: dict[str, Any] | None = None  # the last decision that was not a pass
        self._ctx: DeviceContext | None = None
        self._remove: Callable[[], None] | None = None
        self._streaming: dict[str, float] = {}  # entity -> monotonic time of its last fresh rate command
        self._task: asyncio.Task[None] | None = None
        self._holds: set[asyncio.Task[None]] = set()
        self._seq = 0
        self.refusal_events = RecordBudget(REFUSAL_EVENTS, REFUSAL_WINDOW_S)

    async def start(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        self._remove = ctx.commands.set_guard(self.guard)
        self._task = asyncio.get_running_loop().create_task(self._failsafe(), name="edge.safety.failsafe")
        log.info("safety envelope guards %s", ", ".join(sorted(self.guarded)) or "no entity")

    async def stop(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None
        tasks = [t for t in (self._task, *self._holds) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._task = None

    def status(self) -> dict[str, Any]:
        return {"guarded": sorted(self.guarded), "decisions": dict(self.decisions),
                "failsafe_holds": self.failsafe_holds, "streaming": sorted(self._streaming), "last": self.last,
                "refusals_unrecorded": self.refusal_events.over}

    # -- the guard --------------------------------------------------------------------------------

    def guard(self, request: CommandRequest) -> GuardVerdict | None:
        """The router's guard: the envelope's verdict on one command (None: not ours to check)."""
        if request.entity not in self.guarded or request.verb not in GUARDED_VERBS or self._ctx is None:
            return None
        envelope = self.config.for_entity(request.entity)
        state = read_state(self._ctx.world, request.entity)
        verdict = check(request.verb, request.args, state, envelope)
        self.decisions[str(verdict.decision)] += 1
        if verdict.runs:
            self._track(request.entity, verdict.verb, verdict.args)
        summary = verdict.to_dict()
        if verdict.decision is Decision.PASS:
            return GuardVerdict(request, {"envelope": summary})
        self._record(request, summary)
        fields: dict[str, Any] = {"envelope": summary}
        if verdict.offer:
            fields["offer"] = verdict.offer
        if verdict.decision is Decision.CLAMPED:
            return GuardVerdict(replace(request, args=verdict.args), fields)
        if verdict.decision is Decision.HOLD:
            return GuardVerdict(replace(request, verb="hold", args={}), fields, error=verdict.reason)
        return GuardVerdict(None, fields, error=verdict.reason)

    def _track(self, entity: str, verb: str, args: dict[str, Any]) -> None:
        if verb in RATE_VERBS and _is_rate(verb, args):
            self._streaming[entity] = time.monotonic()
        elif verb in STOPPING_VERBS or verb in RATE_VERBS:
            self._streaming.pop(entity, None)

    def _record(self, request: CommandRequest, summary: dict[str, Any]) -> None:
        event = {"entity": request.entity, "verb": request.verb, "id": request.id, "caller": request.caller,
                 "requested": request.args, **summary, "t": time.time()}
        self.last = event
        log.info("envelope %s %s.%s: %s", summary.get("decision"), request.entity, request.verb,
                 summary.get("reason", ""))
        if summary.get("decision") == str(Decision.REFUSED) and not self.refusal_events.take():
            if self.refusal_events.over_in_window == 1:
                log.warning("envelope refusals over %d every %g s are answered and counted, not recorded",
                            REFUSAL_EVENTS, REFUSAL_WINDOW_S)
            return
        self._emit(request.entity, event, f"safety.{request.entity}.{request.verb}.{request.id}")

    def _emit(self, entity: str, event: dict[str, Any], msg_id: str) -> None:
        assert self._ctx is not None
        try:
            self._ctx.events.emit(subjects.event(self._ctx.device, entity, EVENT_KIND),
                                  json.dumps(event, separators=(",", ":"), default=str).encode(), msg_id=msg_id)
        except Exception as err:  # noqa: BLE001  the sender has its answer; the record is logged
            log.warning("recording the safety event of %s failed: %s", entity, err)

    # -- the command-stream failsafe --------------------------------------------------------------

    async def _failsafe(self) -> None:
        while True:
            await asyncio.sleep(FAILSAFE_POLL_S)
            now = time.monotonic()
            for entity, last in list(self._streaming.items()):
                limit = self.config.for_entity(entity).failsafe_s
                if limit > 0 and now - last > limit:
                    self._streaming.pop(entity, None)
                    task = asyncio.get_running_loop().create_task(self._hold(entity, now - last))
                    self._holds.add(task)
                    task.add_done_callback(self._holds.discard)

    async def _hold(self, entity: str, silent: float) -> None:
        assert self._ctx is not None
        self.failsafe_holds += 1
        self._seq += 1
        event: dict[str, Any] = {"entity": entity, "verb": "hold", "decision": "hold", "rule": "failsafe",
                                 "reason": f"no fresh motion command for {silent:.1f} s: hold", "t": time.time()}
        log.warning("envelope failsafe: %s", event["reason"])
        try:
            res = await CommandClient(self._ctx.nc, self._ctx.device).send(
                entity, "hold", {}, timeout=HOLD_TIMEOUT_S, caller=FAILSAFE_CALLER)
            event["answer"] = res.answer
        except CommandError as err:
            event["answer"] = err.to_answer()
        self.last = event
        self._emit(entity, event, f"safety.{entity}.failsafe.{time.time_ns()}.{self._seq}")
