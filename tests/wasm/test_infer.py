"""The ``infer`` host import: a real compiled component runs a real TFLite model through the pool.

The model is a tiny float FULLY_CONNECTED network (``y = x @ W.T + b``, [1, 4] -> [1, 3]) built
by tests/inference/tflite_modelgen.py, served by a real ModelRegistry in the test process; the
component (tests/wasm/components/infer.c) runs in a real sandbox worker.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import statistics
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from sandbox_support import (
    DEVICE,
    ROOT,
    Recorder,
    build_module,
    compile_test_components,
    write_manifest,
)

from edge.errors import ComponentLoadError
from edge.inference.errors import InferenceError
from edge.inference.registry import ModelRegistry, ModelSpec
from edge.wasm.abi import INFER_GAS
from edge.wasm.host import InferBridge
from edge.wasm.manifest import Manifest, load_manifest
from edge.wasm.pool import SandboxPool

pytestmark = pytest.mark.timeout(60)

N_IN, N_OUT = 4, 3
OUT_BYTES = 4 * N_OUT
IN_BYTES = 4 * N_IN


def _modelgen() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "edge_test_tflite_modelgen", ROOT / "tests" / "inference" / "tflite_modelgen.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    return rng.normal(size=(N_OUT, N_IN)).astype(np.float32), rng.normal(size=N_OUT).astype(np.float32)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory,
               weights: tuple[np.ndarray, np.ndarray]) -> Path:
    path = tmp_path_factory.mktemp("models") / "fc.tflite"
    path.write_bytes(_modelgen().float_fc(*weights))
    return path


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    build_module().build()
    return compile_test_components(tmp_path_factory.mktemp("wasm"))


def expected(x: np.ndarray, weights: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    w, b = weights
    return (x.astype(np.float32) @ w.T + b).astype(np.float32)


class InferHost(Recorder):
    """Recorder that is also an InferBridge (passed as ``infer=``), over a real ModelRegistry.

    ``delay_s`` waits before each inference (to exercise timeouts and the deadline pause).
    """

    def __init__(self, registry: ModelRegistry) -> None:
        super().__init__()
        self.registry = registry
        self.delay_s = 0.0
        self.calls: list[tuple[str, str]] = []

    async def infer(self, component: str, model: str, data: bytes) -> bytes:
        self.calls.append((component, model))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        m = self.registry.get(model)
        t = m.inputs[0]
        size = int(np.prod(t.shape)) * t.dtype.itemsize
        if len(data) != size:
            raise InferenceError("wrong input size", model=model, reason="input-size",
                                 expected=str(size), got=str(len(data)))
        x = np.frombuffer(data, dtype=t.dtype).reshape(t.shape)
        return b"".join(o.tobytes() for o in await self.registry.infer(model, [x]))


@pytest.fixture
async def registry(model_file: Path) -> AsyncIterator[ModelRegistry]:
    reg = ModelRegistry()
    await reg.load(ModelSpec(name="fc", path=str(model_file)))
    try:
        yield reg
    finally:
        await reg.close()


@pytest.fixture
def host(registry: ModelRegistry) -> InferHost:
    return InferHost(registry)


async def started(host: Recorder, infer: InferBridge | None = None, **kw: Any) -> SandboxPool:
    p = SandboxPool(DEVICE, host, infer=infer, backoff_base_s=0.05, workers=1, **kw)
    await p.start()
    return p


@pytest.fixture
async def pool(host: InferHost) -> AsyncIterator[SandboxPool]:
    p = await started(host, host)
    try:
        yield p
    finally:
        await p.stop()


def manifest(tmp: Path, module: Path, models: tuple[str, ...] = ("fc",), name: str = "inf",
             **kw: Any) -> Manifest:
    path = write_manifest(tmp, name, module, subscribe=("t.in",), publish=("t.out",), **kw)
    if models is not None:
        text = path.read_text().replace(
            "[limits]", "models = [" + ", ".join(f'"{m}"' for m in models) + "]\n[limits]")
        path.write_text(text)
    return load_manifest(path, DEVICE)


def command(model: str, data: bytes, *, out_cap: int = OUT_BYTES, in_len: int = -1,
            repeat: int = 1) -> bytes:
    m = model.encode()
    return struct.pack("<iiii", repeat, in_len, out_cap, len(m)) + m + data


async def run(p: SandboxPool, host: Recorder, payload: bytes,
              name: str = "inf") -> tuple[int, bytes]:
    """Deliver one command, wait for the component's answer: (infer result, output buffer)."""
    before = len(host.published)
    await p.deliver(name, [("t.in", payload)])
    await p.flush()
    assert len(host.published) == before + 1, host.faults
    _, subject, data = host.published[-1]
    assert subject == "t.out"
    return struct.unpack_from("<i", data)[0], data[4:]


