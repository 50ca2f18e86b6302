"""One component in the worker: a wasm3 environment, runtime and module, and its calls.

:class:`Instance` links the host functions of :mod:`edge.wasm.worker.imports`, calls exports
under a fresh gas budget per call, and records what a call did in its
:class:`~edge.wasm.protocol.CallResult`. :meth:`Instance.start` finds the exports; wasm3 runs
the module's start function (if it has one) at the first lookup, so it runs there, metered like
a call (the load's start function and ``edge_init`` share one call's budget and quota). A fault drops nothing here: the dispatcher drops the
instance and reports; the runtime decides when to load it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from edge.wasm.abi import EXPORTS_V1, IMPORT_MODULE, IMPORTS_V1
from edge.wasm.grants import PublishGrant
from edge.wasm.protocol import BindSpec, CallResult, LoadSpec
from edge.wasm.quotas import KvUsage
from edge.wasm.worker.columns import Columns
from edge.wasm.worker.imports import (
    GAS_UNIT,
    LOG_BURST,
    GuestFault,
    HostChannel,
    HostImports,
    HostOutOfGas,
)


#: The export name a fault in the module's start function is reported under.
START_EXPORT = "start"


class ModuleRefused(Exception):
    """wasm3 refused the module while finding its exports (a function does not compile)."""


class Instance(HostImports):
    """One component: a wasm3 environment + runtime + module and the host imports it calls."""

    def __init__(self, spec: LoadSpec, channel: HostChannel | None = None) -> None:
        import wasm3

        self.name = spec.name
        self.spec = spec
        self.kv = dict(spec.kv)
        self.kv_usage = KvUsage.of(self.kv, spec.kv_keys, spec.kv_bytes)
        self.device = spec.device.encode()
        self.ncols = spec.ncols
        self.writable = frozenset(spec.writable)
        self.grants = PublishGrant(spec.publish)
        self.gas_limit = spec.gas / GAS_UNIT
        self.n = 0
        self.n8 = 0
        self.ids = []
        self.handle = spec.handle
        self.tokens = float(LOG_BURST)
        self.tokens_at = time.monotonic()
        self.result = CallResult()
        self.published = 0
        self.channel = channel
        self.models = frozenset(m.encode() for m in spec.models)
        self.gas_spent = 0.0  # gas charged by host imports in this call (gasLimit units)

        self.env = wasm3.Environment()
        self.rt = self.env.new_runtime(spec.stack_bytes)
        self.mod = self.env.parse_module(spec.wasm)
        self.rt.load(self.mod)  # link only after load: linking before crashes wasm3
        host = self.host_functions()
        for name, sig in IMPORTS_V1.items():
            self.mod.link_function(IMPORT_MODULE, name, sig, host[name])
        # The module's memory is pinned (initial == maximum): this view stays valid for good.
        self.mem = self.rt.get_memory(0)
        self.memlen = len(self.mem)
        self.columns = Columns(self.mem, spec.ncols, spec.writable)
        self.exports: dict[str, Any] = {}

    def start(self) -> bool:
        """Find the exports the host calls, under a fresh gas budget: wasm3 runs the module's
        start function (if any) at the first lookup, so it is metered like a call and a fault
        in it is recorded in ``self.result.fault`` under export ``start``. False after a fault.

        Raises ModuleRefused if wasm3 cannot compile a function it looks up.
        """
        ok, _ = self._metered(START_EXPORT, self._find_exports, ())
        return ok

    def _find_exports(self) -> None:
        for export in EXPORTS_V1:
            try:
                self.exports[export] = self.rt.find_function(export)
            except RuntimeError as exc:
                text = str(exc)
                if "function lookup failed" in text:
                    continue
                if text.startswith("[trap]"):  # the start function trapped or ran out of gas
                    raise
                raise ModuleRefused(text) from exc

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Drop what can be dropped (wasm3 never frees the runtime itself)."""
        self.columns.close()
        self.mem.release()
        self.kv = {}
        self.ids = []
        self.exports = {}

    def map_columns(self, path: str, capacity: int) -> None:
        """Map the copy-mode batch file."""
        self.columns.map_batch(path, capacity)

    def bind(self, spec: BindSpec) -> None:
        """Map the world's columns (read-only) and the output area of a shared-mode batch."""
        self.columns.bind(spec)
        if spec.ids is not None:
            self.ids = [i.encode() for i in spec.ids]

    def unbind(self) -> None:
        self.columns.unbind()

    # -- calls -------------------------------------------------------------------------------

    def begin(self) -> CallResult:
        self.result = CallResult()
        return self.result

    def call(self, export: str, *args: Any, fresh: bool = True) -> int | None:
        """Call an export under a fresh gas budget (``fresh=False``: continue the budget and
        publish quota of the previous call). Returns its result, or None after a fault
        (recorded in ``self.result.fault``)."""
        ok, rc = self._metered(export, self.exports[export], args, fresh)
        if not ok:
            return None
        return int(rc) if rc is not None else 0

    def _metered(self, export: str, fn: Callable[..., Any], args: tuple[Any, ...],
                 fresh: bool = True) -> tuple[bool, Any]:
        if fresh:
            self.mod.gasLimit = self.gas_limit
            self.gas_spent = 0.0
            self.published = 0
        try:
            return True, fn(*args)
        except ModuleRefused:
            raise
        except HostOutOfGas as exc:
            self.result.fault = ("out_of_gas", export, f"[trap] Out of gas ({exc})")
        except GuestFault as exc:
            self.result.fault = ("trap", export, f"[trap] {exc}")
        except RuntimeError as exc:
            text = str(exc)
            reason = "out_of_gas" if "Out of gas" in text else "trap"
            self.result.fault = (reason, export, text)
        except Exception as exc:  # noqa: BLE001 - anything else a call raises is a trap too
            self.result.fault = ("trap", export, f"{type(exc).__name__}: {exc}")
        finally:
            self.result.gas_used = int((self.gas_spent + self.mod.gasUsed) * GAS_UNIT)
        return False, None

    def tick(self, n: int, dt: float, shared: bool = False) -> None:
        cols = self.columns
        if shared:
            if n != cols.bound_n:
                raise GuestFault(f"tick of {n} rows, but {cols.bound_n} are bound")
        elif cols.cols is None and self.ncols:
            raise GuestFault("no batch mapped")
        cols.shared = shared
        cols.written = 0
        self.n = n
        self.n8 = n * 8
        try:
            rc = self.call("edge_tick", n, dt)
        finally:
            self.n = self.n8 = 0
            self.result.written = cols.written if shared else 0
        if rc:
            self.result.errors += 1

    def health(self, gas: int) -> None:
        """Call ``edge_health`` under its own gas limit (``[health] gas``), set before the call.
        Its return value goes in ``result.written`` (as an unsigned 32-bit value), ``errors``
        is 1 if it is not 0. Its KV writes are undone here (the runtime refuses them); a fault
        is recorded in ``result.fault`` and the instance is kept (edge.wasm.health)."""
        res = self.result
        kv, limit = dict(self.kv), self.gas_limit
        self.gas_limit = gas / GAS_UNIT
        try:
            rc = self.call("edge_health")
        finally:
            self.gas_limit = limit
        if res.kv_puts:
            self.kv = kv
            self.kv_usage = KvUsage.of(kv, self.spec.kv_keys, self.spec.kv_bytes)
        if rc is not None:
            res.written = rc & 0xFFFFFFFF
            res.errors = 1 if rc else 0

    def deliver(self, messages: list[tuple[str, bytes]]) -> None:
        res = self.result
        alloc = "edge_alloc"
        for i, (subject, data) in enumerate(messages):
            sb = subject.encode()
            ls = len(sb)
            size = ls + len(data)
            ptr = self.call(alloc, size)
            if ptr is None:
                res.dropped += len(messages) - i
                return
            if ptr <= 0 or ptr + size > self.memlen:
                if ptr == 0:
                    res.dropped += 1
                    continue
                res.fault = ("trap", alloc, (f"[trap] edge_alloc returned an out-of-bounds "
                                            f"buffer ({ptr}, {size} bytes)"))
                res.dropped += len(messages) - i
                return
            self.mem[ptr:ptr + ls] = sb
            self.mem[ptr + ls:ptr + size] = data
            res.messages += 1
            rc = self.call("edge_on_message", ptr, ls, ptr + ls, len(data))
            if rc is None:
                res.dropped += len(messages) - i - 1
                return
            if rc:
                res.errors += 1
