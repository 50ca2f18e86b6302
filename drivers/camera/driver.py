"""The camera driver: frames into a :class:`~drivers.camera.frames.LatestFrame`, metadata into
the ``camera`` component, and an optional small JPEG snapshot on a subject.

Key components
- :class:`CameraDriver`: reads a :class:`~drivers.camera.sources.FrameSource` in a worker thread
  (paced at ``fps`` for sources that do not pace themselves), wraps each image in a
  :class:`~drivers.camera.frames.Frame` and ``put``s it into ``frames`` (latest wins: a slow
  consumer never makes memory grow). Every frame updates ``camera{width, height, fps, seq}``
  (``fps`` measured); telemetry is published at ``telemetry_hz``.
- Snapshots: every ``snapshot_s`` seconds (0 = off) a ``snapshot_width``-wide JPEG is published as
  raw bytes on ``edge.<device>.media.<entity>.<name>``. JPEG encoding uses Pillow if it is
  installed; without Pillow snapshots are skipped (logged once, ``snapshots_skipped`` counts them).
- A source whose ``read()`` raises ``OSError`` (camera unplugged) fails the driver; the supervisor
  reopens it with backoff.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from drivers.base import Driver
from drivers.camera.frames import Frame, LatestFrame
from drivers.camera.sources import (
    DEFAULT_FPS,
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    FileSource,
    FrameSource,
    SyntheticSource,
)
from drivers.config import Table

DEFAULT_TELEMETRY_HZ = 1.0  # camera component publishes per second
DEFAULT_SNAPSHOT_S = 0.0  # seconds between snapshots; 0 = off
DEFAULT_SNAPSHOT_WIDTH = 160  # pixels
DEFAULT_JPEG_QUALITY = 70


def media_subject(device: str, entity: str, name: str) -> str:
    """Raw (non-JSON) media such as JPEG snapshots."""
    return f"edge.{device}.media.{entity}.{name}"


def encode_jpeg(image: np.ndarray[Any, Any], width: int, quality: int) -> bytes | None:
    """A JPEG of ``image`` scaled to ``width`` pixels wide, or None when Pillow is missing."""
    try:
        from PIL import Image
    except ImportError:
        return None
    h, w = image.shape[:2]
    height = max(1, round(h * width / w))
    im = Image.fromarray(image).resize((width, height))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=quality)
    return out.getvalue()


class CameraDriver(Driver):
    kind: ClassVar[str] = "camera"

    def __init__(self, name: str, entity: str, *, source: FrameSource,
                 frames: LatestFrame | None = None, telemetry_hz: float = DEFAULT_TELEMETRY_HZ,
                 snapshot_s: float = DEFAULT_SNAPSHOT_S, snapshot_width: int = DEFAULT_SNAPSHOT_WIDTH,
                 jpeg_quality: int = DEFAULT_JPEG_QUALITY, publish_telemetry: bool = True) -> None:
        super().__init__(name, entity, publish_telemetry=publish_telemetry)
        self.source = source
        self.frames = frames if frames is not None else LatestFrame()
        self.telemetry_hz = telemetry_hz
        self.snapshot_s = snapshot_s
        self.snapshot_width = snapshot_width
        self.jpeg_quality = jpeg_quality
        self.seq = 0
        self.snapshots = 0
        self.snapshots_skipped = 0
        self._pillow_warned = False

    @property
    def where(self) -> str:
        return self.source.where

    def frame_slot(self) -> LatestFrame:
        return self.frames

    async def _open(self) -> None:
        await asyncio.to_thread(self.source.open)

    async def _close(self) -> None:
        await asyncio.to_thread(self.source.close)

    async def _run(self) -> None:
        src = self.source
        period = 1.0 / src.fps
        next_t = time.monotonic()
        next_tele = next_t
        next_snap = next_t + self.snapshot_s
        while True:
            image = await asyncio.to_thread(src.read)
            now = time.monotonic()
            self.seq += 1
            await self.frames.put(Frame(self.seq, now, image, source=self.name))
            self._sample()
            publish = now >= next_tele
            if publish:
                next_tele = now + 1.0 / self.telemetry_hz
            await self._emit("camera", {
                "width": int(image.shape[1]), "height": int(image.shape[0]),
                "fps": round(self.health().rate_hz, 2), "seq": self.seq,
            }, publish=publish)
            if self.snapshot_s > 0 and now >= next_snap:
                next_snap = now + self.snapshot_s
                await self._snapshot(image)
            if not src.paced:
                next_t += period
                delay = next_t - time.monotonic()
                if delay < -period:
                    next_t = time.monotonic()
                await asyncio.sleep(max(0.0, delay))

    async def _snapshot(self, image: np.ndarray[Any, Any]) -> None:
        jpeg = await asyncio.to_thread(encode_jpeg, image, self.snapshot_width, self.jpeg_quality)
        if jpeg is None:
            self.snapshots_skipped += 1
            if not self._pillow_warned:
                self._pillow_warned = True
                self.log.warning("camera %s: snapshots need Pillow, which is not installed; skipped",
                                 self.name)
            return
        self.snapshots += 1
        ctx = self.ctx
        await ctx.publish(media_subject(ctx.device, self.entity, self.name), jpeg)


def _source(t: Table) -> FrameSource:
    kind = t.choice("source", ("synthetic", "file", "picamera2", "v4l2"), "synthetic")
    width = t.integer("width", DEFAULT_WIDTH, lo=32, hi=8192)
    height = t.integer("height", DEFAULT_HEIGHT, lo=8, hi=8192)
    fps = t.number("fps", DEFAULT_FPS, lo=0.1, hi=240.0)
    if t.emulated and kind not in ("synthetic", "file"):
        raise t.error("source", f"backend 'emulated' needs source 'synthetic' or 'file', not {kind!r}")
    if kind == "synthetic":
        return SyntheticSource(width, height, fps, face=t.flag("face", False))
    if kind == "file":
        return FileSource(str(t.path("path", None) or _missing(t, "path")), fps)
    if kind == "picamera2":
        from drivers.camera.picam import Picamera2Source

        return Picamera2Source(width, height, fps, camera_num=t.integer("camera_num", 0, lo=0))
    from drivers.camera.v4l2 import V4L2Source

    return V4L2Source(str(t.path("device", Path("/dev/video0"))), width, height, fps)


def _missing(t: Table, key: str) -> str:
    raise t.error(key, f"missing required key '{key}' for this camera source")


def from_config(t: Table) -> CameraDriver:
    return CameraDriver(
        t.name, t.entity, source=_source(t),
        telemetry_hz=t.number("telemetry_hz", DEFAULT_TELEMETRY_HZ, lo=0.01, hi=100.0),
        snapshot_s=t.number("snapshot_s", DEFAULT_SNAPSHOT_S, lo=0.0),
        snapshot_width=t.integer("snapshot_width", DEFAULT_SNAPSHOT_WIDTH, lo=16, hi=1920),
        jpeg_quality=t.integer("jpeg_quality", DEFAULT_JPEG_QUALITY, lo=1, hi=95),
        publish_telemetry=t.publish,
    )
