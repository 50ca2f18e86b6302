"""Scheduled calls of a component's optional ``edge_health`` export (docs/abi.md).

Key components
- :func:`call_health`: one ``edge_health`` call in the component's sandbox worker, under the
  manifest's ``[health] gas`` (set in the worker before the call), read into a
  :class:`HealthResult`. A trap or running out of gas inside it is a not-OK result with that
  reason (the instance is kept); the reason of a nonzero answer is the last line the call
  logged. ``edge_health`` may only read and log: a publish or KV write in it is dropped and
  makes the result not OK.
- :class:`HealthWatch`: calls it every ``[health] interval_s`` while the component is loaded,
  keeps the last result and counts, and hands every result to a callback (the sandbox layer:
  status and events; OTA probation reads :attr:`HealthWatch.last`).

Health calls are not recorded by :mod:`edge.wasm.record` and never run in a replay: they have
no effects a replay compares (docs/replay.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.errors import SandboxError
from edge.wasm.manifest import Health
from edge.wasm.pool import SandboxPool
from edge.wasm.procs import WorkerGone
from edge.wasm.protocol import CallResult

log = logging.getLogger("edge.wasm.health")

#: The export the runtime calls.
HEALTH_EXPORT = "edge_health"


@dataclass(frozen=True)
class HealthResult:
    """One ``edge_health`` answer: ``code`` 0 is OK; ``fault`` names a trap or out_of_gas."""

    ok: bool
    code: int
    reason: str = ""
    fault: str = ""  # "" | "trap" | "out_of_gas" | "effects"
    at: float = 0.0  # wall clock seconds

    def describe(self, component: str) -> str:
        """The sentence a rollback or an event gives: ``health: <component> reported ...``."""
        what = self.fault if self.fault else str(self.code)
        return f"health: {component} reported {what}" + (f" [{self.reason}]" if self.reason else "")

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "code": self.code, "reason": self.reason, "fault": self.fault,
                "at": self.at}


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


async def call_health(pool: SandboxPool, name: str, gas: int) -> HealthResult | None:
    """Call ``edge_health`` of component ``name`` once; None if it is not running (or has no
    such export, or its worker went away during the call)."""
    comp = pool.component(name)
    worker = comp.worker
    if comp.state != "running" or worker is None or HEALTH_EXPORT not in comp.info.exports:
        return None
    try:
        status, payload = await worker.send(("health", comp.wire, int(gas)), name, HEALTH_EXPORT)
    except WorkerGone:
        return None
    if status == "gone":
        return None
    if status not in ("ok", "fault") or not isinstance(payload, CallResult):
        worker.violate(f"a '{status}' reply to {HEALTH_EXPORT}")
        return None
    now = time.time()
    if payload.fault is not None:
        reason, _export, text = payload.fault
        return HealthResult(False, -1, text, fault=reason, at=now)
    if payload.publishes or payload.kv_puts:
        return HealthResult(False, -1, "edge_health published or wrote KV; it may only read "
                            "and log", fault="effects", at=now)
    code = _signed32(payload.written)
    reason = payload.logs[-1][1] if payload.logs and code else ""
    return HealthResult(code == 0, code, reason, at=now)


class HealthWatch:
    """Calls a component's ``edge_health`` every ``health.every_s`` seconds.

    The watch owns its task: :meth:`start` begins it, :meth:`stop` ends it. A call that fails
    for a reason outside the component (it is restarting, the pool stops) is skipped.
    """

    def __init__(self, pool: SandboxPool, name: str, health: Health,
                 on_result: Callable[[str, HealthResult], None] | None = None) -> None:
        self.pool = pool
        self.name = name
        self.health = health
        self.on_result = on_result
        self.last: HealthResult | None = None
        self.calls = 0
        self.not_ok = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"health-{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self) -> HealthResult | None:
        """One call now; the result is kept and handed to the callback like scheduled ones."""
        res = await call_health(self.pool, self.name, self.health.gas_limit)
        if res is None:
            return None
        self.calls += 1
        if not res.ok:
            self.not_ok += 1
        self.last = res
        if self.on_result is not None:
            try:
                self.on_result(self.name, res)
            except Exception:
                log.exception("health callback failed for component '%s'", self.name)
        return res

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.health.every_s)
            try:
                await self.check()
            except SandboxError as err:
                log.debug("health call of component '%s' skipped: %s", self.name, err.message)

    def to_dict(self) -> dict[str, Any]:
        """``edge status``: the last result (None: not called yet) and the counts."""
        return {"last": self.last.to_dict() if self.last is not None else None,
                "calls": self.calls, "not_ok": self.not_ok, "interval_s": self.health.every_s}
