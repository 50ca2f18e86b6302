"""Vision helpers and the frame -> detections pipeline.

* :func:`letterbox` - resize an HxWx3 image into a square model input keeping the aspect ratio
  (numpy only: nearest or bilinear), padding the rest;
* :func:`nms` - plain or weighted non-maximum suppression on normalised boxes;
* :class:`DetectionPipeline` - takes the newest frame from a
  :class:`~drivers.camera.frames.LatestFrame` whenever the detector is idle (frames that arrive
  meanwhile are dropped and counted, never queued) and hands ``(frame, detections, latency_s)`` to a
  sink. A frame whose inference the device's policy point denies (the detector raises
  :class:`~edge.inference.errors.InferenceError` with reason ``denied``,
  :mod:`edge.inference.admission`) is counted as ``denied`` and skipped.

A detector (see :class:`Detector`) must implement ``async detect(image) -> list[Detection]`` with
boxes and keypoints normalised to the image it was given (0..1, origin top-left).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from drivers.camera.frames import Frame, LatestFrame
from edge.inference.errors import InferenceError
from edge.tasks import cancel_and_wait

log = logging.getLogger("edge.inference.vision")

PAD_VALUE = 0
"""Pixel value (uint8) of the letterbox bars."""

LATENCY_WINDOW = 1024
"""Recent frame-to-detection latencies kept for p50 / p99."""

Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Detection:
    """One object: ``box`` is (x0, y0, x1, y1) normalised to the frame; keypoints (x, y) too."""

    label: str
    score: float
    box: Box
    keypoints: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Where the resized image sits in the square model input (pixels of the model input)."""

    size: int
    offset_x: int
    offset_y: int
    width: int
    height: int

    def to_image(self, xy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map normalised model-input coordinates (..., 2) to normalised image coordinates."""
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] * self.size - self.offset_x) / self.width
        out[..., 1] = (xy[..., 1] * self.size - self.offset_y) / self.height
        return out


def resize(image: npt.NDArray[np.uint8], width: int, height: int,
           method: Literal["nearest", "bilinear"] = "nearest") -> npt.NDArray[np.uint8]:
    """Resize HxWxC uint8 with pixel-centre sampling (numpy only)."""
    h, w = image.shape[:2]
    ys = (np.arange(height, dtype=np.float32) + 0.5) * (h / height) - 0.5
    xs = (np.arange(width, dtype=np.float32) + 0.5) * (w / width) - 0.5
    if method == "nearest":
        yi = np.clip(np.rint(ys), 0, h - 1).astype(np.intp)
        xi = np.clip(np.rint(xs), 0, w - 1).astype(np.intp)
        nearest: npt.NDArray[np.uint8] = image[yi[:, None], xi[None, :]]
        return nearest
    ys = np.clip(ys, 0, h - 1)
    xs = np.clip(xs, 0, w - 1)
    y0 = np.floor(ys).astype(np.intp)
    x0 = np.floor(xs).astype(np.intp)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    img = image.astype(np.float32)
    top = img[y0[:, None], x0[None, :]] * (1 - fx) + img[y0[:, None], x1[None, :]] * fx
    bot = img[y1[:, None], x0[None, :]] * (1 - fx) + img[y1[:, None], x1[None, :]] * fx
    out: npt.NDArray[np.uint8] = np.clip(np.rint(top * (1 - fy) + bot * fy), 0, 255).astype(
        np.uint8)
    return out


def letterbox(image: npt.NDArray[np.uint8], size: int,
              method: Literal["nearest", "bilinear"] = "nearest",
              ) -> tuple[npt.NDArray[np.uint8], Letterbox]:
    """Fit ``image`` (HxWx3 uint8) into ``size`` x ``size`` keeping its aspect ratio, centred."""
    h, w = image.shape[:2]
    scale = min(size / w, size / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    ox, oy = (size - nw) // 2, (size - nh) // 2
    canvas = np.full((size, size, image.shape[2]), PAD_VALUE, dtype=np.uint8)
    canvas[oy:oy + nh, ox:ox + nw] = resize(image, nw, nh, method)
    return canvas, Letterbox(size, ox, oy, nw, nh)


def iou(box: npt.NDArray[np.float32], boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Intersection over union of one (4,) box against (N, 4) boxes, (x0, y0, x1, y1)."""
    ix0 = np.maximum(box[0], boxes[:, 0])
    iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2])
    iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    out: npt.NDArray[np.float32] = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0
                                            ).astype(np.float32)
    return out


