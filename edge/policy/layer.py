"""The policy point as a layer (``edge status`` section ``policy``).

At start it loads the ``[policy]`` file (a bad file stops the device with the sentence naming the
rule and the file), puts the command admission check on the router (before the safety envelope's
guard, which runs when the command's handler would), watches the file (a changed file is
reloaded; a bad one refused, the old policy kept, the error in ``edge status``) and publishes the
usage of every interval on ``edge.<device>.evt.policy.usage`` (the ``EVT`` stream, which syncs to
the hub).

A policy can also come as a signed OTA artifact (:mod:`edge.ota.policies`): :meth:`PolicyLayer.use_artifact`
swaps it in through the same compiled swap and, while it is in force, the file is neither watched
nor reloaded (the artifact decides); :meth:`PolicyLayer.clear_artifact` goes back to the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from edge.errors import LifecycleError
from edge.layer import DeviceContext
from edge.nats import subjects
from edge.nats.commands import CommandRequest
from edge.policy.config import PolicyConfig
from edge.policy.model import Action
from edge.policy.point import PolicyPoint
from edge.policy.rules import Policy, load_policy

log = logging.getLogger("edge.policy")

#: The caller header of commands played from the hub's queue (edge.sync.device.layer).
CLOUD_CALLER = "cloud"
#: Callers that are the device itself (the safety envelope's failsafe hold): always granted.
DEVICE_CALLERS = frozenset({"safety-failsafe"})
#: The only verbs a device caller is granted: the failsafe sends nothing but ``hold``, and anyone
#: on the device's NATS can claim its name, so the name alone must not grant more.
DEVICE_VERBS = frozenset({"hold"})
ANONYMOUS = "anonymous"


class PolicyLayer:
    """Owns the device's :class:`PolicyPoint` lifecycle: load, watch, usage records."""

    name = "policy"

    def __init__(self, point: PolicyPoint, config: PolicyConfig | None = None, *,
                 agents: Iterable[str] = (), operators: Iterable[str] = (CLOUD_CALLER,)) -> None:
        self.point = point
        self.config = config or PolicyConfig()
        self.agents = frozenset(agents)
        self.operators = frozenset(operators)
        self.records = 0
        self._ctx: DeviceContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._remove: Callable[[], None] | None = None
        self._mtime: tuple[int, int] | None = None
        self.artifact: dict[str, Any] | None = None  # the OTA policy in force: name, version, sha256
        self._watching = False

    async def start(self, ctx: DeviceContext) -> None:
        self._ctx = ctx
        self.point.events = ctx.events
        if self.point.labels is None:
            world = ctx.world
            self.point.labels = lambda entity: (dict(world.meta(entity).labels)
                                                if entity in world else {})
        f = self.config.file
        if f is not None:
            self._mtime = _mtime(f)
            self.point.load(load_policy(f, ctx.device))  # a bad file refuses the start
        self._start_watch()
        self._remove = ctx.commands.set_admission(self.admit)
        self._tasks.append(asyncio.create_task(self._usage(), name="edge.policy.usage"))

    async def stop(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._watching = False
        if self._ctx is not None:
            self.publish_usage()  # the last interval is recorded too

    def status(self) -> dict[str, Any]:
        return {**self.point.status(), "usage_records": self.records, "artifact": self.artifact}

    def _start_watch(self) -> None:
        if self.config.file is not None and self.config.watch_interval > 0 and not self._watching \
                and self._ctx is not None:
            self._watching = True
            self._tasks.append(asyncio.create_task(self._watch(), name="edge.policy.watch"))

    def configure(self, config: PolicyConfig) -> None:
        """New intervals while running (a config fragment's ``[policy]``); the file stays."""
        self.config = PolicyConfig(self.config.file, config.usage_interval, config.watch_interval)
        self._start_watch()

    # -- policies shipped as OTA artifacts -------------------------------------------------------

    def use_artifact(self, policy: Policy, info: Mapping[str, Any]) -> None:
        """Put the compiled-and-checked ``policy`` of an OTA artifact in force (one swap)."""
        self.point.load(policy)
        self.artifact = dict(info)

    def clear_artifact(self) -> None:
        """No OTA policy any more: the configured file decides again (or no policy at all)."""
        if self.artifact is None:
            return
        self.artifact = None
        f = self.config.file
        if f is None:
            self.point.load(None)
            return
        self._mtime = _mtime(f)
        self.point.load_file(f)

    def accounting(self, n: int = 10) -> dict[str, Any]:
        return self.point.accounting(n)

    # -- commands -------------------------------------------------------------------------------

    def principal(self, caller: str | None, origin: str | None = None) -> tuple[str, str, bool]:
        """(kind, id, granted) of a command's ``Edge-Caller`` (or, without one, of the
        ``Edge-Component`` of a command a wasm component of this device published)."""
        if not caller:
            ctx = self._ctx
            if origin and ctx is not None and origin.endswith(f"@{ctx.device}"):
                return "component", origin[: -len(ctx.device) - 1], False
            return "caller", ANONYMOUS, False
        if caller in DEVICE_CALLERS:
            return "device", caller, True
        if caller in self.operators:
            return "operator", caller, False
        if caller in self.agents:
            return "agent", caller, False
        return "caller", caller, False

    def admit(self, request: CommandRequest, size: int = 0) -> tuple[str, Mapping[str, Any]] | None:
        """The router's admission check: None admits, else the refusal (sentence, fields)."""
        kind, pid, granted = self.principal(request.caller, request.origin)
        granted = granted and request.verb in DEVICE_VERBS
        d = self.point.check(kind, pid, Action.COMMAND, f"{request.entity}.{request.verb}",
                             size=size, granted=granted, entity=request.entity)
        if d.allowed:
            return None
        return (f"{kind}:{pid} may not send '{request.verb}' to '{request.entity}': {d.reason}",
                {"rule": d.rule})

    # -- background -----------------------------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        """Reload the configured file now (the API's ``policy.reload``)."""
        f = self.config.file
        if f is None:
            raise LifecycleError("no policy file is configured ([policy] file)")
        if self.artifact is not None:
            raise LifecycleError(f"the policy in force is the OTA artifact {self.artifact['name']}@"
                                 f"{self.artifact['version']}; the file {f} is not read while it is")
        self._mtime = _mtime(f)
        ok = self.point.load_file(f)
        return {"loaded": ok, **self.point.status()}

    async def _watch(self) -> None:
        f = self.config.file
        assert f is not None
        while True:
            await asyncio.sleep(self.config.watch_interval or 1.0)
            if self.artifact is not None or not self.config.watch_interval:  # an OTA policy decides; the file waits
                continue
            m = _mtime(f)
            if m != self._mtime:
                self._mtime = m
                self.point.load_file(f)

    async def _usage(self) -> None:
        while True:
            await asyncio.sleep(self.config.usage_interval)
            self.publish_usage()

    def publish_usage(self) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        rows = self.point.meter.interval()
        if not rows:
            return
        body = {"t": time.time(), "device": ctx.device, "interval_s": self.config.usage_interval,
                "generation": self.point.generation, "principals": rows}
        try:
            ctx.events.emit(subjects.event(ctx.device, "policy", "usage"), json.dumps(body).encode())
            self.records += 1
        except Exception:  # noqa: BLE001  a record that cannot be queued is logged, never raised
            log.exception("the usage record could not be queued")


def _mtime(path: Any) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
