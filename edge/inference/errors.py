"""The error every deliberate failure of the inference subsystem raises."""

from __future__ import annotations

from edge.errors import EdgeError


class InferenceError(EdgeError):
    """Loading, checking or running a model failed.

    Fields: ``model`` (registry name), ``tensor`` (tensor name), ``expected`` / ``got`` (shape or dtype
    as text), ``reason`` (short machine-readable cause such as ``shape``, ``dtype``, ``digest``,
    ``delegate``, ``backend``, ``load``, ``invoke``, ``unknown-model``).
    """

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        tensor: str | None = None,
        expected: str | None = None,
        got: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, model=model, tensor=tensor, expected=expected, got=got,
                         reason=reason)
        self.model = model
        self.tensor = tensor
        self.expected = expected
        self.got = got
        self.reason = reason