def nms(boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32],
        keypoints: npt.NDArray[np.float32] | None = None, *, iou_threshold: float,
        weighted: bool = True, max_detections: int | None = None,
        ) -> list[tuple[float, npt.NDArray[np.float32], npt.NDArray[np.float32] | None]]:
    """Non-maximum suppression. Returns ``(score, box, keypoints)`` best first.

    Plain: keep the best box, drop those overlapping it by more than ``iou_threshold``, repeat.
    Weighted: the kept box (and keypoints) is the score-weighted mean of its overlapping cluster;
    its score stays the best score of the cluster.
    """
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    kps = keypoints[order] if keypoints is not None else None
    out: list[tuple[float, npt.NDArray[np.float32], npt.NDArray[np.float32] | None]] = []
    alive = np.ones(len(scores), dtype=bool)
    for i in range(len(scores)):
        if not alive[i]:
            continue
        idx = np.nonzero(alive)[0]
        overlap = iou(boxes[i], boxes[idx]) > iou_threshold
        overlap[idx == i] = True
        cluster = idx[overlap]
        alive[cluster] = False
        if weighted and len(cluster) > 1:
            w = scores[cluster] / scores[cluster].sum()
            box = (boxes[cluster] * w[:, None]).sum(axis=0).astype(np.float32)
            kp = (kps[cluster] * w[:, None, None]).sum(axis=0).astype(np.float32) \
                if kps is not None else None
        else:
            box = boxes[i]
            kp = kps[i] if kps is not None else None
        out.append((float(scores[i]), box, kp))
        if max_detections is not None and len(out) >= max_detections:
            break
    return out


class Detector(Protocol):
    """What :class:`DetectionPipeline` drives."""

    async def detect(self, image: npt.NDArray[np.uint8]) -> list[Detection]: ...


@runtime_checkable
class ModelDetector(Detector, Protocol):
    """A detector that names the registry model it runs (``name``; the resource of its
    ``infer`` decisions, docs/policy.md)."""

    name: str


Sink = Callable[[Frame, list[Detection], float], Awaitable[None] | None]
"""``on_detections(frame, detections, latency_s)``; plain or async function."""


class PipelineStats:
    """Counters of one pipeline; latencies are capture -> detections, in seconds."""

    def __init__(self) -> None:
        self.processed = 0
        self.dropped = 0
        self.errors = 0
        self.sink_errors = 0
        self.denied = 0  # frames whose inference the policy point denied
        self.last_error: str | None = None
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies:
            return None
        return float(np.percentile(np.fromiter(self.latencies, dtype=np.float64), q)) * 1e3

    def to_dict(self) -> dict[str, Any]:
        return {"processed": self.processed, "dropped": self.dropped, "errors": self.errors,
                "sink_errors": self.sink_errors, "denied": self.denied, "last_error": self.last_error,
                "p50_ms": self.percentile_ms(50), "p99_ms": self.percentile_ms(99)}


class DetectionPipeline:
    """Newest frame -> detector -> sink, one frame at a time; drops while busy, never queues.

    Frame ``seq`` numbers are assumed to grow by one per captured frame: a gap between two frames
    this pipeline took is counted as dropped.
    """

    def __init__(self, source: LatestFrame, detector: Detector, sink: Sink, *,
                 name: str = "detections") -> None:
        self.source = source
        self.detector = detector
        self.sink = sink
        self.name = name
        self.stats = PipelineStats()
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Process frames until cancelled. Detector and sink errors are counted, not fatal."""
        last_seq: int | None = None
        while True:
            frame = await self.source.get_newer(-1 if last_seq is None else last_seq)
            if last_seq is not None:
                self.stats.dropped += max(0, frame.seq - last_seq - 1)
            last_seq = frame.seq
            try:
                detections = await self.detector.detect(frame.image)
            except InferenceError as exc:
                if exc.reason == "denied":  # the policy point counted, recorded and logged it
                    self.stats.denied += 1
                    continue
                self._failed(frame, exc)
                continue
            except Exception as exc:  # noqa: BLE001  a bad frame must not stop the pipeline
                self._failed(frame, exc)
                continue
            latency = time.monotonic() - frame.t
            self.stats.processed += 1
            self.stats.latencies.append(latency)
            try:
                result = self.sink(frame, detections, latency)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001  the sink is someone else's code
                self.stats.sink_errors += 1
                self.stats.last_error = str(exc)
                log.warning("pipeline %s: sink failed on frame %d: %s", self.name, frame.seq, exc)

    def _failed(self, frame: Frame, exc: Exception) -> None:
        self.stats.errors += 1
        self.stats.last_error = str(exc)
        log.warning("pipeline %s: frame %d failed: %s", self.name, frame.seq, exc)

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"pipeline-{self.name}")
        return self._task

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None


def to_pixels(d: Detection, width: int, height: int) -> tuple[int, int, int, int]:
    """A detection box in pixels of a ``width`` x ``height`` image."""
    x0, y0, x1, y1 = d.box
    return (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))


def boxes_of(detections: Sequence[Detection]) -> npt.NDArray[np.float32]:
    return np.array([d.box for d in detections], dtype=np.float32).reshape(-1, 4)
