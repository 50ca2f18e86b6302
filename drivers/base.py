"""The contract between hardware drivers and the runtime.

Key components
- :class:`DriverContext`: what the runtime gives a driver (component updates, NATS publish/subscribe,
  serving command verbs). The runtime implements it over its ECS world, NATS and the device's
  command router; :mod:`drivers.testing` has an in-memory one.
- :class:`Driver`: the base class of every driver. It owns the driver's tasks, counts samples and
  errors, and reports failures to whoever supervises it (:mod:`drivers.supervisor`).
- Subject helpers: ``edge.<device>.tele|evt|cmd|ack.<entity>.<name>``.

Architecture
    A driver is a *device* (what the chip or peripheral is: registers, protocol, units) that talks to
    a *backend* (how bytes move: smbus2, a pty, gpiozero's pin factory, an emulated chip). Devices take
    their backend as a keyword argument; ``build_driver`` picks the backend from config.

Example
    driver = build_driver("baro", {"kind": "bme280", "bus": 1, "entity": "drone1", "backend": "emulated"})
    await driver.start(ctx)
    ...
    print(driver.health())
    await driver.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from edge.errors import DriverError
from edge.nats import subjects

if TYPE_CHECKING:
    from drivers.camera.frames import LatestFrame

Value = float | int | bool | str
Handler = Callable[[str, bytes], Awaitable[None]]
Unsubscribe = Callable[[], Awaitable[None]]
CommandHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

log = logging.getLogger("edge.drivers")

RATE_WINDOW_S = 2.0  # seconds over which health().rate_hz is measured
STOP_TIMEOUT_S = 5.0  # seconds a driver's tasks get to finish after cancel
DEFAULT_STALE_AFTER_S = 2.0  # seconds after which a driver's last reading of a component is stale


class DriverContext(Protocol):
    """What the runtime provides to a driver.

    ``device`` is the edge device id used in subjects ``edge.<device>.…``. ``update`` merges fields
    into an entity's component; it is cheap and must be called from the event loop. ``subscribe``
    returns a coroutine function that unsubscribes.

    ``serve(entity, verb, handler)`` makes the driver the one that answers command ``verb`` for
    ``entity`` (``edge.<device>.cmd.<entity>.<verb>``). The context decodes the command (a JSON
    object, else refused without calling the handler), calls ``handler(args)`` and answers the
    caller exactly once with ``{"ok": true, **returned fields}`` (a returned ``"ok": false`` stays
    false), or ``{"ok": false, "error": "<the exception's message>"}`` if the handler raised; the
    answer is also recorded on ``edge.<device>.ack.<entity>.<verb>``. The runtime's context adds
    the command id and a ``reason`` (docs/subjects.md). Drivers never subscribe to command
    subjects themselves: while a driver is stopped or in backoff, the runtime answers its commands
    with that state instead. Returns the coroutine function that stops serving.
    """

    device: str

    def update(self, entity: str, component: str, values: Mapping[str, Value]) -> None: ...

    # Optional: ``update_from(driver name, entity, component, values) -> component names written``.
    # A context that has it picks one source per component (edge/hardware/sources.py); drivers
    # call it instead of ``update`` when it is there and publish telemetry under each returned name.

    async def publish(self, subject: str, payload: bytes) -> None: ...

    async def subscribe(self, subject: str, handler: Handler) -> Unsubscribe: ...

    async def serve(self, entity: str, verb: str, handler: CommandHandler) -> Unsubscribe: ...


def encode_json(values: Mapping[str, Any]) -> bytes:
    return json.dumps(values, separators=(",", ":")).encode()


class DriverState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    BACKOFF = "backoff"  # set by the supervisor while waiting to retry


@dataclass(frozen=True, slots=True)
class DriverHealth:
    """A snapshot for ``edge status``. ``rate_hz`` is samples per second over the last window."""

    state: str
    rate_hz: float
    samples: int
    errors: int
    last_error: str | None
    restarts: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "rate_hz": round(self.rate_hz, 2),
            "samples": self.samples,
            "errors": self.errors,
            "last_error": self.last_error,
            "restarts": self.restarts,
        }


class RateMeter:
    """Counts events and reports their rate over a sliding window of about ``window_s``."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self._window = window_s
        self._count = 0
        self._t_ref = time.monotonic()
        self._n_ref = 0
        self._rate = 0.0

    def tick(self) -> None:
        self._count += 1

    def rate(self) -> float:
        now = time.monotonic()
        dt = now - self._t_ref
        if dt >= self._window:
            self._rate = (self._count - self._n_ref) / dt
            self._t_ref, self._n_ref = now, self._count
            return self._rate
        if dt > 0.2 and (self._rate == 0.0 or dt > self._window / 2):
            return (self._count - self._n_ref) / dt
        return self._rate


