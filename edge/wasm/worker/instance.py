"""One component in the worker: a wasm3 environment, runtime and module, and its calls.

:class:`Instance` links the host functions of :mod:`edge.wasm.worker.imports`, calls exports
under a fresh gas budget per call, and records what a call did in its
:class:`~edge.wasm.protocol.CallResult`. A fault drops nothing here: the dispatcher drops the
instance and reports; the runtime decides when to load it again.
"""

from __future__ import annotations

import time
from typing import Any

from edge.wasm.abi import IMPORT_MODULE, IMPORTS_V1
from edge.wasm.grants import PublishGrant
from edge.wasm.protocol import BindSpec, CallResult, LoadSpec
from edge.wasm.worker.columns import Columns
from edge.wasm.worker.imports import (
    GAS_UNIT,
    LOG_BURST,
    GuestFault,
    HostChannel,
    HostImports,
    HostOutOfGas,
)


class Instance(HostImports):
    """One component: a wasm3 environment + runtime + module and the host imports it calls."""

    def __init__(self, spec: LoadSpec, channel: HostChannel | None = None) -> None:
        import wasm3

        self.name = spec.name
        self.spec = spec
        self.kv = dict(spec.kv)
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
        for export in ("edge_alloc", "edge_init", "edge_tick", "edge_on_message"):
            try:
                self.exports[export] = self.rt.find_function(export)
            except RuntimeError as exc:
                if "function lookup failed" not in str(exc):
                    raise

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

    def call(self, export: str, *args: Any) -> int | None:
        """Call an export under a fresh gas budget. Returns its result, or None after a fault
        (recorded in ``self.result.fault``)."""
        fn = self.exports[export]
        self.mod.gasLimit = self.gas_limit
        self.gas_spent = 0.0
        self.published = 0
        try:
            rc = fn(*args)
        except HostOutOfGas as exc:
            self.result.fault = ("out_of_gas", export, f"[trap] Out of gas ({exc})")
            return None
        except GuestFault as exc:
            self.result.fault = ("trap", export, f"[trap] {exc}")
            return None
        except RuntimeError as exc:
            text = str(exc)
            reason = "out_of_gas" if "Out of gas" in text else "trap"
            self.result.fault = (reason, export, text)
            return None
        except Exception as exc:  # noqa: BLE001 - anything else a call raises is a trap too
            self.result.fault = ("trap", export, f"{type(exc).__name__}: {exc}")
            return None
        finally:
            self.result.gas_used = int((self.gas_spent + self.mod.gasUsed) * GAS_UNIT)
        return int(rc) if rc is not None else 0

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
