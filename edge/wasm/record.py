"""The recorder hook of the sandbox layer: what a recorder is told about each component.

[replay hook] :class:`~edge.wasm.layer.SandboxLayer` calls a :class:`SandboxRecorder` (set by
the composition root; None = recording off, nothing is called) at the sandbox's call
boundary:

* ``on_load`` when a component is loaded (its manifest text, module bytes and KV snapshot,
  the bucket revision of each key, and the clock reads of its start function and
  ``edge_init``);
* ``on_tick`` after each tick, with the exact inputs the worker read (the batch columns before
  the call, the entity ids, ``dt``), the columns after it and the ``(kind, value)`` of every
  clock read of the call, in order (the pool runs in the record clock mode: the worker reports
  them with the call's result; ``cut``: reads past the report's limit, not kept);
* ``on_deliver`` for each message batch handed to ``edge_on_message``, and
  ``on_message_clocks`` with the clock reads of each batch once it is answered (in the order
  the batches were handed over; none for a batch that was dropped);
* ``on_outputs`` for every call the runtime accounted for (``edge_init``, ``edge_tick``,
  ``edge_on_message``): the component's own publishes and KV puts as its reply carried them, in
  call order, before any limit, policy or coalescing, with what the effects pipeline did with
  them (:class:`CallOutputs`; told by :class:`~edge.wasm.effects.Effects` through the host);
* ``on_kv_put`` for each KV write the host carried out (with the bucket revision it got, None
  when the write failed);
* ``on_infer`` for each answer of the ``infer`` bridge (wrapped in :class:`RecordingBridge`);
* ``on_unload``.

Every method is synchronous and must not block or raise: a recorder queues what it is told.
While a recorder is set, a tick system whose first batch the recorder records in full
(``records_batch``) uses the copy mode from then on (the batch is gathered in the runtime before
the call), so the recorded inputs are exactly what the component read; shared mode would let
other writers change a column while the worker reads it. One whose batch is too large keeps the
shared mode, and its ticks are recorded without their columns. Messages on the record subjects
(:func:`record_prefix`) are not delivered to components. See docs/replay.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from edge.errors import EdgeError
from edge.nats import subjects
from edge.wasm.host import InferBridge
from edge.wasm.manifest import Manifest


def record_prefix(device: str) -> str:
    """``edge.<device>.rec.``: the subjects of the replay records, never delivered to components
    (a component subscribed to ``>`` would otherwise hear, and be recorded hearing, the records
    about itself)."""
    return f"{subjects.PREFIX}.{device}.rec."


#: What the effects pipeline did with one KV put of a call (:attr:`CallOutputs.kv_fate`).
KV_QUEUED = "queued"  # queued for the host (written, or later replaced while queued)
KV_POLICY_DENIED = "policy_denied"
KV_LANE_DROPPED = "lane_dropped"


@dataclass(slots=True)
class CallOutputs:
    """One call's own outputs and what the device's effects pipeline did with them.

    ``publishes`` and ``kv_puts`` are the reply's, in call order, before the hop limit, the
    publish rate, the policy point and the lane; the counts say how many publishes each of
    those refused (they are applied in that order); ``kv_fate`` has one entry per KV put
    (``KV_QUEUED``, ``KV_POLICY_DENIED`` or ``KV_LANE_DROPPED``) and ``coalesced`` the indices of the queued puts that
    replaced a put of the same key still queued (of this call or an earlier one): that earlier
    put is never written.
    """

    export: str  # edge_init | edge_tick | edge_on_message
    publishes: Sequence[tuple[str, bytes]]
    kv_puts: Sequence[tuple[str, bytes]]
    hop_limited: int = 0
    rate_limited: int = 0
    policy_denied: int = 0
    lane_dropped: int = 0
    kv_fate: list[str] = field(default_factory=list)
    coalesced: list[int] = field(default_factory=list)


@runtime_checkable
class CallOutputsListener(Protocol):
    """A host (:class:`~edge.wasm.host.HostCallbacks`) that also wants every call's own
    outputs: :class:`~edge.wasm.effects.Effects` tells it each accounted call, synchronously,
    before any of the call's effects reach ``publish``/``kv_put``. Must not block or raise."""

    def on_call_outputs(self, component: str, outputs: CallOutputs) -> None: ...


class SandboxRecorder(Protocol):
    """Told what each component saw and did (see the module docstring)."""

    def on_load(self, manifest: Manifest, module: bytes, kv: dict[str, bytes],
                clocks: Sequence[tuple[int, int]] = (), cut: int = 0,
                kv_revisions: Mapping[str, int] | None = None) -> None: ...

    def records_batch(self, component: str, nbytes: int) -> bool:
        """Whether a tick batch of ``nbytes`` of columns is recorded in full (it then runs in
        the copy mode); a larger one runs as it would unrecorded and is told to
        :meth:`on_tick_unrecorded`."""
        ...

    def on_tick_unrecorded(self, component: str, dt: float, nbytes: int, ok: bool) -> None: ...

    def on_unload(self, component: str) -> None: ...

    def on_tick(self, component: str, dt: float, ids: Sequence[str],
                before: Sequence[np.ndarray], after: Sequence[np.ndarray], ok: bool,
                clocks: Sequence[tuple[int, int]] = (), cut: int = 0) -> None: ...

    def on_deliver(self, component: str, messages: Sequence[tuple[str, bytes]],
                   hops: int) -> None: ...

    def on_message_clocks(self, component: str, clocks: Sequence[tuple[int, int]],
                          cut: int) -> None: ...

    def on_outputs(self, component: str, outputs: CallOutputs) -> None: ...

    def on_kv_put(self, component: str, key: str, value: bytes,
                  revision: int | None = None) -> None: ...

    def on_infer(self, component: str, model: str, data: bytes, out: bytes | None,
                 error: EdgeError | None) -> None: ...


class RecordingBridge:
    """An :class:`~edge.wasm.host.InferBridge` that tells ``recorder`` every answer of ``bridge``
    (the output, the error, or ``error`` None and ``out`` None when the call was cut off)."""

    def __init__(self, bridge: InferBridge, recorder: SandboxRecorder) -> None:
        self.bridge = bridge
        self.recorder = recorder

    async def infer(self, component: str, model: str, data: bytes) -> bytes:
        try:
            out = bytes(await self.bridge.infer(component, model, data))
        except EdgeError as err:
            self.recorder.on_infer(component, model, data, None, err)
            raise
        except BaseException:  # timed out (cancelled) or failed: answered -5 by the host
            self.recorder.on_infer(component, model, data, None, None)
            raise
        self.recorder.on_infer(component, model, data, out, None)
        return out
