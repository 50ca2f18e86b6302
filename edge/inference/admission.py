"""The policy point on the device's own inference: a vision pipeline's model runs.

Key components
- :class:`PolicedDetector`: wraps a ``[[vision]]`` pipeline's detector. Before each frame the
  device's policy point decides principal ``device:<entity>`` (the pipeline, named by the entity
  it writes), action ``infer``, resource the model, with the frame's bytes as the message size.
  The ``[[vision]]`` entry naming the model is the grant: with no rule deciding, the frame runs as
  before; a ``deny`` rule or a limit over it denies. A denied frame raises
  :class:`~edge.inference.errors.InferenceError` with reason ``denied`` (the pipeline counts it
  as ``denied`` and takes the next frame); an allowed one is run and its time metered as the
  principal's ``infer_s`` (``edge accounting``).

Example::

    detector = PolicedDetector(FaceDetector(registry, "face"), point, entity="cam", model="face")
    DetectionPipeline(frames, detector, sink).start()
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from edge.inference.errors import InferenceError
from edge.inference.vision import Detection, Detector
from edge.policy.model import Action

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from edge.policy.point import PolicyPoint

#: The principal kind of the device's own parts (docs/policy.md).
PIPELINE_KIND = "device"
_INFER = Action.INFER.value


class PolicedDetector:
    """A detector whose every run passes the policy point (see the module docstring)."""

    def __init__(self, inner: Detector, point: PolicyPoint, *, entity: str, model: str) -> None:
        self.inner = inner
        self.point = point
        self.entity = entity
        self.name = model  # the model it runs (a ModelDetector)

    async def detect(self, image: npt.NDArray[np.uint8]) -> list[Detection]:
        d = self.point.check(PIPELINE_KIND, self.entity, _INFER, self.name, size=int(image.nbytes),
                             granted=True)
        if not d.allowed:
            raise InferenceError(f"the vision pipeline of '{self.entity}' may not run model "
                                 f"'{self.name}': {d.reason} (rule '{d.rule}')",
                                 model=self.name, reason="denied")
        t0 = time.perf_counter()
        try:
            return await self.inner.detect(image)
        finally:
            self.point.add_infer(PIPELINE_KIND, self.entity, time.perf_counter() - t0)
