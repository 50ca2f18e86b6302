"""The policy point: the one place every message between the device's parts is decided and
metered.

Key components
- :class:`PolicyPoint`: ``check(kind, id, action, resource, size=..., granted=...)`` meters the
  message for its principal and returns a :class:`~edge.policy.model.Decision`. With no policy
  loaded (the off switch) every message is allowed as before (rule ``off``) and only metered.
  With a policy: the compiled rules decide (:mod:`edge.policy.engine`), then the limits that
  apply (token buckets, quotas; :mod:`edge.policy.meter`). A denial is counted, kept among the
  recent denials and reported as an event (``edge.<device>.evt.policy.denied``; at most one per
  principal and rule every :data:`DENIAL_EVENT_INTERVAL_S`, carrying the count since the last).
- :meth:`PolicyPoint.load`: compile and swap in a new policy in one assignment (the old one
  keeps deciding until then); :meth:`PolicyPoint.load_file` refuses a bad file, keeps the old
  policy and remembers the error (``edge status``, section ``policy``).

Call sites pass ``granted``: whether the existing grant (the component's manifest, the tools
permissions, a component's own KV namespace) allows the message; without a rule deciding, a
grant allows and nothing else does (default deny).
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.budget import RecordBudget
from edge.errors import EdgeError
from edge.nats import subjects
from edge.policy.engine import CompiledPolicy, ContextFn
from edge.policy.meter import LimitState, Meter
from edge.policy.model import Action, Context, Decision
from edge.policy.rules import Limit, Policy, load_policy

if TYPE_CHECKING:
    from edge.layer import Events

log = logging.getLogger("edge.policy")

#: Seconds between two denial events of one principal and rule (each carries the count).
DENIAL_EVENT_INTERVAL_S = 5.0
#: Denial events of all principals together per DENIAL_EVENT_INTERVAL_S: a sender inventing a new
#: principal (``Edge-Caller``) per message must not fill ``EVT``, which never evicts. Past it the
#: denials are counted (``denial_events_suppressed``) and kept in ``recent``, not published.
MAX_DENIAL_EVENTS = 100
#: Recent denials kept for ``edge accounting``.
RECENT_DENIALS = 100
#: Limit states kept (principal x limit); past it the oldest are dropped (and start full again).
MAX_LIMIT_STATES = 8192

OFF = Decision(True, "off", "no policy is loaded: every message is allowed and metered")

_COUNTER = {Action.COMMAND.value: "commands", Action.CALL.value: "calls", Action.KV.value: "kv_writes"}
_COUNTED = frozenset(_COUNTER)


class PolicyPoint:
    """Decides and meters every message (see the module docstring)."""

    def __init__(self, device: str, *, events: Events | None = None,
                 link: Callable[[], str] | None = None,
                 labels: Callable[[str], dict[str, str]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.events = events
        self.link = link  # "up" | "down" | "none"
        self.labels = labels  # entity -> its labels
        self.clock = clock
        self.meter = Meter()
        self.compiled: CompiledPolicy | None = None
        self.generation = 0
        self.error: dict[str, Any] | None = None  # the last refused load
        self.loaded_at: float | None = None
        self.denied = 0
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_DENIALS)
        self._limit_states: collections.OrderedDict[tuple[str, str, str, Limit], LimitState] = (
            collections.OrderedDict())
        self._reported: dict[tuple[str, str, str], tuple[float, int]] = {}
        self.denial_events = RecordBudget(MAX_DENIAL_EVENTS, DENIAL_EVENT_INTERVAL_S, clock=clock)
        #: called with :meth:`in_use` after every load, the off switch included (the replay
        #: recorder's ``policy`` records); a listener must not block or raise
        self.load_listeners: list[Callable[[dict[str, Any]], None]] = []

    @property
    def enforcing(self) -> bool:
        return self.compiled is not None

    # -- loading --------------------------------------------------------------------------------

    def load(self, policy: Policy | None) -> None:
        """Compile ``policy`` and swap it in (None: the off switch)."""
        if policy is None:
            self.compiled = None
            self._loaded()
            return
        self.generation += 1
        compiled = CompiledPolicy(policy, self.generation)  # fully built before anyone sees it
        self.compiled = compiled
        self.error = None
        self.loaded_at = time.time()
        log.info("policy %s loaded (generation %d: %d rules, %d limits)", policy.file or "(inline)",
                 self.generation, len(policy.rules), len(policy.limits))
        self._loaded()

    def in_use(self) -> dict[str, Any]:
        """The policy deciding now: file, sha256 of its text, generation, rule and limit counts."""
        c = self.compiled
        return {"enforcing": c is not None, "file": c.policy.file if c is not None else None,
                "sha256": c.policy.digest if c is not None else None,
                "generation": self.generation,
                "rules": len(c.policy.rules) if c is not None else 0,
                "limits": len(c.policy.limits) if c is not None else 0}

    def _loaded(self) -> None:
        state = self.in_use()
        for listener in list(self.load_listeners):
            try:
                listener(state)
            except Exception:
                log.exception("a policy load listener failed")

    def load_file(self, path: str | Path) -> bool:
        """Load a policy file; a bad one is refused (logged, kept as :attr:`error`) and the old
        policy stays. Returns whether it was loaded."""
        try:
            policy = load_policy(path, self.device)
        except EdgeError as err:
            self.error = {"t": time.time(), "file": str(path), **err.to_dict()}
            log.error("policy not reloaded, the old one stays: %s", err.message)
            return False
        self.load(policy)
        return True

    # -- the hot path ---------------------------------------------------------------------------

    def check(self, kind: str, pid: str, action: str, resource: str, *, size: int = 0,
              granted: bool = False, entity: str | None = None) -> Decision:
        """Meter one message of ``size`` bytes by ``kind:pid`` and decide it."""
        u = self.meter.usage.get((kind, pid)) or self.meter.of(kind, pid)
        u.messages += 1
        u.bytes += size
        if action in _COUNTED:
            counter = _COUNTER[action]
            setattr(u, counter, getattr(u, counter) + 1)
        compiled = self.compiled  # one read: the whole decision uses one policy
        if compiled is None:
            return OFF
        ctx: ContextFn | None = None
        if compiled.conditional and (entity is not None or self.link is not None):
            ctx = self._context(entity)
        decision = compiled.decide(kind, pid, action, resource, granted, ctx)
        if compiled.limited and decision.allowed:
            limits = compiled.limits(kind, pid, action, resource)
            if limits:
                over = self._take(kind, pid, limits, size, compiled.generation)
                if over is not None:
                    decision = over
        if not decision.allowed:
            u.denied += 1
            self._denied(kind, pid, action, resource, decision)
        return decision

    def check_batch(self, kind: str, pid: str, action: str, items: list[tuple[str, bytes]], *,
                    granted: bool = False) -> list[tuple[str, bytes]]:
        """:meth:`check` for each (resource, payload) of a batch (one principal and action);
        returns the items allowed (``items`` itself when all are). One decision per distinct
        resource; each message still meets the limits and is metered and counted."""
        u = self.meter.usage.get((kind, pid)) or self.meter.of(kind, pid)
        n = len(items)
        u.messages += n
        u.bytes += sum([len(d) for _, d in items])
        if action in _COUNTED:
            counter = _COUNTER[action]
            setattr(u, counter, getattr(u, counter) + n)
        compiled = self.compiled
        if compiled is None:
            return items
        ctx = self._context(None) if compiled.conditional and self.link is not None else None
        decided: dict[str, Decision] = {}
        limited: dict[str, tuple[Limit, ...]] = {}
        for resource, _ in items:
            if resource not in decided:
                d = decided[resource] = compiled.decide(kind, pid, action, resource, granted, ctx)
                if d.allowed and compiled.limited:
                    limits = compiled.limits(kind, pid, action, resource)
                    if limits:
                        limited[resource] = limits
        if not limited and all(d.allowed for d in decided.values()):
            return items
        out = []
        for resource, data in items:
            decision = decided[resource]
            applying = limited.get(resource)
            if applying:
                over = self._take(kind, pid, applying, len(data), compiled.generation)
                if over is not None:
                    decision = over
            if decision.allowed:
                out.append((resource, data))
            else:
                u.denied += 1
                self._denied(kind, pid, action, resource, decision)
        return out

    def _context(self, entity: str | None) -> ContextFn:
        def build() -> Context:
            labels = self.labels(entity) if (entity is not None and self.labels is not None) else {}
            return Context(labels=labels, link=self.link() if self.link is not None else "none")
        return build

    def _take(self, kind: str, pid: str, limits: Iterable[Limit], size: int,
              generation: int) -> Decision | None:
        now = self.clock()
        for limit in limits:
            key = (kind, pid, limit.name, limit)
            state = self._limit_states.get(key)
            if state is None:
                state = self._limit_states[key] = LimitState.new(limit, now)
                while len(self._limit_states) > MAX_LIMIT_STATES:
                    self._limit_states.popitem(last=False)
            why = state.take(size, now)
            if why is not None:
                return Decision(False, limit.name, why, generation)
        return None

    def add_gas(self, component: str, gas: int) -> None:
        """Meter the gas one export call of ``component`` used."""
        self.meter.of("component", component).gas += gas

    def add_infer(self, kind: str, pid: str, seconds: float) -> None:
        """Meter the time one inference of ``kind:pid`` took."""
        self.meter.of(kind, pid).infer_s += seconds

    # -- denials --------------------------------------------------------------------------------

    def _denied(self, kind: str, pid: str, action: str, resource: str, decision: Decision) -> None:
        self.denied += 1
        principal = f"{kind[:16]}:{pid[:80]}".encode("utf-8", "replace").decode()  # bounded, printable
        shown = resource[:200].encode("utf-8", "replace").decode()
        record = {"t": time.time(), "principal": principal, "action": action, "resource": shown,
                  "rule": decision.rule, "reason": decision.reason, "generation": decision.generation}
        self.recent.append(record)
        key = (principal, decision.rule, action)
        now = self.clock()
        last = self._reported.get(key)
        if last is not None and now - last[0] < DENIAL_EVENT_INTERVAL_S:
            self._reported[key] = (last[0], last[1] + 1)
            return
        if not self.denial_events.take():
            return
        count = 1 + (last[1] if last is not None else 0)
        self._reported[key] = (now, 0)
        if len(self._reported) > MAX_LIMIT_STATES:
            self._reported.clear()
        log.warning("denied %s %s %s by %s: %s", principal, action, shown, decision.rule, decision.reason)
        if self.events is not None:
            try:
                self.events.emit(subjects.event(self.device, "policy", "denied"),
                                 json.dumps({**record, "count": count}).encode())
            except Exception:  # noqa: BLE001  an event that cannot be queued is logged, never raised
                log.exception("the denial event could not be queued")

    # -- reading --------------------------------------------------------------------------------

    def quotas(self) -> list[dict[str, Any]]:
        return [{"principal": f"{k}:{p}", **s.to_dict()}
                for (k, p, _n, _l), s in list(self._limit_states.items())[-50:]]

    def status(self) -> dict[str, Any]:
        c = self.compiled
        return {
            "enforcing": c is not None,
            "file": c.policy.file if c is not None else None,
            "digest": c.policy.digest if c is not None else None,
            "generation": self.generation,
            "rules": len(c.policy.rules) if c is not None else 0,
            "limits": len(c.policy.limits) if c is not None else 0,
            "denied": self.denied,
            "denial_events_suppressed": self.denial_events.over,
            "principals": len(self.meter.usage),
            "error": self.error,
        }

    def accounting(self, n: int = 10) -> dict[str, Any]:
        """What ``edge accounting`` shows: top principals, recent denials, quota use."""
        return {
            "device": self.device,
            "policy": self.status(),
            "top": {by: self.meter.top(by, n) for by in ("messages", "bytes", "gas")},
            "denials": list(self.recent)[-n:],
            "quotas": self.quotas(),
        }
