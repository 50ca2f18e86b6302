"""Where camera frames come from: the source seam and the sources that run anywhere.

Key components
- :class:`FrameSource`: a backend MUST implement ``open()``, ``read()`` and ``close()``; all
  three block and are called from a worker thread. ``read()`` returns an HxWx3 uint8 RGB array
  and raises ``OSError`` when the camera is gone. ``paced`` says whether ``read()`` itself waits
  for the next frame (real cameras) or the driver must pace it at ``fps`` (synthetic, files).
- :class:`SyntheticSource`: moving shapes at any size and rate; the frame number is written as
  32 bits (white = 1) in the top-left of row 0, so consumers can tell frames apart. With ``face``
  a drawn face: wandering over the frame, or, given ``pose`` (the vehicle's east, north, up in m
  and yaw in rad clockwise from north), a target standing at ``target`` (east, north m) seen by a
  downward camera on the vehicle (:class:`DownwardView`): where the face appears depends on where
  the vehicle is and how it is turned.
  ``fail_after`` makes the camera "disappear" after that many frames (fault injection).
- :class:`FileSource`: a ``.npy`` (``HxWx3`` or ``NxHxWx3``) or a directory of ``.npy``/images
  (images need Pillow), played in name order at ``fps``, looping.
- Real cameras: :mod:`drivers.camera.picam` (Raspberry Pi) and :mod:`drivers.camera.v4l2`.
"""

from __future__ import annotations

import errno
import math
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]

DEFAULT_WIDTH = 640  # pixels
DEFAULT_HEIGHT = 480  # pixels
DEFAULT_FPS = 15.0  # frames per second
SEQ_BITS = 32  # pixels of row 0 carrying the frame number
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


class FrameSource(ABC):
    paced = False

    def __init__(self, width: int, height: int, fps: float) -> None:
        if width < SEQ_BITS or height < 8 or fps <= 0:
            raise ValueError(f"bad camera geometry {width}x{height} @ {fps} fps")
        self.width = width
        self.height = height
        self.fps = fps

    @property
    @abstractmethod
    def where(self) -> str:
        """What the source is (device path, file, "synthetic")."""

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> Image: ...

    def close(self) -> None:
        """Release the camera; safe to call twice."""


Pose = Callable[[], tuple[float, float, float, float]]  # east, north, up (m), yaw (rad clockwise from north)
DEFAULT_FOV_DEG = 90.0  # horizontal field of view of the downward camera
MIN_VIEW_ALT_M = 1.0  # below this the view is computed as if from this height


@dataclass(frozen=True)
class DownwardView:
    """A camera looking straight down from the vehicle, image up = the vehicle's nose, image right
    = its right (so at yaw 0: image up = north, image right = east), pinhole with ``fov_deg``
    across the width."""

    width: int
    height: int
    fov_deg: float = DEFAULT_FOV_DEG

    def project(self, pose: tuple[float, float, float, float], east: float, north: float) -> tuple[float, float]:
        """Pixel ``(x, y)`` of the ground point (east, north) seen from ``pose``."""
        ve, vn, up, yaw = pose
        half_w = max(up, MIN_VIEW_ALT_M) * math.tan(math.radians(self.fov_deg) / 2)
        de, dn = east - ve, north - vn
        fwd = dn * math.cos(yaw) + de * math.sin(yaw)
        right = -dn * math.sin(yaw) + de * math.cos(yaw)
        px_per_m = (self.width / 2) / half_w
        return self.width / 2 + right * px_per_m, self.height / 2 - fwd * px_per_m


FACE_PERIOD_S = 30.0  # the synthetic face target comes and goes: seconds per cycle
FACE_ON_S = 20.0  # seconds of each cycle in which it is visible


