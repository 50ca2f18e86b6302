"""The optional edge_health export: called in the worker under its own gas (edge.wasm.health)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sandbox_support import entry, manifest, wait_for, write_manifest

from edge.errors import ComponentLoadError
from edge.wasm.health import HealthWatch, call_health
from edge.wasm.manifest import load_manifest
from edge.wasm.pool import SandboxPool

pytestmark = pytest.mark.timeout(30)


async def _load(pool: SandboxPool, tmp_path: Path, modules: dict[str, Path], mode: str | None,
                **kw: object) -> None:
    kv = {"mode": mode.encode()} if mode is not None else {}
    await pool.load(manifest(tmp_path, "health", modules["health"], tick_hz=1.0, read=("position.x",), **kw), kv)


async def test_ok_answer(pool: SandboxPool, tmp_path: Path, modules: dict[str, Path]) -> None:
    await _load(pool, tmp_path, modules, None)
    res = await call_health(pool, "health", 1_000_000)
    assert res is not None and res.ok and res.code == 0 and res.reason == ""


async def test_not_ok_code_and_reason(pool: SandboxPool, tmp_path: Path,
                                      modules: dict[str, Path]) -> None:
    await _load(pool, tmp_path, modules, "bad")
    res = await call_health(pool, "health", 1_000_000)
    assert res is not None and not res.ok and res.code == 3 and res.reason == "sensor stuck"
    assert res.describe("health") == "health: health reported 3 [sensor stuck]"


async def test_gas_out_is_not_ok_and_keeps_the_component(
        pool: SandboxPool, tmp_path: Path, modules: dict[str, Path]) -> None:
    await _load(pool, tmp_path, modules, "spin")
    res = await call_health(pool, "health", 100_000)
    assert res is not None and not res.ok and res.fault == "out_of_gas"
    assert "health: health reported out_of_gas" in res.describe("health")
    assert entry(pool, "health")["state"] == "running"
    pool.batch("health", 1)
    assert await pool.tick("health", 1, 0.1)  # the instance still serves its ticks


async def test_trap_is_not_ok(pool: SandboxPool, tmp_path: Path, modules: dict[str, Path]) -> None:
    await _load(pool, tmp_path, modules, "trap")
    res = await call_health(pool, "health", 1_000_000)
    assert res is not None and not res.ok and res.fault == "trap"
    assert entry(pool, "health")["state"] == "running"


async def test_effects_make_it_not_ok(pool: SandboxPool, tmp_path: Path,
                                      modules: dict[str, Path]) -> None:
    await _load(pool, tmp_path, modules, "publish", publish=("edge.dev1.evt.health.>",))
    res = await call_health(pool, "health", 1_000_000)
    assert res is not None and not res.ok and res.fault == "effects"


async def test_no_export_no_calls(pool: SandboxPool, tmp_path: Path,
                                  modules: dict[str, Path]) -> None:
    await pool.load(manifest(tmp_path, "trap", modules["trap"], tick_hz=1.0, read=("position.x",)))
    assert "edge_health" not in pool.component("trap").info.exports
    assert await call_health(pool, "trap", 1_000_000) is None


async def test_watch_calls_on_its_schedule(pool: SandboxPool, tmp_path: Path,
                                           modules: dict[str, Path]) -> None:
    path = write_manifest(tmp_path, "health", modules["health"], tick_hz=1.0, read=("position.x",))
    path.write_text(path.read_text() + "[health]\ninterval_s = 0.05\n")
    m = load_manifest(path, "dev1")
    await pool.load(m, {"mode": b"after2"})
    seen: list[bool] = []
    watch = HealthWatch(pool, "health", m.health, lambda _n, r: seen.append(r.ok))
    watch.start()
    try:
        await wait_for(lambda: watch.not_ok >= 1)
    finally:
        await watch.stop()
    assert seen[:3] == [True, True, False]
    assert watch.last is not None and watch.last.reason == "tired"
    assert watch.to_dict()["calls"] == len(seen)


@pytest.mark.parametrize(("body", "key"), [
    ("interval_s = 0", "interval_s"), ("interval_s = 'x'", "interval_s"),
    ("gas = 0", "gas"), ("gas = 1.5", "gas"), ("every = 3", "every"),
])
def test_bad_health_values_name_the_key(tmp_path: Path, modules: dict[str, Path], body: str,
                                        key: str) -> None:
    path = write_manifest(tmp_path, "health", modules["health"], tick_hz=1.0, read=("position.x",))
    path.write_text(path.read_text() + f"[health]\n{body}\n")
    with pytest.raises(ComponentLoadError) as err:
        load_manifest(path, "dev1")
    assert key in str(err.value)