class Driver(ABC):
    """Base class of every driver.

    A subclass MUST implement:
      - ``where`` (property): where the hardware is, e.g. ``"i2c-1:0x76"``, used in errors and status.
      - ``_open()``: acquire and check the hardware. Raise (any exception) if it is missing; the
        base class turns it into a :class:`DriverError` naming ``where`` and the cause.
      - ``_run()``: the main loop. Returning ends the driver normally; raising fails it.
    A subclass MAY override ``_close()`` (release hardware; must not raise on a half-open device) and
    override ``commands()`` to accept commands, call ``_spawn()`` for extra tasks, ``_emit()`` to
    update a component and publish telemetry, ``_event()`` for events, ``_sample()`` / ``_error()``
    to keep health counters.
    """

    kind: ClassVar[str] = "driver"
    #: True for a driver that moves a vehicle (a flight controller): its entity is guarded by the
    #: safety envelope (edge.safety) whether or not the config names it.
    vehicle: ClassVar[bool] = False

    def __init__(self, name: str, entity: str, *, publish_telemetry: bool = True) -> None:
        self.name = name
        self.entity = entity
        self.publish_telemetry = publish_telemetry
        self.primary: frozenset[str] = frozenset()  # components this driver is the first source of
        self.stale_after_s = DEFAULT_STALE_AFTER_S  # its readings are stale after this long
        self.restarts = 0
        self._state = DriverState.STOPPED
        self._ctx: DriverContext | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubs: list[Unsubscribe] = []
        self._failure: asyncio.Future[DriverError] | None = None
        self._samples = 0
        self._errors = 0
        self._last_error: str | None = None
        self._meter = RateMeter()
        self.log = logging.getLogger(f"edge.drivers.{self.kind}")

    # ----- what subclasses provide -------------------------------------------------------------
    @property
    @abstractmethod
    def where(self) -> str:
        """Where the hardware is (bus and address, port, pin)."""

    @abstractmethod
    async def _open(self) -> None:
        """Acquire the hardware; raise if it is missing or is not the expected chip."""

    @abstractmethod
    async def _run(self) -> None:
        """The main loop."""

    async def _close(self) -> None:
        """Release the hardware. Called after the tasks are cancelled, also after a failed open."""

    def commands(self) -> Mapping[str, CommandHandler]:
        """Verbs this driver accepts on ``edge.<device>.cmd.<entity>.<verb>``; served (through
        ``DriverContext.serve``) by ``start()`` once the hardware is open, before ``start()``
        returns. Must not depend on the hardware: the runtime asks before the driver starts, so
        that the verbs of a driver that is down are answered with its state."""
        return {}

    # ----- lifecycle -----------------------------------------------------------------------------
    @property
    def ctx(self) -> DriverContext:
        if self._ctx is None:
            raise RuntimeError(f"driver {self.name!r} is not started; call start(ctx) first")
        return self._ctx

    @property
    def state(self) -> DriverState:
        return self._state

    def set_state(self, state: DriverState) -> None:
        """Used by the supervisor to show BACKOFF between retries."""
        self._state = state

    async def start(self, ctx: DriverContext) -> None:
        """Open the hardware and start the driver's tasks. Raises :class:`DriverError` on failure."""
        if self._tasks:
            raise RuntimeError(f"driver {self.name!r} is already running; stop() it first")
        self._ctx = ctx
        self._state = DriverState.STARTING
        self._failure = asyncio.get_running_loop().create_future()
        try:
            await self._open()
        except Exception as exc:
            err = self._as_error(exc, "could not be opened")
            self._error(exc)
            self._state = DriverState.FAILED
            await self._cancel_tasks()
            with contextlib.suppress(Exception):
                await self._close()
            raise err from exc
        handlers = self.commands()
        if handlers:
            await self._serve_commands(handlers)
        self._state = DriverState.RUNNING
        self._spawn(self._run(), "run")
        self.log.info("driver %s (%s) started on %s", self.name, self.kind, self.where)

    async def stop(self) -> None:
        """Cancel the driver's tasks, drop subscriptions and release the hardware."""
        await self._cancel_tasks()
        for unsub in self._unsubs:
            with contextlib.suppress(Exception):
                await unsub()
        self._unsubs.clear()
        try:
            await self._close()
        except Exception as exc:  # noqa: BLE001 - a failing close is logged, never raised
            self.log.warning("driver %s: close failed: %s", self.name, exc)
        if self._state is not DriverState.FAILED:
            self._state = DriverState.STOPPED

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        self._tasks.clear()

    async def wait_failed(self) -> DriverError:
        """Wait until the running driver fails; returns the error (for the supervisor)."""
        if self._failure is None:
            raise RuntimeError(f"driver {self.name!r} was never started")
        return await asyncio.shield(self._failure)

    def details(self) -> dict[str, Any]:
        """Kind-specific state for ``edge status`` (under the driver's ``details``: a flight
        controller's components and message rates...); cheap, never raising. Empty by default."""
        return {}

    def frame_slot(self) -> LatestFrame | None:
        """The latest-frame slot of a frame source (a camera); None for every other driver."""
        return None

    def health(self) -> DriverHealth:
        return DriverHealth(
            state=str(self._state),
            rate_hz=self._meter.rate(),
            samples=self._samples,
            errors=self._errors,
            last_error=self._last_error,
            restarts=self.restarts,
        )

    # ----- helpers for subclasses -----------------------------------------------------------------
    def _as_error(self, exc: BaseException, what: str) -> DriverError:
        if isinstance(exc, DriverError):
            return exc
        cause = f"{type(exc).__name__}: {exc}"
        return DriverError(
            f"{self.kind} driver {self.name!r} on {self.where} {what}: {cause}",
            device=self.where,
            cause=cause,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], label: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"driver:{self.name}:{label}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(exc)

    def fail(self, exc: BaseException, what: str = "failed") -> None:
        """Mark the driver failed; the supervisor (if any) restarts it."""
        err = self._as_error(exc, what)
        if self._state is DriverState.FAILED:
            return
        self._state = DriverState.FAILED
        self._error(exc)
        self.log.warning("%s", err.message)
        if self._failure is not None and not self._failure.done():
            self._failure.set_result(err)
        for t in list(self._tasks):
            if t is not asyncio.current_task():
                t.cancel()

    def _sample(self) -> None:
        self._samples += 1
        self._meter.tick()

    def _error(self, exc: BaseException | str) -> None:
        self._errors += 1
        self._last_error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"

    async def _emit(self, component: str, values: Mapping[str, Value], *, publish: bool = True) -> None:
        """Merge ``values`` into this driver's entity and (unless ``publish`` is false or the
        driver was configured with ``publish = false``) publish them as telemetry."""
        ctx = self.ctx
        update_from = getattr(ctx, "update_from", None)  # a context that arbitrates sources
        if update_from is not None:
            names: list[str] = update_from(self.name, self.entity, component, values)
        else:
            ctx.update(self.entity, component, values)
            names = [component]
        if publish and self.publish_telemetry:
            payload = encode_json(values)
            for name in names:
                await ctx.publish(subjects.telemetry(ctx.device, self.entity, name), payload)

    async def _event(self, kind: str, payload: Mapping[str, Any]) -> None:
        ctx = self.ctx
        await ctx.publish(subjects.event(ctx.device, self.entity, kind), encode_json(payload))

    async def _serve_commands(self, handlers: Mapping[str, CommandHandler]) -> None:
        """Serve ``edge.<device>.cmd.<entity>.<verb>`` for each verb through the context.

        A handler gets the decoded JSON object and returns the ack fields; the context answers
        ``{"ok": true, ...}``. A handler that raises gives ``{"ok": false, "error": "..."}`` and
        counts as an error, not a failure.
        """
        ctx = self.ctx
        for verb, handler in handlers.items():
            self._unsubs.append(await ctx.serve(self.entity, verb, self._cmd(verb, handler)))

    def _cmd(self, verb: str, handler: CommandHandler) -> CommandHandler:
        async def counted(args: dict[str, Any]) -> dict[str, Any]:
            try:
                return await handler(args)
            except Exception as exc:  # re-raised: the context answers the refusal
                self._error(exc)
                self.log.info("driver %s: command %s refused: %s", self.name, verb, exc)
                raise

        return counted


