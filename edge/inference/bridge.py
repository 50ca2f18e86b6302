"""The wasm ``infer`` import's host side: a component's input bytes -> a model -> output bytes.

The sandbox pool is given this bridge explicitly by the composition root (no bridge: every
``infer`` is answered "unknown model"). The pool has already checked the component's
``run.models`` grant. With the device's policy point (``policy``), each infer is decided there
too (principal ``component:<name>``, action ``infer``, resource the model; the grant already
holds) and its time is metered; a denial is reason ``denied`` (the import returns -5).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edge.inference.errors import InferenceError

if TYPE_CHECKING:
    from edge.inference.registry import ModelRegistry
    from edge.policy.point import PolicyPoint


class RegistryInferBridge:
    """Runs a registry model for a component: inputs and outputs as raw tensor bytes."""

    def __init__(self, registry: ModelRegistry, policy: PolicyPoint | None = None) -> None:
        self.registry = registry
        self.policy = policy

    async def infer(self, component: str, model: str, data: bytes) -> bytes:
        """``data`` is every input tensor's bytes, in input order, each in the tensor's dtype and
        shape; the result is every output's bytes in output order (float32 for float and
        dequantized models). Raises InferenceError: reason ``unknown-model``, ``input-size``
        (``expected`` = bytes wanted), or the model's own.
        """
        import numpy as np

        if self.policy is not None:
            d = self.policy.check("component", component, "infer", model, size=len(data), granted=True)
            if not d.allowed:
                raise InferenceError(f"component '{component}' may not run model '{model}': {d.reason} "
                                     f"(rule '{d.rule}')", model=model, reason="denied")
        spec = self.registry.get(model)
        sizes = [int(np.prod(t.shape, dtype=np.int64)) * t.dtype.itemsize for t in spec.inputs]
        if len(data) != sum(sizes):
            raise InferenceError(
                f"component '{component}': model '{model}' takes {sum(sizes)} input bytes, got {len(data)}",
                model=model, reason="input-size", expected=str(sum(sizes)), got=str(len(data)),
            )
        arrays, pos = [], 0
        for t, size in zip(spec.inputs, sizes, strict=True):
            count = size // t.dtype.itemsize
            arrays.append(np.frombuffer(data, dtype=t.dtype, count=count, offset=pos).reshape(t.shape))
            pos += size
        t0 = time.perf_counter()
        outputs = await self.registry.infer(model, arrays)
        if self.policy is not None:
            self.policy.add_infer("component", component, time.perf_counter() - t0)
        return b"".join(np.ascontiguousarray(o).tobytes() for o in outputs)