def counters(p: SandboxPool, name: str = "inf") -> dict[str, int]:
    entry = next(s for s in p.status() if s["name"] == name)
    return dict(entry["counters"])


def u32(buf: bytes) -> int:
    return int(struct.unpack_from("<I", buf)[0])


# -- the import ------------------------------------------------------------------------------


async def test_granted_model_computes_the_right_numbers(
        pool: SandboxPool, host: InferHost, tmp_path: Path, modules: dict[str, Path],
        weights: tuple[np.ndarray, np.ndarray]) -> None:
    await pool.load(manifest(tmp_path, modules["infer"]))
    await pool.flush()
    # edge_init used edge_infer_sizes: input / output sizes discovered through -3 / -4
    assert struct.unpack("<iii", host.kv[("inf", "sizes")]) == (0, IN_BYTES, OUT_BYTES)
    x = np.array([[0.5, -1.25, 2.0, 3.5]], dtype=np.float32)
    rc, out = await run(pool, host, command("fc", x.tobytes()))
    assert rc == OUT_BYTES
    np.testing.assert_allclose(np.frombuffer(out, np.float32), expected(x, weights)[0], rtol=1e-5, atol=1e-6)
    c = counters(pool)
    assert c["infers"] == 1 and c["infer_errors"] == 2  # init: -3 then -4 (edge_infer_sizes)
    assert c["denied_infer"] == 0 and c["traps"] == 0
    entry = next(s for s in pool.status() if s["name"] == "inf")
    assert entry["gas_last"] >= INFER_GAS  # each infer is charged
    assert host.calls[-1] == ("inf", "fc")


