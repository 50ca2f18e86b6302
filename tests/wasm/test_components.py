"""The demo components (components/*), built with components/build.py and run in the pool."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator

import numpy as np
import pytest
from sandbox_support import DEVICE, ROOT, Recorder, build_module

from edge.wasm.manifest import Manifest, load_manifest
from edge.wasm.pool import SandboxPool

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    build_module().build()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def pool(rec: Recorder) -> AsyncIterator[SandboxPool]:
    async with SandboxPool(DEVICE, rec, workers=1) as p:
        yield p


def demo(name: str) -> Manifest:
    return load_manifest(ROOT / "components" / name / "manifest.toml", DEVICE)


async def test_physics_integrates_position(pool: SandboxPool) -> None:
    await pool.load(demo("physics"))
    rng = np.random.default_rng(1)
    n = 10_000
    pos, vel = rng.normal(size=(3, n)), rng.normal(size=(3, n))
    cols = pool.batch("physics", n)
    for i in range(3):
        cols[i][:] = pos[i]
        cols[3 + i][:] = vel[i]
    assert await pool.tick("physics", n, 0.05)
    for i in range(3):
        np.testing.assert_array_equal(cols[i], pos[i] + vel[i] * 0.05)
        np.testing.assert_array_equal(cols[3 + i], vel[i])  # read-only columns untouched
    # a bigger batch maps new storage transparently
    cols = pool.batch("physics", 3 * n)
    cols[0][:] = 1.0
    cols[3][:] = 2.0
    assert await pool.tick("physics", 3 * n, 1.0)
    assert cols[0][-1] == 3.0


async def test_battery_drains_clamps_and_reports_low_once(pool: SandboxPool,
                                                          rec: Recorder) -> None:
    await pool.load(demo("battery"))
    ids = ["drone-a", "drone-b", "drone-c"]
    level, drain = pool.batch("battery", 3)
    level[:] = [0.25, 0.9, 0.01]
    drain[:] = [0.01, 0.01, 0.05]
    assert await pool.tick("battery", 3, 1.0, ids=ids)
    np.testing.assert_allclose(level, [0.24, 0.89, 0.0])
    for _ in range(10):
        level, drain = pool.batch("battery", 3)
        assert await pool.tick("battery", 3, 1.0)  # ids unchanged
    await pool.flush()
    np.testing.assert_allclose(level, [0.14, 0.79, 0.0])
    assert [s for _, s, _ in rec.published] == [f"edge.{DEVICE}.evt.battery.low"]
    event = json.loads(rec.published[0][2])
    assert event == {"entity": "drone-a", "level_pct": 19}
    assert rec.kv[("battery", "low_events")] == struct.pack("<q", 1)


async def test_patrol_steers_around_the_square(pool: SandboxPool) -> None:
    await pool.load(demo("patrol"))
    m = demo("patrol")
    n = 2
    cols = dict(zip(m.columns, pool.batch("patrol", n), strict=True))
    cols["position.x"][:] = [0.0, 10.5]
    cols["position.y"][:] = [0.0, 10.0]
    cols["patrol.cx"][:] = 0.0
    cols["patrol.cy"][:] = 0.0
    cols["patrol.half"][:] = 10.0
    cols["patrol.speed"][:] = 2.0
    cols["patrol.leg"][:] = 0.0
    assert await pool.tick("patrol", n, 0.1)
    # entity 0 heads to corner 0 (10, 10) at speed 2; entity 1 is there, so it moves to leg 1,
    # corner (-10, 10): straight along -x.
    s = 2.0 / np.sqrt(2.0)
    np.testing.assert_allclose([cols["velocity.x"][0], cols["velocity.y"][0]], [s, s])
    np.testing.assert_allclose([cols["velocity.x"][1], cols["velocity.y"][1]], [-2.0, 0.0])
    np.testing.assert_array_equal(cols["patrol.leg"], [0.0, 1.0])


async def test_patrol_and_physics_fly_a_full_lap(pool: SandboxPool) -> None:
    await pool.load(demo("patrol"))
    await pool.load(demo("physics"))
    pos = np.zeros(3)
    vel = np.zeros(3)
    leg = 0.0
    legs_seen = set()
    for _ in range(400):
        px, py, cx, cy, half, speed, lg, vx, vy = pool.batch("patrol", 1)
        px[0], py[0], cx[0], cy[0], half[0], speed[0], lg[0] = pos[0], pos[1], 0, 0, 5, 5, leg
        assert await pool.tick("patrol", 1, 0.05)
        vel[:2] = vx[0], vy[0]
        leg = float(lg[0])
        legs_seen.add(leg)
        cols = pool.batch("physics", 1)
        for i in range(3):
            cols[i][0], cols[3 + i][0] = pos[i], vel[i]
        assert await pool.tick("physics", 1, 0.05)
        pos = np.array([cols[0][0], cols[1][0], cols[2][0]])
    assert legs_seen == {0.0, 1.0, 2.0, 3.0}
    assert np.all(np.abs(pos[:2]) <= 5.6)


async def test_echo_republishes_in_order(pool: SandboxPool, rec: Recorder) -> None:
    await pool.load(demo("echo"))
    msgs = [(f"edge.{DEVICE}.cmd.echo", b"m%d" % i) for i in range(2000)]
    for i in range(0, 2000, 100):
        await pool.deliver("echo", msgs[i:i + 100])
    await pool.flush()
    assert [d for _, _, d in rec.published] == [d for _, d in msgs]
    assert {s for _, s, _ in rec.published} == {f"edge.{DEVICE}.evt.echo"}
    st = next(s for s in pool.status() if s["name"] == "echo")
    assert st["counters"]["messages"] == 2000 and st["counters"]["published"] == 2000  # type: ignore[index]
    # a payload that does not fit the 64 KiB inbox is dropped and counted, not fatal
    await pool.deliver("echo", [(f"edge.{DEVICE}.cmd.echo", b"x" * 70_000)])
    await pool.flush()
    st = next(s for s in pool.status() if s["name"] == "echo")
    assert st["counters"]["dropped"] == 1 and st["state"] == "running"  # type: ignore[index]
