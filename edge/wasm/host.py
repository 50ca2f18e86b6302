"""What the runtime provides to the sandbox pool, and the bridge that serves ``infer``.

Two seams, passed to :class:`~edge.wasm.pool.SandboxPool` at construction by the one place
that assembles the device:

* :class:`HostCallbacks` (required): where checked effects and faults go;
* :class:`InferBridge` (optional, ``infer=``): runs models for the ``infer`` import. Without
  one, every ``infer`` is answered -2 (no such model).

:class:`InferServer` answers the nested host requests a worker makes during a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from edge.errors import EdgeError, SandboxError
from edge.wasm.abi import INFER_BAD_INPUT, INFER_FAILED, INFER_SMALL_OUTPUT, INFER_UNKNOWN
from edge.wasm.component import Component
from edge.wasm.procs import HostRequest

log = logging.getLogger("edge.wasm.pool")

#: Longest one ``infer`` import call may wait for the host's model (seconds); then it returns -5.
DEFAULT_INFER_TIMEOUT_S = 2.0
#: Total time one export call may spend waiting for ``infer`` (seconds): the deadline clock is
#: paused while an infer runs, so this bounds how long a call can hold its worker through it.
DEFAULT_INFER_BUDGET_S = 10.0
#: Reasons of an EdgeError raised by ``InferBridge.infer`` -> infer return code.
INFER_REASON_CODES = {"unknown-model": INFER_UNKNOWN, "input-size": INFER_BAD_INPUT}


class HostCallbacks(Protocol):
    """Where the pool sends what components do.

    ``publish`` sends a message a component published (already checked against its grants, in
    the runtime); ``kv_put`` persists one key of the component's private KV; both are awaited in
    order from one task, so they should not block for long. ``hops`` is the number of handlers
    the message has passed through (1 for a publish from a tick or ``edge_init``; see
    :mod:`edge.wasm.origin`): the host sends it with the message, so the next component's
    handler publishes one more. ``on_fault`` is called (synchronously, in the event loop) for
    every fault; ``on_limit`` when a component's effects were refused by a limit
    (``publish_rate``, ``hops`` or ``kv_quota``; ``dropped`` since the last report, at most one
    report per component and limit every 5 s). Neither may raise.
    """

    async def publish(self, component: str, subject: str, data: bytes, hops: int) -> None: ...

    async def kv_put(self, component: str, key: str, value: bytes, hops: int) -> None: ...

    def on_fault(self, component: str, fault: SandboxError) -> None: ...

    def on_limit(self, component: str, limit: str, dropped: int) -> None: ...


class MessagePolicy(Protocol):
    """The device's policy point as the sandbox sees it (:mod:`edge.policy.sandbox`): every
    export call's gas is metered (``on_call``); a component's publishes and KV puts (after its
    grants, hop limit and publish rate) and the messages delivered into it pass ``publishes``,
    ``kv_puts`` and ``deliveries``, which return what the policy lets through."""

    def on_call(self, component: str, gas: int) -> None: ...

    def publishes(self, component: str, items: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]: ...

    def kv_puts(self, component: str, items: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]: ...

    def deliveries(self, component: str, items: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]: ...


class InferBridge(Protocol):
    """Runs models for the ``infer`` import.

    ``infer`` runs ``model`` (already checked against the component's ``run.models`` grant) on
    ``data``, the bytes of every input tensor in order, and returns the bytes of every output
    in order. It raises an :class:`~edge.errors.EdgeError` whose ``reason`` is
    ``unknown-model`` (-> -2), ``input-size`` (-> -3; ``expected`` = the input size in bytes),
    anything else -> -5. It runs while the component's worker waits, bounded by the pool's
    ``infer_timeout_s``.
    """

    async def infer(self, component: str, model: str, data: bytes) -> bytes: ...


class InferServer:
    """Answers ``infer`` host requests for the component whose call is waiting."""

    def __init__(self, bridge: InferBridge | None, comps: dict[str, Component], *,
                 timeout_s: float, budget_s: float) -> None:
        self.bridge = bridge
        self.comps = comps
        self.timeout_s = timeout_s
        self.budget_s = budget_s

    async def serve(self, req: HostRequest) -> None:
        """Run one ``infer`` and answer the worker (exactly once)."""
        code, hint, out = INFER_UNKNOWN, 0, b""
        call = req.call
        name = call.component if call is not None else None
        comp = self.comps.get(name) if name is not None else None
        try:
            if comp is None or comp.worker is not req.worker:
                return
            if req.model not in comp.manifest.models:  # an intact worker checked it already
                req.worker.violate(f"an infer of model '{req.model[:64]}' the grants refuse")
                return
            if self.bridge is None:
                return
            if call is not None and call.host_s >= self.budget_s:
                code = INFER_FAILED
                log.warning("component '%s': infer refused, the call already waited %.1f s for "
                            "models (infer_budget_s)", comp.name, call.host_s)
                return
            try:
                async with asyncio.timeout(self.timeout_s):  # no extra task, unlike wait_for
                    out = bytes(await self.bridge.infer(comp.name, req.model, req.data))
            except TimeoutError:
                code = INFER_FAILED
                log.warning("component '%s': model '%s' took longer than %.1f s", comp.name,
                            req.model, self.timeout_s)
                return
            except EdgeError as err:
                reason = err.fields.get("reason")
                code = INFER_REASON_CODES.get(str(reason), INFER_FAILED)
                if code == INFER_BAD_INPUT:
                    with contextlib.suppress(TypeError, ValueError):
                        hint = int(err.fields.get("expected", 0))
                elif code == INFER_FAILED:
                    log.warning("component '%s': model '%s' failed: %s", comp.name, req.model,
                                err.message)
                return
            except Exception:
                code = INFER_FAILED
                log.exception("component '%s': infer of model '%s' failed", comp.name, req.model)
                return
            if len(out) > req.out_cap:
                code, hint, out = INFER_SMALL_OUTPUT, len(out), b""
            else:
                code = len(out)
        finally:
            if comp is not None:
                comp.counters["infers" if code >= 0 else "infer_errors"] += 1
            req.worker.reply_host(code, hint, out if code >= 0 else b"")