async def test_not_granted_model_is_denied_counted_and_logged(
        pool: SandboxPool, host: InferHost, tmp_path: Path, modules: dict[str, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    await pool.load(manifest(tmp_path, modules["infer"], models=("other",)))
    await pool.flush()
    assert struct.unpack("<i", host.kv[("inf", "sizes")][:4]) == (-1,)  # "fc" not granted at init
    calls = len(host.calls)
    denied = counters(pool)["denied_infer"]
    x = np.zeros(N_IN, np.float32)
    with caplog.at_level(logging.WARNING, logger="edge.wasm.pool"):
        rc, _ = await run(pool, host, command("fc", x.tobytes()))
    assert rc == -1
    assert counters(pool)["denied_infer"] == denied + 1
    assert len(host.calls) == calls  # the host never saw the request
    assert pool.state("inf") == "running"


async def test_unknown_model_returns_minus_2(
        pool: SandboxPool, host: InferHost, tmp_path: Path, modules: dict[str, Path]) -> None:
    await pool.load(manifest(tmp_path, modules["infer"], models=("fc", "ghost")))
    errors = counters(pool)["infer_errors"]
    rc, _ = await run(pool, host, command("ghost", bytes(IN_BYTES)))
    assert rc == -2
    assert counters(pool)["infer_errors"] == errors + 1


async def test_wrong_input_size_returns_minus_3_and_the_size_wanted(
        pool: SandboxPool, host: InferHost, tmp_path: Path, modules: dict[str, Path]) -> None:
    await pool.load(manifest(tmp_path, modules["infer"]))
    rc, out = await run(pool, host, command("fc", bytes(IN_BYTES), in_len=IN_BYTES - 4))
    assert rc == -3 and u32(out) == IN_BYTES


async def test_small_output_buffer_returns_minus_4_and_the_size_needed(
        pool: SandboxPool, host: InferHost, tmp_path: Path, modules: dict[str, Path]) -> None:
    await pool.load(manifest(tmp_path, modules["infer"]))
    rc, out = await run(pool, host, command("fc", bytes(IN_BYTES), out_cap=8))
    assert rc == -4 and u32(out) == OUT_BYTES
    assert out[4:8] == bytes(4)  # nothing else written


async def test_host_without_infer_answers_minus_2(
        tmp_path: Path, modules: dict[str, Path]) -> None:
    rec = Recorder()
    p = await started(rec)
    try:
        await p.load(manifest(tmp_path, modules["infer"]))
        rc, _ = await run(p, rec, command("fc", bytes(IN_BYTES)))
        assert rc == -2
    finally:
        await p.stop()


async def test_failing_model_returns_minus_5(
        pool: SandboxPool, host: InferHost, tmp_path: Path, modules: dict[str, Path],
        registry: ModelRegistry) -> None:
    await pool.load(manifest(tmp_path, modules["infer"]))
    # the registry rejects a float64 tensor for this float32 model (reason "dtype")
    orig = host.infer

    async def wrong_dtype(component: str, model: str, data: bytes) -> bytes:
        x = np.frombuffer(data, np.float32).astype(np.float64).reshape(1, N_IN)
        return b"".join(o.tobytes() for o in await registry.infer(model, [x]))

    host.infer = wrong_dtype  # type: ignore[method-assign]
    try:
        rc, _ = await run(pool, host, command("fc", bytes(IN_BYTES)))
    finally:
        host.infer = orig  # type: ignore[method-assign]
    assert rc == -5
    assert pool.state("inf") == "running"


async def test_slow_model_times_out_with_minus_5(
        host: InferHost, tmp_path: Path, modules: dict[str, Path]) -> None:
    p = await started(host, host, infer_timeout_s=0.1)
    try:
        await p.load(manifest(tmp_path, modules["infer"]))
        host.delay_s = 0.4
        t0 = time.monotonic()
        rc, _ = await run(p, host, command("fc", bytes(IN_BYTES)))
        assert rc == -5 and time.monotonic() - t0 < 0.4
        host.delay_s = 0.0
        rc, _ = await run(p, host, command("fc", bytes(IN_BYTES)))  # the late answer is not taken
        assert rc == OUT_BYTES
    finally:
        await p.stop()


async def test_deadline_pauses_during_infer_but_the_budget_bounds_it(
        host: InferHost, tmp_path: Path, modules: dict[str, Path]) -> None:
    p = await started(host, host, deadline_s=0.3, infer_budget_s=0.5)
    try:
        await p.load(manifest(tmp_path, modules["infer"]))
        host.delay_s = 0.2
        # 0.4 s of inference in one call: more than the deadline, within the budget
        rc, _ = await run(p, host, command("fc", bytes(IN_BYTES), repeat=2))
        assert rc == OUT_BYTES
        assert counters(p)["deadlines"] == 0 and p.state("inf") == "running"
        # 0.6 s: the third infer finds the budget spent and is refused without waiting
        n = len(host.calls)
        rc, _ = await run(p, host, command("fc", bytes(IN_BYTES), repeat=4))
        assert rc == -5 and len(host.calls) == n + 3
        assert counters(p)["deadlines"] == 0
    finally:
        await p.stop()


async def test_infer_gas_is_charged_per_call(
        pool: SandboxPool, host: InferHost, tmp_path: Path, modules: dict[str, Path]) -> None:
    # the budget pays for edge_init's two infers and one more, not for ten
    await pool.load(manifest(tmp_path, modules["infer"], gas=int(INFER_GAS * 2.5)))
    rc, _ = await run(pool, host, command("fc", bytes(IN_BYTES)))
    assert rc == OUT_BYTES
    await pool.deliver("inf", [("t.in", command("fc", bytes(IN_BYTES), repeat=10))])
    await pool.flush()
    assert host.reasons("inf") == ["out_of_gas"]
    assert host.faults[-1][1].export == "edge_on_message"


async def test_pipelined_batches_wait_behind_an_infer(
        pool: SandboxPool, host: InferHost, tmp_path: Path, modules: dict[str, Path],
        weights: tuple[np.ndarray, np.ndarray]) -> None:
    await pool.load(manifest(tmp_path, modules["infer"]))
    host.delay_s = 0.02
    xs = [np.full((1, N_IN), i, np.float32) for i in range(6)]
    start = len(host.published)
    for x in xs:  # several batches in flight: the worker keeps them while it waits for the host
        await pool.deliver("inf", [("t.in", command("fc", x.tobytes()))])
    await pool.flush()
    got = host.published[start:]
    assert len(got) == len(xs)
    for x, (_, _, data) in zip(xs, got, strict=True):
        assert struct.unpack_from("<i", data)[0] == OUT_BYTES
        np.testing.assert_allclose(np.frombuffer(data[4:], np.float32), expected(x, weights)[0],
                                   rtol=1e-5, atol=1e-6)


async def test_tick_runs_the_model_per_entity(
        pool: SandboxPool, host: InferHost, tmp_path: Path, modules: dict[str, Path],
        weights: tuple[np.ndarray, np.ndarray]) -> None:
    read = ("sensor.a", "sensor.b", "sensor.c", "sensor.d")
    write = ("score.y0", "score.y1", "score.y2")
    await pool.load(manifest(tmp_path, modules["infer"], read=read, write=write, tick_hz=10))
    n = 5
    x = np.arange(n * N_IN, dtype=np.float64).reshape(n, N_IN) / 7.0
    cols = pool.batch("inf", n)
    for c in range(N_IN):
        cols[c][:] = x[:, c]
    assert await pool.tick("inf", n, 0.1)
    got = np.stack([cols[N_IN + k] for k in range(N_OUT)], axis=1)
    np.testing.assert_allclose(got, expected(x.astype(np.float32), weights), rtol=1e-5)


async def test_infer_call_overhead(
        pool: SandboxPool, host: InferHost, tmp_path: Path, modules: dict[str, Path],
        registry: ModelRegistry) -> None:
    """Median cost of one infer from wasm vs a direct registry.infer (printed, loosely bound)."""
    await pool.load(manifest(tmp_path, modules["infer"], gas=2_000_000_000))
    x = np.ones((1, N_IN), np.float32)
    direct = []
    for _ in range(500):
        t0 = time.perf_counter()
        await registry.infer("fc", [x])
        direct.append(time.perf_counter() - t0)
    per_call = []
    for _ in range(5):
        t0 = time.perf_counter()
        rc, _ = await run(pool, host, command("fc", x.tobytes(), repeat=100))
        per_call.append((time.perf_counter() - t0) / 100)
        assert rc == OUT_BYTES
    d, w = statistics.median(direct) * 1e6, statistics.median(per_call) * 1e6
    print(f"\ninfer: direct registry.infer {d:.0f} us, from wasm {w:.0f} us, overhead {w - d:.0f} us")
    assert w < d + 5_000  # a pipe round trip, not a model load


# -- manifest --------------------------------------------------------------------------------


@pytest.mark.parametrize(("models", "match"), [
    ('["face", "face"]', "duplicate model name"),
    ('["bad name"]', "invalid model name 'bad name'"),
    ('"face"', "expected a list of strings, got 'face'"),
    ('[3]', r"expected a list of strings, got \[3\]"),
])
def test_manifest_models_are_validated(tmp_path: Path, modules: dict[str, Path], models: str,
                                       match: str) -> None:
    path = write_manifest(tmp_path, "inf", modules["infer"], subscribe=("t.in",))
    path.write_text(path.read_text().replace("[limits]", f"models = {models}\n[limits]"))
    with pytest.raises(ComponentLoadError, match=match) as err:
        load_manifest(path, DEVICE)
    assert "key 'run.models'" in err.value.message and str(path) in err.value.message


def test_manifest_models_default_to_none(tmp_path: Path, modules: dict[str, Path]) -> None:
    m = load_manifest(write_manifest(tmp_path, "inf", modules["infer"], subscribe=("t.in",)), DEVICE)
    assert m.models == ()
    assert manifest(tmp_path, modules["infer"], models=("fc", "face.v2")).models == ("fc", "face.v2")


# -- through a real Runtime ------------------------------------------------------------------


async def test_runtime_tick_runs_a_configured_model(
        tmp_path: Path, modules: dict[str, Path], model_file: Path,
        weights: tuple[np.ndarray, np.ndarray]) -> None:
    from edge.config import parse_config
    from edge.runtime import Runtime

    read = ("sensor.a", "sensor.b", "sensor.c", "sensor.d")
    write = ("score.y0", "score.y1", "score.y2")
    comp = manifest(tmp_path, modules["infer"], read=read, write=write, tick_hz=20)
    assert comp.path is not None
    x = np.array([[1.0, -2.0, 0.5, 4.0], [0.25, 0.0, -1.5, 2.0]])
    raw = {
        "device": {"id": "inf1"},
        "schemas": {"sensor": {"fields": dict.fromkeys("abcd", "f64")},
                    "score": {"fields": dict.fromkeys(("y0", "y1", "y2"), "f64")}},
        "components": [{"manifest": str(comp.path)}],
        "entities": [{"id": f"e{i}", "components": {
            "sensor": dict(zip("abcd", map(float, x[i]), strict=True)),
            "score": {"y0": 0.0, "y1": 0.0, "y2": 0.0}}} for i in range(len(x))],
        "models": [{"name": "fc", "path": str(model_file)}],
    }
    rt = Runtime(parse_config(raw, base=tmp_path, data_dir=tmp_path / "data"))
    await asyncio.wait_for(rt.start(), 30)
    try:
        want = expected(x.astype(np.float32), weights)

        def scores() -> np.ndarray:
            return np.array([[rt.world.get(f"e{i}", "score")[f"y{k}"] for k in range(N_OUT)]
                             for i in range(len(x))])

        deadline = time.monotonic() + 10
        while not np.allclose(scores(), want, rtol=1e-5, atol=1e-6):
            assert time.monotonic() < deadline, scores()
            await asyncio.sleep(0.05)
        # a new reading flows through the model on the next ticks
        rt.world.set("e1", "sensor", {"a": 3.0})
        x[1, 0] = 3.0
        want = expected(x.astype(np.float32), weights)
        while not np.allclose(scores(), want, rtol=1e-5, atol=1e-6):
            assert time.monotonic() < deadline, scores()
            await asyncio.sleep(0.05)
        status = {c["name"]: c for c in rt.components_status()}["inf"]
        assert status["state"] == "running" and status["counters"]["infers"] >= 2
        assert status["counters"]["errors"] == 0
        # the runtime loads its models before its components, so edge_init can already infer:
        # edge_infer_sizes found the model's input (4 float32) and output (3 float32) sizes
        assert rt.pool is not None
        assert struct.unpack("<iii", rt.pool._comps["inf"].kv["sizes"]) == (0, 16, 12)
    finally:
        await rt.stop()


async def test_input_range_outside_memory_traps(
        pool: SandboxPool, host: InferHost, tmp_path: Path, modules: dict[str, Path]) -> None:
    await pool.load(manifest(tmp_path, modules["infer"]))
    await pool.deliver("inf", [("t.in", command("fc", b"", in_len=2**30))])
    await pool.flush()
    assert host.reasons("inf") == ["trap"]
    assert "infer" in host.faults[-1][1].message and "outside linear memory" in host.faults[-1][1].message


def test_wrong_infer_signature_is_refused(tmp_path: Path, modules: dict[str, Path]) -> None:
    from edge.wasm.abi import check_module

    m = load_manifest(write_manifest(tmp_path, "badinfer", modules["badinfer"], read=("a.b",),
                                     tick_hz=1), DEVICE)
    with pytest.raises(ComponentLoadError,
                       match=r"imports edge.infer with signature i\(ii\); contract 1 defines it "
                             r"as i\(iiiiii\)"):
        check_module(modules["badinfer"].read_bytes(), m)
