"""Local inference as a runtime layer (``edge status`` section ``inference``).

``[[models]]`` tables load models (files or the JetStream object store, hot-reloaded);
``[[vision]]`` tables connect a camera driver's latest frame to a detection model and write the
results into the entity's ``detections`` component and onto ``edge.<device>.evt.<entity>.detections``
(:data:`DETECTIONS`, the name the agents subscribe to). With the device's policy point
(``policy``), every frame's inference is decided and metered there first (principal
``device:<entity>``, action ``infer``, resource the model; :mod:`edge.inference.admission`). Every object store bucket a model comes from
is watched while the device runs: a new version is verified and swapped in, a refused one leaves
the old model serving, with the error in ``edge status``. ``edge status`` shows the section
``inference``: backend, models with latency and load errors, pipelines with drops, layer errors
(``errors``: ``{name: {"error", "ago_s"}}``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from drivers.camera.frames import Frame, LatestFrame
from edge.inference.admission import PolicedDetector
from edge.inference.blazeface import FaceDetector
from edge.inference.config import ModelSpec, VisionSpec
from edge.inference.config import parse_vision as parse_vision  # re-exported
from edge.inference.errors import InferenceError
from edge.inference.registry import ModelRegistry
from edge.inference.vision import Detection, DetectionPipeline, Detector
from edge.layer import DeviceContext
from edge.nats import subjects

if TYPE_CHECKING:
    from edge.policy.point import PolicyPoint

#: Finds a camera's latest-frame slot by driver name (None = the first camera); None if absent.
FrameFinder = Callable[[str | None], LatestFrame | None]

log = logging.getLogger("edge.inference.layer")

#: The event kind of detection sets: ``edge.<device>.evt.<entity>.detections`` (docs/subjects.md).
DETECTIONS = "detections"

class InferenceLayer:
    """Owns the model registry and the vision pipelines of the device.

    ``frames`` finds camera frame slots (the hardware layer's); the registry exists from
    construction, so other layers (the tools service, the wasm ``infer`` bridge) are given it
    before anything starts. ``policy`` is the device's policy point every pipeline's inference
    passes (None: the pipelines run their models directly).
    """

    name = "inference"

    def __init__(self, models: list[ModelSpec], vision: list[VisionSpec], *,
                 frames: FrameFinder | None = None, policy: PolicyPoint | None = None) -> None:
        self.models = models
        self.policy = policy
        self.vision = vision
        self.frames = frames
        self.registry = ModelRegistry()
        self.pipelines: list[DetectionPipeline] = []
        self.detectors: list[FaceDetector] = []  # each pipeline's own detector (before the policy)
        self.load_errors: dict[str, str] = {}
        self._error_at: dict[str, float] = {}  # monotonic time of each load error
        self.watched: list[str] = []  # object store buckets followed for new model versions
        self._started = False

    def camera(self) -> tuple[LatestFrame | None, Detector | None]:
        """The frames and detector of the first vision pipeline, else the first camera alone. The
        detector is the pipeline's own: whoever runs it decides it as its own principal (the
        tools' ``capture_frame`` as its caller)."""
        if self.pipelines:
            return self.pipelines[0].source, self.detectors[0]
        frames = self.frames(None) if self.frames is not None else None
        return frames, None

    async def start(self, ctx: DeviceContext) -> None:
        self.registry.use_store(ctx.js)
        backend = await self.registry.start()
        self._started = True
        errors = await self.registry.load_all(self.models)
        for name, err in errors.items():  # a model that fails is reported; the rest serve
            self._fail(name, err.message)
            log.error("model %s not loaded: %s", name, err.message)
        for bucket in sorted({m.bucket for m in self.models if m.object is not None}):
            try:  # a model that failed at start is fixed by a good version put later
                await self.registry.watch(bucket)
                self.watched.append(bucket)
            except InferenceError as err:
                self._fail(f"watch:{bucket}", err.message)
                log.error("model bucket %s not watched: %s", bucket, err.message)
        log.info("inference backend %s, %d models", backend.label, len(self.registry.names()))
        for spec in self.vision:
            frames = self.frames(spec.camera) if self.frames is not None else None
            if frames is None:
                self._fail(f"vision:{spec.entity}", f"no camera {spec.camera or ''} for vision on {spec.entity}")
                log.error("vision for %s: no camera driver %s", spec.entity, spec.camera or "")
                continue
            detector = FaceDetector(self.registry, spec.model)
            runs: Detector = detector if self.policy is None else PolicedDetector(
                detector, self.policy, entity=spec.entity, model=spec.model)
            pipeline = DetectionPipeline(frames, runs, self._sink(ctx, spec), name=f"{spec.entity}:{spec.model}")
            pipeline.start()
            self.pipelines.append(pipeline)
            self.detectors.append(detector)

    def _fail(self, name: str, message: str) -> None:
        self.load_errors[name] = message
        self._error_at[name] = time.monotonic()

    def _sink(self, ctx: DeviceContext, spec: VisionSpec) -> Callable[[Frame, list[Detection], float], Awaitable[None]]:
        subject = subjects.event(ctx.device, spec.entity, DETECTIONS)
        world = ctx.world

        async def on_detections(frame: Frame, detections: list[Detection], latency: float) -> None:
            kept = [d for d in detections if d.score >= spec.min_score]
            items = [
                {"label": d.label, "score": round(d.score, 3), "box": [round(v, 4) for v in d.box]} for d in kept
            ]
            if spec.entity not in world:
                world.spawn(spec.entity, "device")
            world.set(
                spec.entity, "detections", {"items": items, "count": len(items), "model": spec.model, "t": time.time()}
            )
            if kept:
                body = {"entity": spec.entity, "model": spec.model, "frame": frame.seq,
                        "captured": frame.t,  # time.monotonic() at capture, on this device
                        "latency_ms": round(latency * 1000, 2), "items": items}
                ctx.events.emit(subject, json.dumps(body).encode())

        return on_detections

    async def stop(self) -> None:
        for p in self.pipelines:
            await p.stop()
        self.pipelines.clear()
        self.detectors.clear()
        await self.registry.close()

    def status(self) -> dict[str, Any]:
        if not self._started:
            return {}
        now = time.monotonic()
        return {
            "backend": self.registry.backend.label if self.registry.backend else None,
            "models": {name: st.to_dict() for name, st in self.registry.status().items()},
            "pipelines": [{"name": p.name, **p.stats.to_dict()} for p in self.pipelines],
            "watched_buckets": list(self.watched),
            "errors": {name: {"error": msg, "ago_s": round(now - self._error_at.get(name, now), 1)}
                       for name, msg in self.load_errors.items()},
        }
