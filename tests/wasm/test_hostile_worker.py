"""A worker taken over by its component: the runtime stays up, reports it, and nothing outside
the component's write set changes (docs/sandbox.md, "Threat model").

Slot 0 of the pool runs tests/wasm/hostile_worker.py (through the test-only
``worker_command``), which answers the ticks of the component ``victim`` with random bytes,
truncated frames, huge lengths, wrong kinds, replies to calls never made, effects the grants
refuse, write bits outside the write set, garbage in its own write columns, and a store into a
read-only world column. Slot 1 runs the real worker with a real physics component on its own
world, which must keep ticking throughout. The victim's world is real, with shared columns.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from sandbox_support import DEVICE, Recorder, wait_for, write_manifest

from edge.wasm.layer import WasmTickRunner
from edge.wasm.manifest import Manifest, load_manifest
from edge.wasm.pool import SandboxPool
from edge.wasm.procs import DEFAULT_WORKER_COMMAND
from edge.world.scheduler import TickLoop
from edge.world.store import World

pytestmark = pytest.mark.timeout(120)

HOSTILE = Path(__file__).resolve().parent / "hostile_worker.py"
#: Attacks answered by killing the worker for a protocol violation.
PROTOCOL_ATTACKS = ("random", "huge_length", "unknown_kind", "bad_status", "truncated_items",
                    "huge_item", "unsolicited", "wrong_kind", "host_request_bad_op",
                    "infer_not_granted", "publish_outside_grant", "kv_outside_limits",
                    "kv_over_quota", "write_bits_outside")
N = 12  # entities of the victim's world; the odd ones have no velocity (not in its batch)


@pytest.fixture
def physics(components_dir: Path) -> Manifest:
    return load_manifest(components_dir / "physics" / "manifest.toml", DEVICE)


@pytest.fixture
def victim(tmp_path: Path, physics: Manifest) -> Manifest:
    path = write_manifest(tmp_path, "victim", physics.module, read=physics.read,
                          write=physics.write, tick_hz=1.0, publish=(f"edge.{DEVICE}.evt.>",))
    return load_manifest(path, DEVICE)


@pytest.fixture
def attack_file(tmp_path: Path) -> Path:
    path = tmp_path / "attack"
    path.write_text("ok")
    return path


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def pool(attack_file: Path, rec: Recorder) -> AsyncIterator[SandboxPool]:
    def command(slot: int) -> tuple[str, ...]:
        if slot == 0:
            return (sys.executable, str(HOSTILE), str(attack_file))
        return DEFAULT_WORKER_COMMAND

    p = SandboxPool(DEVICE, rec, workers=2, backoff_base_s=0.01, deadline_s=2.0,
                    worker_command=command)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def victim_world() -> World:
    w = World(shared=True, capacity=16)
    for i in range(N):
        comps = {"position": {"x": i, "y": -i, "z": 0.25 * i}, "battery": {"level": 1.0 - i / 100}}
        if i % 2 == 0:
            comps["velocity"] = {"x": 1.0, "y": 2.0, "z": 3.0}
        w.spawn(f"e{i}", components=comps)
    return w


def snapshot(w: World) -> dict[str, bytes]:
    names = [f"{c}.{f}" for c in ("position", "velocity", "battery")
             for f in (("level",) if c == "battery" else ("x", "y", "z"))]
    return {name: w.column(name).tobytes() for name in names}


async def test_hostile_worker_is_killed_reported_and_bounded_by_the_write_set(
        pool: SandboxPool, rec: Recorder, physics: Manifest, victim: Manifest,
        attack_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="edge.wasm.worker")
    await pool.load(victim)  # slot 0: the hostile worker
    await pool.load(physics)  # slot 1: a real worker
    pids = pool.worker_pids()
    hostile_pid = pids[0]
    assert next(s for s in pool.status() if s["name"] == "physics")["worker_pid"] == pids[1]

    heartbeats = 0

    async def heartbeat() -> None:
        nonlocal heartbeats
        while True:
            heartbeats += 1
            await asyncio.sleep(0.01)

    beat = asyncio.create_task(heartbeat())
    world = victim_world()
    good_world = World(shared=True)
    good_world.spawn("g", components={"position": {"x": 0.0}, "velocity": {"x": 1.0}})
    loop = TickLoop(world, WasmTickRunner(pool, "victim"), read=victim.read, write=victim.write,
                    hz=1.0)
    good = TickLoop(good_world, WasmTickRunner(pool, "physics"), read=physics.read,
                    write=physics.write, hz=1.0)
    assert loop.mode == "shared" and good.mode == "shared"
    before = snapshot(world)
    batch_slots = world.query(["position", "velocity"]).index
    outside = np.setdiff1d(np.arange(len(np.frombuffer(before["position.x"]))), batch_slots)

    async def running_again() -> None:
        await wait_for(lambda: pool.state("victim") in ("running", "failed"), timeout=10)
        if pool.state("victim") == "failed":  # FAIL_LIMIT reached: load it again
            await pool.load(victim)
        assert pool.state("victim") == "running"

    good_ticks = 0
    try:
        for attack in PROTOCOL_ATTACKS:
            attack_file.write_text(attack)
            faults = len(rec.reasons("victim"))
            ok = await loop.tick_once(0.1)
            assert ok is (attack == "unsolicited"), attack  # (its first answer is sound)
            await wait_for(lambda f=faults: len(rec.reasons("victim")) > f, timeout=10)
            assert rec.reasons("victim")[-1] == "protocol", (attack, rec.faults[-1])
            assert await good.tick_once(0.5), attack  # the other worker's component ticks on
            good_ticks += 1
            attack_file.write_text("ok")
            await running_again()
        counters = next(s for s in pool.status() if s["name"] == "victim")["counters"]
        assert pool.protocol_violations == len(PROTOCOL_ATTACKS)
        assert counters["published"] == 0  # no refused effect ran
        assert not [p for p in rec.published if p[0] == "victim"]

        # read-only mapping: the kernel refuses a writable mapping and faults the store
        attack_file.write_text("write_read_only")
        faults = len(rec.reasons("victim"))
        assert await loop.tick_once(0.1) is False
        await wait_for(lambda: len(rec.reasons("victim")) > faults, timeout=10)
        fault = rec.faults[-1][1]
        assert fault.reason == "crashed" and "SIGSEGV" in fault.message, fault.message
        text = caplog.text
        assert "writable mapping refused: Permission denied" in text
        assert "storing into the read-only mapping" in text
        assert "the store went through" not in text
        attack_file.write_text("ok")
        await running_again()

        # garbage in its own write columns, for every row of its output area: only the batch's
        # slots of the write columns change
        attack_file.write_text("garbage_in_own_write_set")
        assert await loop.tick_once(0.1) is True
        attack_file.write_text("ok")
        assert await loop.tick_once(0.1) is True
        assert await good.tick_once(0.5)
        good_ticks += 1
    finally:
        beat.cancel()

    after = snapshot(world)
    for name in ("velocity.x", "velocity.y", "velocity.z", "battery.level"):
        assert after[name] == before[name], f"{name} changed outside the write set"
    for name in ("position.x", "position.y", "position.z"):
        old = np.frombuffer(before[name])
        new = np.frombuffer(after[name])
        assert np.array_equal(old[outside], new[outside]), f"{name} changed outside the batch"
        assert np.all(new[batch_slots] == -6.66e66)  # its own rows: garbage, as it may
    assert world.get("e1", "position") == {"x": 1.0, "y": -1.0, "z": 0.25}
    assert good_world.get("g", "position")["x"] == pytest.approx(0.5 * good_ticks)
    assert pool.state("physics") == "running" and heartbeats > 10
    assert hostile_pid not in pool.worker_pids()  # replaced
    world.close()
    good_world.close()
