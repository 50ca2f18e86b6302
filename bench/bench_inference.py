"""Inference benchmarks: provider overhead and frame-to-detections latency.

    python bench/bench_inference.py [--n 500] [--seconds 5] [--threads 1] [--json]

(a) The face model run through ``ModelRegistry.infer`` (async, own worker thread) against a direct
    ``interpreter.invoke`` of the same model bytes in the same process, alternating call by call
    (bench/harness.py, one call a round): medians, p99 over all calls, and the median of per-call
    ratios (target: provider within 10 % of direct).
(b) A synthetic 640x480 camera (a loop putting frames into a ``LatestFrame`` at 15 and 30 fps)
    feeding a ``DetectionPipeline`` with the real face detector: capture -> detections latency
    p50 / p99, frames processed and dropped. Real time at a fixed frame rate: absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from drivers.camera.frames import Frame, LatestFrame
from edge.inference.backend import select_backend
from edge.inference.blazeface import FaceDetector, face_model_path, preprocess
from edge.inference.registry import ModelRegistry, ModelSpec
from edge.inference.vision import Detection, DetectionPipeline
from harness import Absolute, Comparison, Row, ainterleave, report

FRAME_W, FRAME_H = 640, 480
WARMUP = 50


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) * 1e3


def synthetic_frame() -> np.ndarray:
    """A 640x480 RGB frame with a drawn face (so decoding and NMS do real work)."""
    img = np.empty((FRAME_H, FRAME_W, 3), np.uint8)
    img[:] = (90, 110, 130)
    yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W]

    def ell(cx: float, cy: float, rx: float, ry: float, c: tuple[int, int, int]) -> None:
        img[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = c

    cx, cy = 320, 240
    ell(cx, cy + 10, 80, 105, (224, 172, 140))
    ell(cx, cy - 80, 85, 45, (60, 40, 30))
    for side in (-1, 1):
        ell(cx + side * 33, cy - 12, 17, 8, (250, 250, 250))
        ell(cx + side * 33, cy - 12, 7, 7, (50, 30, 20))
        ell(cx + side * 33, cy - 30, 20, 4, (70, 45, 30))
    ell(cx, cy + 20, 9, 18, (200, 145, 115))
    ell(cx, cy + 55, 28, 8, (170, 70, 70))
    return img


async def bench_provider(n: int, threads: int) -> dict[str, Any]:
    backend = await asyncio.to_thread(select_backend)
    content = face_model_path().read_bytes()
    tensor, _ = preprocess(synthetic_frame())

    interp, _ = backend.make_interpreter(content, num_threads=threads)
    i_in = interp.get_input_details()[0]["index"]
    outs = [d["index"] for d in interp.get_output_details()]

    def direct_once() -> float:
        t0 = time.perf_counter()
        interp.set_tensor(i_in, tensor)
        interp.invoke()
        for o in outs:
            interp.get_tensor(o)
        return time.perf_counter() - t0

    reg = ModelRegistry(backend=backend)
    await reg.load(ModelSpec(name="face", path=str(face_model_path()), threads=threads))

    async def provider_once() -> float:
        t0 = time.perf_counter()
        await reg.infer("face", [tensor])
        return time.perf_counter() - t0

    samples = await ainterleave({"registry.infer": provider_once, "direct invoke": direct_once},
                                rounds=n, warmup=WARMUP, measure="value")
    direct, provider = samples["direct invoke"], samples["registry.infer"]
    worker_p50 = reg.status()["face"].p50_ms
    await reg.close()
    d50, p50 = pct(direct, 50), pct(provider, 50)
    return {
        "backend": backend.label, "threads": threads, "calls": len(direct),
        "direct_p50_ms": d50, "direct_p99_ms": pct(direct, 99),
        "provider_p50_ms": p50, "provider_p99_ms": pct(provider, 99),
        "provider_worker_p50_ms": worker_p50, "overhead_p50_ms": p50 - d50,
        "ratio_p50": p50 / d50, "ratio_p99": pct(provider, 99) / pct(direct, 99),
        "row": Comparison.of(f"face model through the inference provider ({backend.label})",
                             samples, "registry.infer", "direct invoke", op="calls",
                             note=f"p99 {pct(provider, 99):.2f} ms vs {pct(direct, 99):.2f} ms; "
                                  "target ≤ 1.10×"),
    }


async def bench_pipeline(fps: float, seconds: float, threads: int) -> dict[str, Any]:
    backend = await asyncio.to_thread(select_backend)
    reg = ModelRegistry(backend=backend)
    await reg.load(ModelSpec(name="face", path=str(face_model_path()), threads=threads))
    slot = LatestFrame()
    image = synthetic_frame()
    faces: list[int] = []

    def sink(frame: Frame, dets: list[Detection], latency_s: float) -> None:
        faces.append(len(dets))

    pipe = DetectionPipeline(slot, FaceDetector(reg, "face"), sink, name=f"bench-{fps}")
    pipe.start()
    period = 1.0 / fps
    frames = int(seconds * fps)
    start = time.monotonic()
    late = 0
    for seq in range(frames):
        target = start + seq * period
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late += 1
        await slot.put(Frame(seq=seq, t=time.monotonic(), image=image, source="synthetic"))
    await asyncio.sleep(0.2)
    await pipe.stop()
    await reg.close()
    st = pipe.stats
    return {
        "fps": fps, "frames": frames, "processed": st.processed, "dropped": st.dropped,
        "slot_dropped": slot.dropped, "producer_late": late,
        "p50_ms": st.percentile_ms(50), "p99_ms": st.percentile_ms(99),
        "errors": st.errors, "frames_with_face": sum(1 for f in faces if f == 1),
    }


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=1000, help="invokes per path for (a)")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration per rate for (b)")
    ap.add_argument("--threads", type=int, default=1, help="interpreter threads")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="200 calls, 2 s per rate")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.seconds = min(args.n, 200), min(args.seconds, 2.0)
    logging.basicConfig(level=logging.WARNING)

    provider = await bench_provider(args.n, args.threads)
    pipelines = [await bench_pipeline(fps, args.seconds, args.threads) for fps in (15.0, 30.0)]
    rows: list[Row] = [provider.pop("row")]
    for r in pipelines:
        rows.append(Absolute(f"frame → detections at {r['fps']:.0f} fps ({FRAME_W}×{FRAME_H})",
                             f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms",
                             f"{r['processed']}/{r['frames']} processed, {r['dropped']} dropped, "
                             f"{args.seconds:.0f} s"))
    if args.json:
        print(json.dumps({"provider": provider, "pipeline": pipelines}, indent=2))
        return 0
    p = provider
    print(f"(a) face model, {p['backend']}, {p['threads']} thread(s), {p['calls']} calls each")
    print(f"    (interpreter time on the model thread p50 {p['provider_worker_p50_ms']:.3f} ms; "
          f"overhead p50 {p['overhead_p50_ms']:.3f} ms)")
    for r in pipelines:
        print(f"(b) {r['fps']:>4.0f} fps: processed {r['processed']}/{r['frames']}  dropped "
              f"{r['dropped']}  face found in {r['frames_with_face']}  producer late {r['producer_late']}")
    report(rows, command="bench/bench_inference.py")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
