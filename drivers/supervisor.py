"""Starts drivers, restarts a failing one with exponential backoff, keeps the others running.

Key components
- :class:`DriverSupervisor`: one task per driver. A driver that fails to open, or fails while
  running, is stopped, waits ``backoff`` seconds (doubling up to ``backoff_max_s``, reset after it
  has run ``stable_after_s``) and is started again. Other drivers are never touched.
- :class:`DriverStatus`: what ``edge status`` shows per driver (health + the last failure's device
  and cause + when the next retry is due).

Example
    sup = DriverSupervisor(ctx, drivers)
    await sup.start()
    for s in sup.status(): print(s.to_dict())
    await sup.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from drivers.base import Driver, DriverContext, DriverHealth, DriverState
from edge.backoff import Backoff
from edge.errors import DriverError

log = logging.getLogger("edge.drivers.supervisor")

DEFAULT_BACKOFF_INITIAL_S = 0.5  # seconds before the first retry
DEFAULT_BACKOFF_MAX_S = 30.0  # seconds, cap of the doubling backoff
DEFAULT_STABLE_AFTER_S = 10.0  # seconds of running after which the backoff resets
STOP_TIMEOUT_S = 5.0  # seconds


@dataclass(frozen=True, slots=True)
class DriverStatus:
    name: str
    kind: str
    entity: str
    where: str
    health: DriverHealth
    failure_device: str | None
    failure_cause: str | None
    retry_in_s: float | None
    failed_ago_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "entity": self.entity,
            "where": self.where,
            **self.health.to_dict(),
            "failure_device": self.failure_device,
            "failure_cause": self.failure_cause,
            "retry_in_s": None if self.retry_in_s is None else round(self.retry_in_s, 2),
            "failed_ago_s": None if self.failed_ago_s is None else round(self.failed_ago_s, 1),
        }


@dataclass
class _Slot:
    driver: Driver
    task: asyncio.Task[None] | None = None
    last_failure: DriverError | None = None
    retry_at: float | None = None
    failed_at: float | None = None  # monotonic time of the last failure


class DriverSupervisor:
    """Runs a set of drivers against one context, each under its own restart loop."""

    def __init__(
        self,
        ctx: DriverContext,
        drivers: Iterable[Driver] = (),
        *,
        backoff_initial_s: float = DEFAULT_BACKOFF_INITIAL_S,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
        stable_after_s: float = DEFAULT_STABLE_AFTER_S,
    ) -> None:
        self.ctx = ctx
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self._slots: dict[str, _Slot] = {}
        self._running = False
        for d in drivers:
            self.add(d)

    def add(self, driver: Driver) -> None:
        """Add a driver; started at once if the supervisor is running."""
        if driver.name in self._slots:
            raise ValueError(f"a driver named {driver.name!r} is already supervised")
        slot = _Slot(driver)
        self._slots[driver.name] = slot
        if self._running:
            slot.task = asyncio.get_running_loop().create_task(
                self._supervise(slot), name=f"supervise:{driver.name}"
            )

    def driver(self, name: str) -> Driver:
        return self._slots[name].driver

    async def start(self) -> None:
        """Start every driver's supervision loop. Returns after each driver's first start attempt."""
        if self._running:
            raise RuntimeError("supervisor already started")
        self._running = True
        firsts: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for slot in self._slots.values():
            first: asyncio.Future[None] = loop.create_future()
            firsts.append(first)
            slot.task = loop.create_task(self._supervise(slot, first), name=f"supervise:{slot.driver.name}")
        if firsts:
            await asyncio.wait(firsts)

    async def stop(self) -> None:
        """Stop supervision and every driver (in reverse order); collects, logs and drops errors."""
        self._running = False
        tasks = [s.task for s in self._slots.values() if s.task is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        for slot in reversed(list(self._slots.values())):
            slot.task = None
            try:
                await asyncio.wait_for(slot.driver.stop(), STOP_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - one failing stop must not hide the others
                log.warning("stopping driver %s failed: %s", slot.driver.name, exc)
            slot.driver.set_state(DriverState.STOPPED)

    def status(self) -> list[DriverStatus]:
        return [self._status(slot, time.monotonic()) for slot in self._slots.values()]

    def status_of(self, name: str) -> DriverStatus | None:
        """One driver's status (None if no driver of that name is supervised)."""
        slot = self._slots.get(name)
        return None if slot is None else self._status(slot, time.monotonic())

    @staticmethod
    def _status(slot: _Slot, now: float) -> DriverStatus:
        d = slot.driver
        f = slot.last_failure
        return DriverStatus(
            name=d.name,
            kind=d.kind,
            entity=d.entity,
            where=d.where,
            health=d.health(),
            failure_device=None if f is None else f.device,
            failure_cause=None if f is None else f.cause or f.message,
            retry_in_s=None if slot.retry_at is None else max(0.0, slot.retry_at - now),
            failed_ago_s=None if slot.failed_at is None else now - slot.failed_at,
        )

    async def _supervise(self, slot: _Slot, first: asyncio.Future[None] | None = None) -> None:
        d = slot.driver
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s, stable_after_s=self.stable_after_s)
        attempt = 0
        try:
            while True:
                started_at = time.monotonic()
                try:
                    if attempt > 0:
                        d.restarts += 1
                    attempt += 1
                    await d.start(self.ctx)
                    if first is not None and not first.done():
                        first.set_result(None)
                    err = await d.wait_failed()
                except DriverError as exc:
                    err = exc
                if first is not None and not first.done():
                    first.set_result(None)
                slot.last_failure = err
                slot.failed_at = time.monotonic()
                delay = backoff.next(ran_s=time.monotonic() - started_at)
                log.warning(
                    "driver %s failed (device %s, cause %s); retrying in %.1f s",
                    d.name, err.device, err.cause, delay,
                )
                await d.stop()
                d.set_state(DriverState.BACKOFF)
                slot.retry_at = time.monotonic() + delay
                await asyncio.sleep(delay)
                slot.retry_at = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a driver must not kill the supervisor
            log.exception("supervision of driver %s ended unexpectedly", d.name)
            slot.last_failure = DriverError(
                f"supervision of {d.name} ended: {exc}", device=d.where, cause=repr(exc)
            )
            with contextlib.suppress(Exception):
                await d.stop()
        finally:
            if first is not None and not first.done():
                first.set_result(None)
