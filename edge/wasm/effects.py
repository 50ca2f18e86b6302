"""Effects a worker reports, checked again in the runtime, then handed to the host in order.

A worker's reply lists what the component did (``publish``, ``kv_put``, log lines) and what it
was refused. The worker already applied the component's grants, but the worker runs hostile
code, so :meth:`Effects.check` applies the same rules (:mod:`edge.wasm.grants`) again: subjects
granted by ``run.publish``, payload and KV limits, at most ``publish_per_call`` publishes per
export call, counters consistent with what was sent, write bits inside the write set. An intact
worker never reports anything these rules refuse, so a refusal means the worker is compromised:
none of the reply's effects run and the worker is killed (reason ``protocol``).

Checked effects go to the :class:`~edge.wasm.host.HostCallbacks` from one background task, in
order (:meth:`Effects.run`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from edge.wasm.component import Component
from edge.wasm.grants import kv_put_allowed
from edge.wasm.host import HostCallbacks
from edge.wasm.protocol import CallResult

log = logging.getLogger("edge.wasm.pool")
component_log = logging.getLogger("edge.wasm.component")

#: Seconds between two "publish denied" warnings of one component.
DENIED_LOG_INTERVAL_S = 5.0
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
    if res.messages > messages or res.dropped > messages:
        return f"{res.messages} messages handled, {res.dropped} dropped of {messages} sent"
    allowed = (1 << len(m.writable)) - 1 if shared else 0
    if res.written & ~allowed:
        return f"write bits {res.written:#x} outside the write set ({allowed:#x})"
    return None


class Effects:
    """Accounts for replies and runs their effects through the host, in order."""

    def __init__(self, host: HostCallbacks) -> None:
        self._host = host
        self._queue: asyncio.Queue[tuple[str, CallResult]] = asyncio.Queue()

    def apply(self, comp: Component, res: CallResult) -> None:
        """Count a checked reply, log its lines and queue its publishes and KV puts."""
        c = comp.counters
        comp.gas_last = res.gas_used
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
        if res.kv_puts:
            for key, value in res.kv_puts:
                comp.kv[key] = value
        if res.publishes or res.kv_puts:
            self._queue.put_nowait((comp.name, res))

    async def run(self) -> None:
        """Hand queued effects to the host until cancelled."""
        while True:
            name, res = await self._queue.get()
            try:
                for key, value in res.kv_puts:
                    await self._host.kv_put(name, key, value)
                for subject, data in res.publishes:
                    await self._host.publish(name, subject, data)
            except Exception:
                log.exception("host callback failed for component '%s'", name)
            finally:
                self._queue.task_done()

    async def join(self) -> None:
        """Wait until every queued effect is handed to the host."""
        await self._queue.join()
