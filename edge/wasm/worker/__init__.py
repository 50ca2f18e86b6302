"""Sandbox worker process: hosts many wasm components, each in its own wasm3 environment.

Run as ``python -m edge.wasm.worker`` by :class:`edge.wasm.pool.SandboxPool`. It reads request
frames on stdin and answers each, in order, on the original stdout (see
:mod:`edge.wasm.protocol` and :mod:`edge.wasm.wire`); fd 1 is then pointed at stderr so that
nothing else can corrupt the protocol. wasm3 prints trap backtraces on fd 2, which the runtime
reads and logs.

Key components:

* :mod:`~edge.wasm.worker.dispatch`: the request loop (:class:`Worker`, :func:`serve`);
* :mod:`~edge.wasm.worker.instance`: one component's wasm3 instance and its calls;
* :mod:`~edge.wasm.worker.imports`: the host functions (module ``edge``);
* :mod:`~edge.wasm.worker.columns`: batch columns (copy mode; shared mode: world columns
  mapped read-only, writes to the component's output area);
* :mod:`~edge.wasm.worker.__main__`: process setup (fds, parent death, signals).

The worker is deliberately stateless about supervision: when a call faults it drops the
instance and reports; the runtime decides when to load it again. The runtime trusts nothing
it writes (docs/sandbox.md, "Threat model").
"""

from edge.nats.subjects import subject_matches
from edge.wasm.worker.dispatch import Worker, serve
from edge.wasm.worker.imports import GuestFault, HostOutOfGas
from edge.wasm.worker.instance import Instance

__all__ = ["GuestFault", "HostOutOfGas", "Instance", "Worker", "serve", "subject_matches"]
