"""The wasm ``infer`` import's host side: a component's input bytes -> a model -> output bytes.

The sandbox pool is given this bridge explicitly by the composition root (no bridge: every
``infer`` is answered "unknown model"). The pool has already checked the component's
``run.models`` grant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.inference.errors import InferenceError

if TYPE_CHECKING:
    from edge.inference.registry import ModelRegistry


class RegistryInferBridge:
    """Runs a registry model for a component: inputs and outputs as raw tensor bytes."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def infer(self, component: str, model: str, data: bytes) -> bytes:
        """``data`` is every input tensor's bytes, in input order, each in the tensor's dtype and
        shape; the result is every output's bytes in output order (float32 for float and
        dequantized models). Raises InferenceError: reason ``unknown-model``, ``input-size``
        (``expected`` = bytes wanted), or the model's own.
        """
        import numpy as np

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
        outputs = await self.registry.infer(model, arrays)
        return b"".join(np.ascontiguousarray(o).tobytes() for o in outputs)
