"""Effects a worker reports, checked again in the runtime, then handed to the host in order.

A worker's reply lists what the component did (``publish``, ``kv_put``, log lines) and what it
was refused. The worker already applied the component's grants, but the worker runs hostile
code, so :meth:`Effects.check` applies the same rules (:mod:`edge.wasm.grants`) again: subjects
granted by ``run.publish``, payload and KV limits, at most ``publish_per_call`` publishes per
export call, counters consistent with what was sent, write bits inside the write set. An intact
worker never reports anything these rules refuse, so a refusal means the worker is compromised:
none of the reply's effects run and the worker is killed (reason ``protocol``).

Checked effects go to the :class:`~edge.wasm.host.HostCallbacks` fairly: one lane per component
(publishes in order, KV puts coalesced per key, a byte bound), drained round robin, publishes
and KV writes by separate tasks (:class:`Effects`). Before they are queued, a component's
publishes pass its hop limit (a message published while handling messages that had already
passed ``max_hops`` handlers is refused: a loop between components) and its publish rate
(:class:`~edge.wasm.quotas.TokenBucket`); what they refuse is dropped, counted and reported
through ``on_limit`` (at most once per ``LIMIT_EVENT_INTERVAL_S`` per component and limit).
With a policy point (:class:`~edge.wasm.host.MessagePolicy`), every call's gas is metered and the
publishes and KV puts that passed those limits pass the policy too (``policy_denied``).

[replay hook] A host that is a :class:`~edge.wasm.record.CallOutputsListener` is told, for every
call, the component's own publishes and KV puts before any of these steps, and what each step
did with them (:class:`~edge.wasm.record.CallOutputs`): a replay compares the former, a report
shows the latter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from edge.wasm.component import Component
from edge.wasm.grants import kv_put_allowed
from edge.wasm.host import HostCallbacks, MessagePolicy
from edge.wasm.origin import DEFAULT_MAX_HOPS, MAX_HOPS
from edge.wasm.protocol import CallResult
from edge.wasm.record import (
    KV_LANE_DROPPED,
    KV_POLICY_DENIED,
    KV_QUEUED,
    CallOutputs,
    CallOutputsListener,
)

log = logging.getLogger("edge.wasm.pool")
component_log = logging.getLogger("edge.wasm.component")

#: Bytes of effects one component may have waiting for the host; more are dropped and counted.
DEFAULT_LANE_BYTES = 4 * 2**20
#: Effects of one component handed to the host before the next component's turn.
DEFAULT_BURST = 64
#: Seconds between two "publish denied" warnings of one component.
DENIED_LOG_INTERVAL_S = 5.0
#: Seconds the KV writer waits after a failed write before it tries again (the write is kept).
KV_RETRY_S = 0.5
#: Seconds between two ``on_limit`` reports (and warnings) of one component for one limit.
LIMIT_EVENT_INTERVAL_S = 5.0
#: Limits ``on_limit`` reports: the counter each one increments.
LIMIT_COUNTERS = {"publish_rate": "rate_limited", "hops": "loop_dropped",
                  "kv_quota": "kv_refused"}
_LOG_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}


def check(comp: Component, res: CallResult, *, calls: int, messages: int,
          shared: bool = False) -> str | None:
    """Why ``res`` cannot come from an intact worker, or None if it can.

    ``calls`` is the number of export calls the request could make that may publish (1 for a
    tick or ``edge_init``, one per message for a batch), ``messages`` the messages sent,
    ``shared`` whether it answers a shared-mode tick (the only reply that may set write bits).
    """
    m = comp.manifest
    limit = m.limits.publish_per_call * max(calls, 1)
    if len(res.publishes) > limit:
        return f"{len(res.publishes)} publishes, at most {limit} allowed"
    for subject, data in res.publishes:
        if not comp.grant.allows_message(subject, data):
            return f"a publish to '{subject[:80]}' ({len(data)} bytes) the grants refuse"
    for key, value in res.kv_puts:
        if not kv_put_allowed(key, value):
            return f"a KV put of key '{key[:80]}' ({len(value)} bytes) outside the limits"
    if res.kv_puts and not comp.kv_usage.check_all(comp.kv, res.kv_puts):
        q = comp.kv_usage
        return (f"KV puts past the quota ({q.keys} keys, {q.bytes} bytes stored; at most "
                f"{q.max_keys} keys, {q.max_bytes} bytes)")
    if res.messages > messages or res.dropped > messages:
        return f"{res.messages} messages handled, {res.dropped} dropped of {messages} sent"
    allowed = (1 << len(m.writable)) - 1 if shared else 0
    if res.written & ~allowed:
        return f"write bits {res.written:#x} outside the write set ({allowed:#x})"
    return None


def _kept(items: list[tuple[str, bytes]], allowed: list[tuple[str, bytes]]) -> list[str]:
    """Per item of ``items``, ``KV_QUEUED`` if the policy let it through (``allowed`` is an
    order-keeping subset of ``items``), else ``KV_POLICY_DENIED``."""
    fate = []
    j = 0
    for item in items:
        if j < len(allowed) and allowed[j] == item:
            fate.append(KV_QUEUED)
            j += 1
        else:
            fate.append(KV_POLICY_DENIED)
    return fate


class _Lane:
    """One component's pending effects: publishes in order, KV puts coalesced per key; each
    with its hop count (handlers the message passed through)."""

    __slots__ = ("counters", "kv", "publishes", "queued_bytes")

    def __init__(self) -> None:
        self.publishes: deque[tuple[str, bytes, int]] = deque()
        self.kv: dict[str, tuple[bytes, int]] = {}  # the newest value of each key to write
        self.queued_bytes = 0
        self.counters: dict[str, int] | None = None  # the component's (its latest load's)

    def empty(self) -> bool:
        return not self.publishes and not self.kv


class Effects:
    """Accounts for replies and hands their effects to the host, fairly between components.

    Each component has its own lane: its publishes keep their order, its KV puts are coalesced
    per key (the newest value wins, so 100,000 puts to one key are one write when the store is
    slower than the component) and its queued bytes are bounded by ``lane_bytes``: what does
    not fit is dropped and counted (``effects_dropped``), never another component's turn. Two
    tasks drain the lanes round robin, at most ``burst`` items of one component per turn:
    publishes (core NATS, fast) and KV writes (acknowledged, slower) apart, so a component's
    KV flood never holds back anyone's publishes.

    ``max_hops`` bounds loops: the publishes of a call handling messages that passed ``h``
    handlers carry ``h + 1`` hops (those of a tick or ``edge_init`` carry 1), and a publish
    past ``max_hops`` is refused (``loop_dropped``). Each component's publishes then pass its
    token bucket (``rate_limited``).
    """

    def __init__(self, host: HostCallbacks, *, lane_bytes: int = DEFAULT_LANE_BYTES,
                 burst: int = DEFAULT_BURST, max_hops: int = DEFAULT_MAX_HOPS,
                 policy: MessagePolicy | None = None) -> None:
        if not 1 <= max_hops <= MAX_HOPS:
            raise ValueError(f"max_hops must be within 1..{MAX_HOPS} (got {max_hops})")
        self._host = host
        self.lane_bytes = lane_bytes
        self.burst = burst
        self.max_hops = max_hops
        self.policy = policy
        self._lanes: dict[str, _Lane] = {}
        self._pub_ready: deque[str] = deque()  # components with publishes waiting, in turn order
        self._kv_ready: deque[str] = deque()
        self._pub_wake = asyncio.Event()
        self._kv_wake = asyncio.Event()
        self._busy = 0  # items being handed to the host right now
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped = 0
        self.kv_failures = 0  # KV writes the host failed (each kept and retried)
        self._kv_failing = False
        #: [replay hook] told every call's own outputs (edge.wasm.record); None = nobody asks
        self.outputs: CallOutputsListener | None = (
            host if isinstance(host, CallOutputsListener) else None)

    def _lane(self, name: str) -> _Lane:
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = _Lane()
        return lane

    def apply(self, comp: Component, res: CallResult, hops: int = 0, *,
              export: str = "") -> None:
        """Count a checked reply, log its lines and queue its publishes and KV puts.

        ``hops`` is the largest hop count of the messages the call handled (0 for a tick or
        ``edge_init``): what the call published carries one more. ``export`` names the call
        (``edge_init``, ``edge_tick``, ``edge_on_message``) for the outputs listener.
        """
        c = comp.counters
        comp.gas_last = res.gas_used
        policy = self.policy
        if policy is not None:
            policy.on_call(comp.name, res.gas_used)
        c["messages"] += res.messages
        c["dropped"] += res.dropped
        c["errors"] += res.errors
        c["logs_dropped"] += res.logs_dropped
        c["published"] += len(res.publishes)
        if res.denied or res.denied_extra:
            c["denied"] += len(res.denied) + res.denied_extra
            now = time.monotonic()
            if now - comp.denied_logged_at >= DENIED_LOG_INTERVAL_S:
                comp.denied_logged_at = now
                named = sorted({s for s in res.denied if s})
                log.warning("component '%s' was denied publishing to %s (not granted by its "
                            "manifest; %d denied so far)", comp.name, ", ".join(named),
                            c["denied"])
        if res.denied_models or res.denied_models_extra:
            c["denied_infer"] += len(res.denied_models) + res.denied_models_extra
            now = time.monotonic()
            if now - comp.denied_logged_at >= DENIED_LOG_INTERVAL_S:
                comp.denied_logged_at = now
                named = sorted({repr(s) for s in res.denied_models if s})
                log.warning("component '%s' was denied running model %s (not granted by its "
                            "manifest's run.models; %d denied so far)", comp.name,
                            ", ".join(named), c["denied_infer"])
        for level, text in res.logs:
            component_log.log(_LOG_LEVELS.get(level, logging.INFO), "[%s] %s", comp.name, text)
        if res.kv_refused:
            self.limited(comp, "kv_quota", res.kv_refused)
        publishes = res.publishes
        listener = self.outputs
        out = (CallOutputs(export, res.publishes, res.kv_puts) if listener is not None
               else None)
        hops += 1
        if publishes and hops > self.max_hops:
            self.limited(comp, "hops", len(publishes))
            if out is not None:
                out.hop_limited = len(publishes)
            publishes = []
        if publishes:
            k = comp.publish_bucket.take(len(publishes), time.monotonic())
            if k < len(publishes):
                self.limited(comp, "publish_rate", len(publishes) - k)
                if out is not None:
                    out.rate_limited = len(publishes) - k
                publishes = publishes[:k]
        kv_puts = res.kv_puts
        if policy is not None and (publishes or kv_puts):  # the policy point: docs/policy.md
            n_pub = len(publishes)
            publishes = policy.publishes(comp.name, publishes) if publishes else publishes
            allowed = policy.kv_puts(comp.name, kv_puts) if kv_puts else kv_puts
            c["policy_denied"] += n_pub - len(publishes) + len(kv_puts) - len(allowed)
            if out is not None:
                out.policy_denied = n_pub - len(publishes)
                if len(allowed) < len(kv_puts):
                    out.kv_fate = _kept(kv_puts, allowed)
            kv_puts = allowed
        if out is not None and not out.kv_fate:
            out.kv_fate = [KV_QUEUED] * len(res.kv_puts)
        if not publishes and not kv_puts:
            if listener is not None and out is not None:
                listener.on_call_outputs(comp.name, out)
            return
        lane = self._lane(comp.name)
        lane.counters = c
        had_pub, had_kv = bool(lane.publishes), bool(lane.kv)
        dropped = 0
        usage = comp.kv_usage
        fate = out.kv_fate if out is not None else None
        at = 0  # the index in fate of the next put that passed the policy
        for key, value in kv_puts:
            if fate is not None:
                while fate[at] != KV_QUEUED:
                    at += 1
            usage.put(key, value, comp.kv.get(key))  # within the quota: check() made sure
            comp.kv[key] = value  # the component's view is current at once
            queued = lane.kv.get(key)
            grow = len(value) - (len(queued[0]) if queued is not None else -len(key))
            if queued is None and lane.queued_bytes + grow > self.lane_bytes:
                dropped += 1
                if fate is not None:
                    fate[at] = KV_LANE_DROPPED
                at += 1
                continue
            if queued is not None and out is not None:  # the queued put is never written
                out.coalesced.append(at)
            at += 1
            lane.kv[key] = (value, hops)
            lane.queued_bytes += grow
        pub_dropped = 0
        for subject, data in publishes:
            size = len(subject) + len(data)
            if lane.queued_bytes + size > self.lane_bytes:
                dropped += 1
                pub_dropped += 1
                continue
            lane.publishes.append((subject, data, hops))
            lane.queued_bytes += size
        if listener is not None and out is not None:  # before the drain tasks see them
            out.lane_dropped = pub_dropped
            listener.on_call_outputs(comp.name, out)
        if dropped:
            c["effects_dropped"] += dropped
            self.dropped += dropped
            log.warning("component '%s': %d effects dropped, its queue holds %d bytes (bound %d)",
                        comp.name, dropped, lane.queued_bytes, self.lane_bytes)
        if lane.publishes and not had_pub:
            self._pub_ready.append(comp.name)
            self._pub_wake.set()
        if lane.kv and not had_kv:
            self._kv_ready.append(comp.name)
            self._kv_wake.set()
        if not lane.empty():
            self._idle.clear()

    def limited(self, comp: Component, limit: str, n: int) -> None:
        """Count ``n`` effects refused by ``limit`` (a key of :data:`LIMIT_COUNTERS`) and
        report them through ``on_limit``, at most once per ``LIMIT_EVENT_INTERVAL_S`` per
        component and limit (a report carries every drop since the last one)."""
        comp.counters[LIMIT_COUNTERS[limit]] += n
        unreported = comp.limit_unreported.get(limit, 0) + n
        now = time.monotonic()
        last = comp.limit_reported_at.get(limit)
        if last is not None and now - last < LIMIT_EVENT_INTERVAL_S:
            comp.limit_unreported[limit] = unreported
            return
        comp.limit_reported_at[limit] = now
        comp.limit_unreported[limit] = 0
        log.warning("component '%s': %d %s refused by its %s limit (%d so far)", comp.name,
                    unreported, "KV puts" if limit == "kv_quota" else "publishes",
                    limit.replace("_", " "), comp.counters[LIMIT_COUNTERS[limit]])
        try:
            self._host.on_limit(comp.name, limit, unreported)
        except Exception:
            log.exception("on_limit callback failed for component '%s'", comp.name)

    def _check_idle(self) -> None:
        if self._busy == 0 and all(lane.empty() for lane in self._lanes.values()):
            self._idle.set()

    async def run(self) -> None:
        """Hand queued effects to the host until cancelled (publishes and KV writes apart)."""
        # a task group, not gather: cancelled, it returns only when both have ended, so a batch
        # being put back by a cancelled writer is in its lane before the caller counts what is left
        async with asyncio.TaskGroup() as group:
            group.create_task(self._drain_publishes(), name="sandbox-effects-publish")
            group.create_task(self._drain_kv(), name="sandbox-effects-kv")

    async def _drain_publishes(self) -> None:
        while True:
            if not self._pub_ready:
                self._pub_wake.clear()
                await self._pub_wake.wait()
                continue
            name = self._pub_ready.popleft()
            lane = self._lanes.get(name)
            if lane is None:
                continue
            batch = [lane.publishes.popleft() for _ in range(min(self.burst, len(lane.publishes)))]
            lane.queued_bytes -= sum(len(s) + len(d) for s, d, _ in batch)
            if lane.publishes:
                self._pub_ready.append(name)  # back of the line: everyone else goes first
            elif lane.empty() and self._lanes.get(name) is lane:
                del self._lanes[name]  # nothing left in either queue: no lane kept per load
            self._busy += 1
            sent = 0
            try:
                for subject, data, hops in batch:
                    await self._host.publish(name, subject, data, hops)
                    sent += 1
            except Exception:
                log.exception("host callback failed for component '%s'", name)
            finally:
                # the publish that failed (or was cancelled by a stop: it may have gone out) and
                # the rest of the turn are dropped and counted, never lost silently
                self._count_dropped(lane, len(batch) - sent)
                self._busy -= 1
                self._check_idle()

    async def _drain_kv(self) -> None:
        while True:
            if not self._kv_ready:
                self._kv_wake.clear()
                await self._kv_wake.wait()
                continue
            name = self._kv_ready.popleft()
            lane = self._lanes.get(name)
            if lane is None:
                continue
            batch = []
            for _ in range(min(self.burst, len(lane.kv))):
                key = next(iter(lane.kv))
                value, hops = lane.kv.pop(key)
                lane.queued_bytes -= len(key) + len(value)
                batch.append((key, value, hops))
            if lane.kv:
                self._kv_ready.append(name)
            elif lane.empty() and self._lanes.get(name) is lane:
                del self._lanes[name]
            self._busy += 1
            written = 0
            try:
                for key, value, hops in batch:
                    await self._host.kv_put(name, key, value, hops)
                    written += 1
            except BaseException as err:
                # the store did not take it (JetStream away or slow), or this task was cancelled
                # (a stop): the failed write and the rest of the batch go back to the lane, where
                # a newer value queued meanwhile wins over them
                self._requeue_kv(name, lane, batch[written:])
                if not isinstance(err, Exception):
                    raise
                self.kv_failures += 1
                if lane.counters is not None:
                    lane.counters["kv_failures"] += 1
                log.log(logging.DEBUG if self._kv_failing else logging.WARNING,
                        "KV write of component '%s' failed (%s: %s); %d kept, retried every %g s",
                        name, type(err).__name__, err, len(batch) - written, KV_RETRY_S)
                self._kv_failing = True
            finally:
                self._busy -= 1
                self._check_idle()
            if written < len(batch):
                await asyncio.sleep(KV_RETRY_S)
            elif self._kv_failing:
                self._kv_failing = False
                log.warning("KV writes succeed again (%d failed so far, none lost)", self.kv_failures)

    def _count_dropped(self, lane: _Lane, n: int) -> None:
        if n:
            self.dropped += n
            if lane.counters is not None:
                lane.counters["effects_dropped"] += n

    def abandon(self) -> dict[str, int]:
        """Drop every effect still queued (the pool stops with them not handed to the host),
        counted as ``effects_dropped``; returns how many per component."""
        left: dict[str, int] = {}
        for name, lane in self._lanes.items():
            n = len(lane.publishes) + len(lane.kv)
            if n:
                left[name] = n
                self._count_dropped(lane, n)
        self._lanes.clear()
        self._pub_ready.clear()
        self._kv_ready.clear()
        self._check_idle()
        return left

    def _requeue_kv(self, name: str, taken_from: _Lane, items: list[tuple[str, bytes, int]]) -> None:
        """Put KV writes that did not happen back at the front of ``name``'s lane (a key
        queued again meanwhile keeps its newer value)."""
        lane = self._lane(name)  # the lane they came from, or its successor if it was emptied
        if lane.counters is None:
            lane.counters = taken_from.counters
        had_kv = bool(lane.kv)
        back = {key: (value, hops) for key, value, hops in items if key not in lane.kv}
        if not back:
            return
        lane.queued_bytes += sum(len(key) + len(value) for key, (value, _) in back.items())
        lane.kv = {**back, **lane.kv}
        if not had_kv:
            self._kv_ready.append(name)
            self._kv_wake.set()
        self._idle.clear()

    async def join(self) -> None:
        """Wait until every queued effect is handed to the host."""
        await self._idle.wait()