class PollingDriver(Driver):
    """A driver that reads one sample at ``rate_hz`` (I2C sensors).

    A subclass MUST implement ``_open()`` and ``_poll()`` (read once and ``_emit``). Up to
    ``max_consecutive_errors`` failed reads in a row are counted and tolerated; one more fails the
    driver so the supervisor can reopen it.
    """

    DEFAULT_MAX_CONSECUTIVE_ERRORS: ClassVar[int] = 3

    def __init__(
        self,
        name: str,
        entity: str,
        *,
        rate_hz: float,
        max_consecutive_errors: int | None = None,
        stuck_after: int = 0,
        publish_telemetry: bool = True,
    ) -> None:
        super().__init__(name, entity, publish_telemetry=publish_telemetry)
        if rate_hz <= 0:
            raise ValueError("rate_hz must be > 0")
        self.rate_hz = rate_hz
        self.stuck_after = stuck_after
        self._last_raw: bytes | None = None
        self._same_raw = 0
        self.max_consecutive_errors = (
            self.DEFAULT_MAX_CONSECUTIVE_ERRORS
            if max_consecutive_errors is None
            else max_consecutive_errors
        )

    @abstractmethod
    async def _poll(self) -> None:
        """Read one sample and emit it."""

    def _check_stuck(self, raw: bytes) -> None:
        """Fail the driver when ``stuck_after`` (> 0) raw samples in a row are byte-identical."""
        if self.stuck_after <= 0:
            return
        if raw == self._last_raw:
            self._same_raw += 1
            if self._same_raw >= self.stuck_after:
                self._same_raw = 0
                raise DriverError(
                    f"{self.kind} driver {self.name!r} on {self.where}: data stuck "
                    f"({self.stuck_after} identical samples)",
                    device=self.where,
                    cause="data stuck",
                )
        else:
            self._same_raw = 0
            self._last_raw = raw

    async def _run(self) -> None:
        period = 1.0 / self.rate_hz
        consecutive = 0
        next_t = time.monotonic()
        while True:
            try:
                await self._poll()
                consecutive = 0
                self._sample()
            except (OSError, ValueError) as exc:  # a DriverError (stuck data) fails at once
                consecutive += 1
                if consecutive > self.max_consecutive_errors:  # counted by fail()
                    raise self._as_error(exc, f"failed {consecutive} reads in a row") from exc
                self._error(exc)
                self.log.debug("driver %s: read failed (%d in a row): %s", self.name, consecutive, exc)
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:  # fell behind: do not try to catch up with a burst
                next_t = time.monotonic()
                delay = 0.0
            await asyncio.sleep(max(delay, 0.0))
