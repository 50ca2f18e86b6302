"""The synthetic camera's view follows the vehicle: the real face model finds the target where the
vehicle's position and heading put it."""

from __future__ import annotations

import math

import pytest

from drivers.camera.sources import DownwardView, SyntheticSource
from edge.inference.backend import Backend
from edge.inference.blazeface import FaceDetector, face_model_path
from edge.inference.model import Model

pytestmark = pytest.mark.timeout(30)

W, H = 320, 240


def test_projection_geometry() -> None:
    view = DownwardView(W, H, fov_deg=90.0)
    assert view.project((0.0, 0.0, 10.0, 0.0), 0.0, 0.0) == (160.0, 120.0)  # straight below: centre
    x, y = view.project((0.0, 0.0, 10.0, 0.0), 2.0, 0.0)  # 2 m east, heading north: right of centre
    assert math.isclose(x, 160 + 2.0 / 10.0 * 160) and math.isclose(y, 120.0)
    x, y = view.project((0.0, 0.0, 10.0, 0.0), 0.0, 2.0)  # 2 m north (ahead): above centre
    assert math.isclose(x, 160.0) and math.isclose(y, 120 - 32.0)
    x, y = view.project((0.0, 0.0, 10.0, math.pi / 2), 0.0, 2.0)  # facing east, target north: on the left
    assert math.isclose(x, 160 - 32.0) and math.isclose(y, 120.0, abs_tol=1e-9)
    x, _ = view.project((0.0, 0.0, 20.0, 0.0), 2.0, 0.0)  # higher: a smaller offset
    assert math.isclose(x, 160 + 16.0)


@pytest.fixture(scope="module")
def detector(backend: Backend) -> FaceDetector:
    return FaceDetector(Model.load("face", face_model_path().read_bytes(), backend))


async def _centre(detector: FaceDetector, pose: tuple[float, float, float, float]) -> tuple[float, float]:
    cam = SyntheticSource(W, H, 15.0, face=True, pose=lambda: pose, target=(6.0, 4.0))
    cam.open()
    dets = await detector.detect(cam.read())
    assert dets, f"the face model found no face from {pose}"
    x0, y0, x1, y1 = dets[0].box
    return (x0 + x1) / 2, (y0 + y1) / 2


@pytest.mark.parametrize(("pose", "shift"), [
    ((4.0, 4.0, 10.0, 0.0), (2 / 10 / 2, 0.0)),  # 2 m west of the target: the face is right of centre
    ((6.0, 5.5, 10.0, 0.0), (0.0, 1.5 / 10 * (W / 2) / H)),  # 1.5 m north of it: below centre
    ((6.0, 2.0, 10.0, math.pi / 2), (-2 / 10 / 2, 0.0)),  # 2 m south, facing east: ahead-left -> left
    ((8.0, 4.0, 20.0, 0.0), (-2 / 20 / 2, 0.0)),  # 2 m east of it, twice as high: half the shift, left
])
async def test_face_appears_where_the_vehicle_puts_it(detector: FaceDetector, pose: tuple[float, float, float, float],
                                                      shift: tuple[float, float]) -> None:
    cx, cy = await _centre(detector, (6.0, 4.0, 10.0, 0.0))  # right above it: the reference
    assert abs(cx - 0.5) < 0.03 and abs(cy - 0.5) < 0.06  # (the box sits a little below the sprite centre)
    x, y = await _centre(detector, pose)
    assert abs((x - cx) - shift[0]) < 0.02 and abs((y - cy) - shift[1]) < 0.02


def test_face_out_of_view_is_not_drawn() -> None:
    cam = SyntheticSource(W, H, 15.0, face=True, pose=lambda: (60.0, 0.0, 5.0, 0.0), target=(0.0, 0.0))
    cam.open()
    cam.read()
    assert cam.face_at is None
