"""Policy point benchmarks: ``python bench/bench_policy.py [--quick]``.

Every figure is interleaved with its baseline in one loop (see bench/harness.py).

(a) Decision cost on the hot path, one decision per call, a policy of 40 rules and 2 limits: the
    compiled engine's cached decision, the same decision uncached (computed from the rules), and
    the whole policy point (meter + cached decision) as a component's publish meets it, and the
    point's work on one wasm batch of 256 (its deliveries, its publishes, its gas) per message; each
    sample is the median of 2,000 individually timed calls (timer included), the figure the
    median of the samples (target: cached p50 <= 2 us).
(b) The wasm message path with the policy point on (a loaded policy: every delivery and every
    publish decided and metered, gas metered) against off (no policy point), the same pool and
    worker alternating: deliver -> wasm echo -> publish callback, per message.
(c) The physics tick (10,000 entities, world -> wasm -> world, shared) with the policy point on
    (gas metered per call) against off.
(d) A vision pipeline's inference (the real face model on a 320x240 synthetic face frame) with
    the policy point on (each frame decided as ``device:<entity>`` ``infer`` and its time
    metered, :mod:`edge.inference.admission`) against the detector alone, per frame.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import Absolute, Comparison, Row, ainterleave, interleave, report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_wasm import DEVICE, DT, Sink, build_components, physics_world  # noqa: E402

from edge.inference.admission import PolicedDetector  # noqa: E402
from edge.policy.engine import CompiledPolicy  # noqa: E402
from edge.policy.point import PolicyPoint  # noqa: E402
from edge.policy.rules import Policy, parse_policy  # noqa: E402
from edge.policy.sandbox import SandboxPolicy  # noqa: E402
from edge.wasm.manifest import load_manifest  # noqa: E402
from edge.wasm.pool import SandboxPool  # noqa: E402
from edge.world.scheduler import TickLoop  # noqa: E402

CALLS = 2000
#: Messages of one wasm delivery in (a) and (b).
BATCH = 256
SUBJECT = f"edge.{DEVICE}.evt.echo"


def policy() -> Policy:
    """40 rules over every action (denies first in the file) and 2 limits elsewhere."""
    rules: list[dict[str, Any]] = []
    for i in range(20):
        rules.append({"name": f"deny-{i}", "effect": "deny", "principal": "component:*",
                      "action": ["publish", "deliver"], "resource": f"edge.{{device}}.evt.blocked{i}.>"})
        rules.append({"name": f"allow-{i}", "effect": "allow", "principal": f"caller:c{i}",
                      "action": ["call", "command"], "resource": ">"})
    limits = [{"name": "callers", "principal": "caller:*", "action": "call", "rate": 100.0},
              {"name": "cmds", "principal": "operator:*", "action": "command", "quota_messages": 1000}]
    return parse_policy({"rule": rules, "limit": limits}, DEVICE)


def per_call(fn: Any) -> Any:
    def sample() -> float:
        ns = time.perf_counter_ns
        times = []
        for _ in range(CALLS):
            t0 = ns()
            fn()
            times.append(ns() - t0)
        return statistics.median(times) / 1e9
    return sample


def decisions(rounds: int) -> list[Row]:
    c = CompiledPolicy(policy(), 1)
    point = PolicyPoint(DEVICE)
    point.load(policy())
    args = ("component", "echo", "publish", SUBJECT, True)
    sandbox = SandboxPolicy(point)
    inbox = [(f"edge.{DEVICE}.cmd.echo", b"x" * 64)] * BATCH
    outbox = [(SUBJECT, b"x" * 64)] * BATCH

    def batch() -> None:  # what the sandbox asks of the point for one delivery of BATCH messages
        sandbox.deliveries("echo", inbox)
        sandbox.publishes("echo", outbox)
        sandbox.on_call("echo", 1000)

    s = interleave({
        "cached": per_call(lambda: c.decide(*args)),
        "uncached": per_call(lambda: c.decide_uncached(*args)),
        "policy point": per_call(lambda: point.check("component", "echo", "publish", SUBJECT, size=64,
                                                     granted=True)),
        "batch": per_call(batch),
    }, rounds=rounds, measure="value")
    return [
        Absolute.of("policy decision, cached (40 rules), p50 of one call", s["cached"],
                    note="target <= 2 µs"),
        Absolute.of("policy decision, uncached (40 rules), p50 of one call", s["uncached"]),
        Absolute.of("policy point: meter + cached decision of a publish, p50 of one call",
                    s["policy point"], note="target <= 2 µs"),
        Absolute.of(f"policy point on a wasm batch of {BATCH} (deliveries + publishes + gas), per message",
                    [t / BATCH for t in s["batch"]]),
        Comparison.of("policy decision cached vs uncached", s, "cached", "uncached"),
    ]


async def wasm_path(rounds: int, batches: int, batch: int) -> Row:
    m = load_manifest(ROOT / "components" / "echo" / "manifest.toml", DEVICE)
    sink = Sink()
    point = PolicyPoint(DEVICE)
    point.load(policy())
    on = SandboxPolicy(point)
    # no RSS recycling: a recycle in the middle of a burst drops its messages (measured apart,
    # bench/bench_memory.py)
    async with SandboxPool(DEVICE, sink, workers=1, recycle_rss_bytes=None) as pool:
        await pool.load(m)
        pool._comps["echo"].publish_bucket.rate = float("inf")  # the path, not the rate limit
        effects = pool._effects
        msgs = [(f"edge.{DEVICE}.cmd.echo", b"x" * 64)] * batch

        async def burst(policy: SandboxPolicy | None) -> None:
            effects.policy = policy
            before = sink.published
            for _ in range(batches):
                items = msgs if policy is None else policy.deliveries("echo", msgs)
                await pool.deliver("echo", items)
            await pool.flush()
            assert sink.published - before == batches * batch, (sink.published - before, pool._comps["echo"].counters)

        async def with_policy() -> None:
            await burst(on)

        async def without() -> None:
            await burst(None)

        s = await ainterleave({"policy on": with_policy, "policy off": without}, rounds=rounds)
    n = batches * batch
    per = {k: [t / n for t in v] for k, v in s.items()}
    assert point.meter.of("component", "echo").messages >= 2 * n  # deliveries + publishes decided
    return Comparison.of(f"wasm message path (deliver → echo → publish), batches of {batch}", per,
                         "policy on", "policy off", op="msg",
                         note="every delivery and publish decided and metered; target >= 0.9x speed")


async def physics(rounds: int, inner: int, n: int) -> Row:
    from edge.wasm.layer import WasmTickRunner

    m = load_manifest(ROOT / "components" / "physics" / "manifest.toml", DEVICE)
    point = PolicyPoint(DEVICE)
    point.load(policy())
    on = SandboxPolicy(point)
    async with SandboxPool(DEVICE, Sink(), workers=1) as pool:
        await pool.load(m)
        w = physics_world(n, 0, shared=True)
        loop = TickLoop(w, WasmTickRunner(pool, "physics"), read=m.read, write=m.write, hz=20)
        effects = pool._effects

        async def tick(policy: SandboxPolicy | None) -> None:
            effects.policy = policy
            assert await loop.tick_once(DT)

        async def with_policy() -> None:
            await tick(on)

        async def without() -> None:
            await tick(None)

        s = await ainterleave({"policy on": with_policy, "policy off": without}, rounds=rounds,
                              inner=inner)
        w.close()
    assert point.meter.of("component", "physics").gas > 0
    return Comparison.of(f"physics tick, {n:,} entities, world → wasm → world", s, "policy on",
                         "policy off", ops=n, op="updates",
                         note="gas metered per call; target >= 0.9x speed")


async def vision(rounds: int, inner: int) -> Row:
    from bench_inference import synthetic_frame

    from edge.inference.blazeface import FaceDetector, face_model_path
    from edge.inference.registry import ModelRegistry, ModelSpec

    point = PolicyPoint(DEVICE)
    point.load(policy())
    registry = ModelRegistry()
    await registry.start()
    await registry.load(ModelSpec(name="face", path=str(face_model_path()), threads=1))
    try:
        image = synthetic_frame()
        bare = FaceDetector(registry, "face")
        policed = PolicedDetector(FaceDetector(registry, "face"), point, entity="cam", model="face")
        assert await bare.detect(image) == await policed.detect(image)  # same answer both ways
        s = await ainterleave({"policy on": lambda: policed.detect(image), "policy off": lambda: bare.detect(image)},
                              rounds=rounds, inner=inner)
    finally:
        await registry.close()
    cam = point.meter.of("device", "cam")
    assert cam.messages >= rounds * inner and cam.infer_s > 0
    return Comparison.of("vision pipeline inference (face model, 320x240 frame)", s, "policy on", "policy off",
                         op="frame", note="each frame decided as device:cam infer face and its time metered; "
                                          "target >= 0.9x speed")


def main() -> None:
    ap = argparse.ArgumentParser(description="policy point benchmarks")
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--entities", type=int, default=10_000)
    args = ap.parse_args()
    rounds = 10 if args.quick else 30
    build_components()
    rows = decisions(rounds)
    rows.append(asyncio.run(wasm_path(rounds, 20 if args.quick else 40, BATCH)))
    rows.append(asyncio.run(physics(rounds, 3, args.entities)))
    rows.append(asyncio.run(vision(rounds, 10)))
    report(rows, command="bench/bench_policy.py")


if __name__ == "__main__":
    main()