class SyntheticSource(FrameSource):
    """Moving, bouncing rectangles and discs over a gradient."""

    def __init__(self, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
                 fps: float = DEFAULT_FPS, *, fail_after: int | None = None, seed: int = 7,
                 face: bool = False, pose: Pose | None = None, target: tuple[float, float] = (0.0, 0.0),
                 fov_deg: float = DEFAULT_FOV_DEG) -> None:
        super().__init__(width, height, fps)
        self.pose = pose
        self.target = target
        self.view = DownwardView(width, height, fov_deg)
        self.face_at: tuple[float, float] | None = None  # pixel centre of the face in the last frame
        self.fail_after = fail_after
        self.seed = seed
        self.face = face  # a drawn face wandering over the frame, visible FACE_ON_S of every FACE_PERIOD_S
        self._sprite: tuple[Image, npt.NDArray[np.bool_]] | None = None
        self.frames = 0
        self._bg: Image | None = None
        self._buf: Image | None = None
        self._shapes: list[list[float]] = []
        self._disc: npt.NDArray[np.bool_] | None = None

    @property
    def where(self) -> str:
        return "synthetic"

    def open(self) -> None:
        h, w = self.height, self.width
        y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
        x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
        bg = np.empty((h, w, 3), np.uint8)
        bg[..., 0] = (x * 0.5 + 30).astype(np.uint8)
        bg[..., 1] = (y * 0.5 + 30).astype(np.uint8)
        bg[..., 2] = 90
        self._bg = bg
        self._buf = np.empty_like(bg)
        rng = random.Random(self.seed)  # not numpy.random: it costs ~2 MB of RSS for four shapes
        size = max(8, min(h, w) // 6)
        self._shapes = [
            [float(rng.uniform(0, w - size)), float(rng.uniform(0, h - size)),
             float(rng.uniform(-6, 6)) or 3.0, float(rng.uniform(-6, 6)) or 2.0, float(size), float(k)]
            for k in range(4)
        ]
        r = size / 2
        yy, xx = np.mgrid[0:size, 0:size]
        self._disc = (yy - r + 0.5) ** 2 + (xx - r + 0.5) ** 2 <= r * r
        if self.face:
            from drivers.camera.pattern import face_sprite

            self._sprite = face_sprite(min(h, w) / 6)
        self.frames = 0

    def read(self) -> Image:
        if self._bg is None or self._buf is None or self._disc is None:
            raise OSError(errno.ENODEV, "synthetic camera is not open")
        if self.fail_after is not None and self.frames >= self.fail_after:
            raise OSError(errno.ENODEV, "camera disconnected (synthetic fault)")
        img = self._buf
        np.copyto(img, self._bg)
        colors = ((230, 60, 60), (60, 220, 80), (250, 220, 40), (240, 240, 240))
        for s in self._shapes:
            x, y, vx, vy, size, k = s
            x += vx
            y += vy
            if not 0 <= x <= self.width - size:
                vx, x = -vx, min(max(x, 0.0), self.width - size)
            if not 0 <= y <= self.height - size:
                vy, y = -vy, min(max(y, 0.0), self.height - size)
            s[0], s[1], s[2], s[3] = x, y, vx, vy
            xi, yi, n = int(x), int(y), int(size)
            region = img[yi:yi + n, xi:xi + n]
            if int(k) % 2:
                region[self._disc] = colors[int(k)]
            else:
                region[:] = colors[int(k)]
        if self._sprite is not None:
            self._paste_face(img)
        self.frames += 1
        bits = (self.frames >> np.arange(SEQ_BITS)) & 1
        img[0, :SEQ_BITS] = (bits * 255).astype(np.uint8)[:, None]
        return img.copy()


    def _paste_face(self, img: Image) -> None:
        assert self._sprite is not None
        t = self.frames / max(self.fps, 1.0)
        patch, mask = self._sprite
        n = patch.shape[0]
        self.face_at = None
        if n >= min(self.width, self.height):
            return
        if self.pose is not None:
            cx, cy = self.view.project(self.pose(), *self.target)
            x, y = round(cx - n / 2), round(cy - n / 2)
        else:
            if t % FACE_PERIOD_S > FACE_ON_S:
                return
            x = int((self.width - n) * (0.5 + 0.45 * math.sin(t * 0.5)))
            y = int((self.height - n) * (0.5 + 0.4 * math.sin(t * 0.3 + 1.0)))
        x0, y0, x1, y1 = max(0, x), max(0, y), min(self.width, x + n), min(self.height, y + n)
        if x0 >= x1 or y0 >= y1:
            return  # out of view
        sub = mask[y0 - y:y1 - y, x0 - x:x1 - x]
        img[y0:y1, x0:x1][sub] = patch[y0 - y:y1 - y, x0 - x:x1 - x][sub]
        self.face_at = (x + n / 2, y + n / 2)


def frame_number(image: Image) -> int:
    """Decode the frame number a :class:`SyntheticSource` wrote into row 0."""
    bits = image[0, :SEQ_BITS, 0] > 127
    return int(np.sum(bits.astype(np.int64) << np.arange(SEQ_BITS)))


class FileSource(FrameSource):
    """Frames from a ``.npy`` file or a directory of ``.npy``/image files, looping."""

    def __init__(self, path: str | os.PathLike[str], fps: float = DEFAULT_FPS, *,
                 loop: bool = True) -> None:
        super().__init__(DEFAULT_WIDTH, DEFAULT_HEIGHT, fps)
        self.path = Path(path)
        self.loop = loop
        self._files: list[Path] = []
        self._array: npt.NDArray[np.uint8] | None = None
        self._index = 0

    @property
    def where(self) -> str:
        return str(self.path)

    def open(self) -> None:
        if not self.path.exists():
            raise FileNotFoundError(errno.ENOENT, "no such camera file or directory", str(self.path))
        self._index = 0
        if self.path.is_dir():
            self._files = sorted(p for p in self.path.iterdir()
                                 if p.suffix.lower() in (".npy", *IMAGE_SUFFIXES))
            if not self._files:
                raise FileNotFoundError(errno.ENOENT, "no .npy or image files", str(self.path))
            first = self._load(self._files[0])
        else:
            arr = np.load(self.path, mmap_mode="r")
            self._array = arr if arr.ndim == 4 else arr[None]
            first = np.asarray(self._array[0])
        self._check(first)
        self.height, self.width = int(first.shape[0]), int(first.shape[1])

    def _check(self, img: npt.NDArray[np.generic]) -> None:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"{self.path}: frames must be HxWx3 uint8, got {img.shape} {img.dtype}")

    def _load(self, p: Path) -> Image:
        if p.suffix.lower() == ".npy":
            return np.asarray(np.load(p), dtype=np.uint8)
        try:
            from PIL import Image as PILImage  # optional: only for image files
        except ImportError as exc:
            raise OSError(f"reading {p.suffix} files needs Pillow; use .npy frames instead") from exc
        with PILImage.open(p) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)

    def read(self) -> Image:
        n = len(self._files) if self._array is None else len(self._array)
        if self._index >= n:
            if not self.loop:
                raise OSError(errno.ENODATA, f"end of {self.path}")
            self._index = 0
        i = self._index
        self._index += 1
        img = self._load(self._files[i]) if self._array is None else np.array(self._array[i])
        self._check(img)
        return img

    def close(self) -> None:
        self._array = None
