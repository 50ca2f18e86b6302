"""A vision pipeline (the real face model, real frames) over a limit of the policy point: the
frames over a quota are denied with the reason, counted by the pipeline and the meter, raise a
denial event, and pass again once the window restarts; a denied frame never runs the model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt
import pytest

from drivers.camera.frames import Frame, LatestFrame
from drivers.camera.pattern import face_image
from edge.inference.admission import PolicedDetector
from edge.inference.blazeface import FaceDetector, face_model_path
from edge.inference.errors import InferenceError
from edge.inference.registry import ModelRegistry, ModelSpec
from edge.inference.vision import Detection, DetectionPipeline
from edge.policy.point import PolicyPoint
from edge.policy.rules import parse_policy
from rigs.events import ListEvents as Events, StepClock as Clock

pytestmark = pytest.mark.timeout(60)

DEV = "dev1"


class Counting:
    """The real detector, counting its runs."""

    def __init__(self, inner: FaceDetector) -> None:
        self.inner = inner
        self.runs = 0

    async def detect(self, image: npt.NDArray[np.uint8]) -> list[Detection]:
        self.runs += 1
        return await self.inner.detect(image)


@pytest.fixture
async def registry() -> AsyncIterator[ModelRegistry]:
    reg = ModelRegistry()
    await reg.start()
    await reg.load(ModelSpec(name="face", path=str(face_model_path())))
    try:
        yield reg
    finally:
        await reg.close()


async def test_a_pipeline_over_its_quota_is_denied_counted_reported_and_recovers(registry: ModelRegistry) -> None:
    events, clock = Events(), Clock()
    point = PolicyPoint(DEV, events=events, clock=clock)
    point.load(parse_policy({"limit": [{"name": "cam-frames", "principal": "device:cam", "action": "infer",
                                        "resource": "face", "quota_messages": 3, "window": 10.0}]}, DEV))
    counting = Counting(FaceDetector(registry, "face"))
    slot = LatestFrame()
    seen: list[int] = []
    pipe = DetectionPipeline(slot, PolicedDetector(counting, point, entity="cam", model="face"),
                             lambda frame, dets, latency: seen.append(len(dets)), name="cam:face")
    pipe.start()
    image = face_image(320, 240, ((160, 120, 60),))
    try:
        async def frame(seq: int) -> None:
            await slot.put(Frame(seq=seq, t=time.monotonic(), image=image, source="test"))
            async with asyncio.timeout(10):
                while pipe.stats.processed + pipe.stats.denied < seq:
                    await asyncio.sleep(0.005)

        for seq in range(1, 6):
            await frame(seq)
        assert (pipe.stats.processed, pipe.stats.denied, counting.runs) == (3, 2, 3)  # the model ran 3 times
        assert seen == [1, 1, 1] and pipe.stats.errors == 0 and pipe.stats.last_error is None
        u = point.meter.of("device", "cam")
        assert u.messages == 5 and u.denied == 2 and u.bytes == 5 * image.nbytes and u.infer_s > 0
        (subject, body), = events.out  # one event for the key; the next carries the count
        assert subject == f"edge.{DEV}.evt.policy.denied"
        assert (body["principal"], body["action"], body["resource"], body["rule"]) == (
            "device:cam", "infer", "face", "cam-frames")
        assert "quota of 3 messages per 10 s used" in body["reason"]
        clock.t += 10.0  # the window restarts
        await frame(6)
        assert (pipe.stats.processed, counting.runs) == (4, 4) and seen[-1] == 1
    finally:
        await pipe.stop()


async def test_a_denied_frame_raises_denied_naming_the_rule_and_the_off_switch_only_meters(
        registry: ModelRegistry) -> None:
    image = face_image(320, 240, ((160, 120, 60),))
    point = PolicyPoint(DEV)
    detector = PolicedDetector(FaceDetector(registry, "face"), point, entity="cam", model="face")
    assert len(await detector.detect(image)) == 1  # no policy: allowed (rule "off"), metered
    assert point.meter.of("device", "cam").messages == 1 and point.meter.of("device", "cam").infer_s > 0
    point.load(parse_policy({"rule": [{"name": "no-face", "effect": "deny", "principal": "device:*",
                                       "action": "infer", "resource": "face"}]}, DEV))
    with pytest.raises(InferenceError) as info:
        await detector.detect(image)
    assert info.value.reason == "denied" and info.value.model == "face"
    assert "rule 'no-face'" in info.value.message and "vision pipeline of 'cam'" in info.value.message
    other = PolicedDetector(FaceDetector(registry, "face"), point, entity="porch", model="face")
    with pytest.raises(InferenceError):
        await other.detect(image)
    assert point.meter.of("device", "porch").denied == 1
