"""Camera driver with the synthetic and file sources; snapshots; a camera that disappears."""

from __future__ import annotations

import asyncio
import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from drivers.camera.driver import CameraDriver, encode_jpeg
from drivers.camera.sources import FileSource, SyntheticSource, frame_number
from drivers.camera.v4l2 import V4L2Source
from drivers.config import build_driver
from drivers.supervisor import DriverSupervisor
from drivers.testing import RecordingContext
from edge.errors import DriverError

pytestmark = pytest.mark.timeout(20)


async def test_synthetic_frames_flow_into_latest_frame() -> None:
    ctx = RecordingContext("dev1")
    cam = CameraDriver("cam", "drone1", source=SyntheticSource(320, 240, 50), telemetry_hz=5)
    await cam.start(ctx)
    try:
        f1 = await asyncio.wait_for(cam.frames.get_newer(0), 2)
        f2 = await asyncio.wait_for(cam.frames.get_newer(f1.seq), 2)
        assert f2.seq > f1.seq and f1.image.shape == (240, 320, 3) and f1.image.dtype == np.uint8
        assert frame_number(f2.image) == f2.seq  # the source numbered its frames
        assert not np.array_equal(f1.image[1:], f2.image[1:])  # shapes move
        await asyncio.sleep(0.6)
        meta = ctx.component("drone1", "camera")
        assert meta["width"] == 320 and meta["height"] == 240 and int(meta["seq"]) >= 20
        assert 35 <= float(meta["fps"]) <= 60
        published = ctx.published_on("edge.dev1.tele.drone1.camera")
        assert 2 <= len(published) <= 6  # 5 Hz telemetry, not one per frame
    finally:
        await cam.stop()


async def test_slow_consumer_drops_not_queues() -> None:
    cam = CameraDriver("cam", "drone1", source=SyntheticSource(64, 48, 100))
    await cam.start(RecordingContext())
    await asyncio.sleep(0.3)
    await cam.stop()
    assert cam.frames.published >= 20 and cam.frames.dropped >= cam.frames.published - 1


async def test_snapshot_jpeg_published() -> None:
    pil = pytest.importorskip("PIL.Image")
    ctx = RecordingContext("dev1")
    cam = CameraDriver("cam", "drone1", source=SyntheticSource(640, 480, 30), snapshot_s=0.1,
                       snapshot_width=160)
    await cam.start(ctx)
    try:
        msg = await ctx.wait_published("edge.dev1.media.drone1.cam")
    finally:
        await cam.stop()
    assert msg.payload[:2] == b"\xff\xd8"  # JPEG SOI
    with pil.open(io.BytesIO(msg.payload)) as im:
        assert im.size == (160, 120)


async def test_snapshot_skipped_without_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    assert encode_jpeg(np.zeros((48, 64, 3), np.uint8), 32, 70) is None
    ctx = RecordingContext()
    cam = CameraDriver("cam", "drone1", source=SyntheticSource(64, 48, 50), snapshot_s=0.05)
    await cam.start(ctx)
    await ctx.wait_for(lambda: cam.snapshots_skipped >= 2)
    await cam.stop()
    assert cam.snapshots == 0 and not ctx.published_on("edge.*.media.>")


async def test_file_source_npy_and_directory(tmp_path: Path) -> None:
    frames = np.stack([np.full((30, 40, 3), i * 50, np.uint8) for i in range(3)])
    np.save(tmp_path / "clip.npy", frames)
    src = FileSource(tmp_path / "clip.npy", fps=100)
    src.open()
    got = [int(src.read()[0, 0, 0]) for _ in range(4)]
    assert got == [0, 50, 100, 0] and (src.width, src.height) == (40, 30)
    d = tmp_path / "dir"
    d.mkdir()
    for i in range(2):
        np.save(d / f"{i:03d}.npy", frames[i + 1])
    cam = CameraDriver("cam", "drone1", source=FileSource(d, fps=50))
    await cam.start(RecordingContext())
    f = await asyncio.wait_for(cam.frames.get_newer(0), 2)
    await cam.stop()
    assert f.image.shape == (30, 40, 3) and int(f.image[0, 0, 0]) in (50, 100)


async def test_file_source_bad_frames_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((30, 40), np.float32))
    cam = CameraDriver("cam", "drone1", source=FileSource(tmp_path / "bad.npy"))
    with pytest.raises(DriverError, match="HxWx3 uint8"):
        await cam.start(RecordingContext())


async def test_camera_missing_at_startup() -> None:
    cam = CameraDriver("cam", "drone1", source=V4L2Source("/dev/video97"))
    with pytest.raises(DriverError) as ei:
        await cam.start(RecordingContext())
    assert ei.value.device == "/dev/video97" and "FileNotFoundError" in (ei.value.cause or "")


async def test_camera_disappears_supervisor_reopens(tmp_path: Path) -> None:
    ctx = RecordingContext()
    gone = CameraDriver("cam", "drone1", source=SyntheticSource(64, 48, 100, fail_after=5))
    d = tmp_path / "frames"
    d.mkdir()
    np.save(d / "0.npy", np.zeros((48, 64, 3), np.uint8))
    files = CameraDriver("cam2", "drone1", source=FileSource(d, fps=100))
    sup = DriverSupervisor(ctx, [gone, files], backoff_initial_s=0.05)
    await sup.start()
    try:
        await ctx.wait_for(lambda: gone.restarts >= 2)
        st = sup.status()[0]
        assert st.failure_device == "synthetic" and "disconnected" in (st.failure_cause or "")
        assert gone.seq >= 10  # 5 frames per life
        shutil.rmtree(d)  # the second camera vanishes: reads fail, reopen fails
        await ctx.wait_for(lambda: files.restarts >= 1 and sup.status()[1].failure_cause is not None)
        assert "FileNotFoundError" in (sup.status()[1].failure_cause or "")
    finally:
        await sup.stop()


async def test_camera_from_config() -> None:
    drv = build_driver("cam", {"kind": "camera", "entity": "d", "backend": "emulated",
                               "source": "synthetic", "width": 128, "height": 96, "fps": 20})
    assert isinstance(drv, CameraDriver) and drv.source.width == 128
    from edge.errors import ConfigError

    with pytest.raises(ConfigError, match="source"):
        build_driver("cam", {"kind": "camera", "entity": "d", "backend": "emulated", "source": "v4l2"})
