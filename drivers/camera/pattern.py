"""A drawn cartoon face (filled ellipses) that BlazeFace short range detects with score > 0.8.

Used by the synthetic camera's ``face`` option (the demo's moving target) and by the tests.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

BACKGROUND = (90, 110, 130)
SKIN = (224, 172, 140)
Image = npt.NDArray[np.uint8]


def _ellipse(img: Image, cx: float, cy: float, rx: float, ry: float, color: tuple[int, int, int]) -> None:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    img[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = color


def draw_face(img: Image, cx: float, cy: float, s: float) -> None:
    """Draw a frontal face centred at (cx, cy) px; ``s`` is roughly half the face width."""
    _ellipse(img, cx, cy + 0.1 * s, 0.8 * s, 1.05 * s, SKIN)
    _ellipse(img, cx, cy - 0.8 * s, 0.85 * s, 0.45 * s, (60, 40, 30))  # hair
    for side in (-1, 1):
        ex = cx + side * 0.33 * s
        _ellipse(img, ex, cy - 0.12 * s, 0.17 * s, 0.08 * s, (250, 250, 250))
        _ellipse(img, ex, cy - 0.12 * s, 0.07 * s, 0.07 * s, (50, 30, 20))
        _ellipse(img, ex, cy - 0.3 * s, 0.2 * s, 0.04 * s, (70, 45, 30))  # eyebrow
        _ellipse(img, cx + side * 0.82 * s, cy + 0.05 * s, 0.1 * s, 0.22 * s, (210, 160, 130))
    _ellipse(img, cx, cy + 0.2 * s, 0.09 * s, 0.18 * s, (200, 145, 115))  # nose
    _ellipse(img, cx, cy + 0.55 * s, 0.28 * s, 0.08 * s, (170, 70, 70))  # mouth


def face_image(
    width: int = 640, height: int = 480, faces: tuple[tuple[float, float, float], ...] = ((320, 240, 100),)
) -> Image:
    """HxWx3 uint8 RGB with the given faces (cx, cy, s) in pixels."""
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BACKGROUND
    for cx, cy, s in faces:
        draw_face(img, cx, cy, s)
    return img


def face_sprite(s: float) -> tuple[Image, npt.NDArray[np.bool_]]:
    """A face drawn on a square patch and the mask of its drawn pixels, for pasting into frames."""
    size = int(2.4 * s)
    patch = np.zeros((size, size, 3), np.uint8)
    draw_face(patch, size / 2, size / 2, s)
    mask: npt.NDArray[np.bool_] = np.asarray(patch.any(axis=2), dtype=bool)
    return patch, mask
