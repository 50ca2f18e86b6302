"""USB / CSI cameras through Video4Linux2 (``/dev/videoN``), e.g. on a Jetson.

Uses OpenCV (``opencv-python-headless``), imported when the source is opened. Not exercised by
the test suite on machines without a camera; the device check and the error messages are.
``read()`` blocks until the driver delivers a frame (self-paced).
"""

from __future__ import annotations

import errno
import os
from typing import Any

import numpy as np

from drivers.camera.sources import DEFAULT_FPS, DEFAULT_HEIGHT, DEFAULT_WIDTH, FrameSource, Image


class V4L2Source(FrameSource):
    paced = True

    def __init__(self, device: str = "/dev/video0", width: int = DEFAULT_WIDTH,
                 height: int = DEFAULT_HEIGHT, fps: float = DEFAULT_FPS) -> None:
        super().__init__(width, height, fps)
        self.device = device
        self._cap: Any = None

    @property
    def where(self) -> str:
        return self.device

    def open(self) -> None:
        if not os.path.exists(self.device):
            raise FileNotFoundError(errno.ENOENT, "no such video device", self.device)
        try:
            import cv2  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:
            raise OSError("the V4L2 camera source needs opencv-python-headless") from exc
        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not cap.isOpened():
            raise OSError(errno.EIO, "could not open video device", self.device)
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or self.width
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or self.height
        self._cap = cap

    def read(self) -> Image:
        if self._cap is None:
            raise OSError("V4L2 source is not open")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            if not os.path.exists(self.device):
                raise FileNotFoundError(errno.ENODEV, "video device disappeared", self.device)
            raise OSError(errno.EIO, "frame capture failed", self.device)
        return np.ascontiguousarray(bgr[..., ::-1], dtype=np.uint8)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
