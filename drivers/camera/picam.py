"""Raspberry Pi camera (libcamera) through picamera2.

picamera2 needs the libcamera Python bindings, which exist only on Raspberry Pi OS, so it is
imported when the source is opened, never at import time. Frames are captured as ``RGB888``
(which libcamera lays out as B, G, R in memory) and returned as RGB. ``read()`` blocks until the
next frame: the source is self-paced at the configured ``FrameRate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from drivers.camera.sources import DEFAULT_FPS, DEFAULT_HEIGHT, DEFAULT_WIDTH, FrameSource, Image


class Picamera2Source(FrameSource):
    paced = True

    def __init__(self, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
                 fps: float = DEFAULT_FPS, *, camera_num: int = 0) -> None:
        super().__init__(width, height, fps)
        self.camera_num = camera_num
        self._cam: Any = None

    @property
    def where(self) -> str:
        return f"picamera2:{self.camera_num}"

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise FileNotFoundError(
                "picamera2 is not available (it needs Raspberry Pi OS's libcamera bindings)"
            ) from exc
        cam = Picamera2(self.camera_num)
        config = cam.create_video_configuration(
            main={"size": (self.width, self.height), "format": "RGB888"},
            controls={"FrameRate": self.fps},
        )
        cam.configure(config)
        cam.start()
        self._cam = cam

    def read(self) -> Image:
        if self._cam is None:
            raise OSError("picamera2 source is not open")
        bgr = self._cam.capture_array("main")
        return np.ascontiguousarray(bgr[..., ::-1], dtype=np.uint8)

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            cam.stop()
            cam.close()
