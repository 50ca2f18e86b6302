"""Backend selection, Model loading, input checks, quantization and off-loop invokes."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time

import numpy as np
import pytest
from tflite_modelgen import QuantFc

from edge.errors import EdgeError
from edge.inference.backend import (
    BACKEND_LITERT,
    DEFAULT_CANDIDATES,
    Backend,
    BackendCandidate,
    DelegateSpec,
    select_backend,
)
from edge.inference.errors import InferenceError
from edge.inference.model import LoadOptions, Model, TensorInfo, dequantize, quantize

pytestmark = pytest.mark.timeout(30)


# -- backend --------------------------------------------------------------------------------------


def test_backend_prefers_litert_and_reports_version(backend: Backend) -> None:
    assert backend.name == BACKEND_LITERT
    assert backend.version[0].isdigit()
    assert backend.label == f"litert {backend.version}"


def test_backend_falls_back_to_next_importable_candidate() -> None:
    missing = BackendCandidate("tflite-runtime", "no_such_tflite_module.interpreter", "nope")
    chosen = select_backend(candidates=(missing, DEFAULT_CANDIDATES[0]))
    assert chosen.name == BACKEND_LITERT


def test_backend_none_importable_names_each_failure() -> None:
    a = BackendCandidate("litert", "no_such_litert.interpreter", "nope-a")
    b = BackendCandidate("tflite-runtime", "no_such_tflite.interpreter", "nope-b")
    with pytest.raises(InferenceError) as ei:
        select_backend(candidates=(a, b))
    assert ei.value.reason == "backend"
    assert "no_such_litert" in str(ei.value) and "no_such_tflite" in str(ei.value)
    assert isinstance(ei.value, EdgeError)


def test_backend_unknown_preference() -> None:
    with pytest.raises(InferenceError, match="Unknown inference backend 'onnx'"):
        select_backend("onnx")


def test_backend_preference_for_missing_implementation() -> None:
    b = BackendCandidate("tflite-runtime", "no_such_tflite.interpreter", "nope-b")
    with pytest.raises(InferenceError) as ei:
        select_backend("tflite-runtime", candidates=(DEFAULT_CANDIDATES[0], b))
    assert "no_such_tflite" in str(ei.value)


def test_required_delegate_missing_is_a_clear_error(backend: Backend, float_model: bytes) -> None:
    opts = LoadOptions(delegate=DelegateSpec("edgetpu"))
    with pytest.raises(InferenceError) as ei:
        Model.load("det", float_model, backend, options=opts)
    err = ei.value
    assert err.reason == "delegate" and err.model == "det"
    assert "libedgetpu.so.1" in str(err) and "delegate_optional" in str(err)


def test_optional_delegate_falls_back_to_cpu(backend: Backend, float_model: bytes) -> None:
    opts = LoadOptions(delegate=DelegateSpec("/nonexistent/libdelegate.so", optional=True))
    m = Model.load("det", float_model, backend, options=opts)
    assert m.delegate_in_use is None
    out = m.invoke_sync(np.ones((1, 4), np.float32))
    assert out[0].shape == (1, 3)


def test_garbage_bytes_fail_with_load_reason(backend: Backend) -> None:
    with pytest.raises(InferenceError) as ei:
        Model.load("junk", b"this is not a flatbuffer" * 10, backend)
    assert ei.value.reason == "load" and ei.value.model == "junk"
    with pytest.raises(InferenceError, match="empty"):
        Model.load("junk", b"", backend)


# -- float model ----------------------------------------------------------------------------------


def test_float_model_metadata_and_result(backend: Backend, float_model: bytes,
                                         fc_weights: tuple[np.ndarray, np.ndarray]) -> None:
    m = Model.load("fc", float_model, backend, source="mem")
    assert m.sha256 == hashlib.sha256(float_model).hexdigest()
    assert [t.shape for t in m.inputs] == [(1, 4)] and m.inputs[0].dtype == np.float32
    assert [t.shape for t in m.outputs] == [(1, 3)] and not m.outputs[0].quantized
    w, b = fc_weights
    x = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
    (y,) = m.invoke_sync(x)
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-5, atol=1e-5)
    # list and dict forms
    np.testing.assert_allclose(m.invoke_sync([x])[0], y)
    np.testing.assert_allclose(m.invoke_sync({"input": x})[0], y)
    assert m.stats.invocations == 3 and m.stats.errors == 0
    p50 = m.stats.percentile_ms(50)
    assert p50 is not None and p50 > 0


@pytest.mark.parametrize(
    ("arr", "reason", "expected", "got"),
    [
        (np.zeros((1, 5), np.float32), "shape", "[1, 4]", "[1, 5]"),
        (np.zeros((4,), np.float32), "shape", "[1, 4]", "[4]"),
        (np.zeros((1, 4), np.float64), "dtype", "float32", "float64"),
        (np.zeros((1, 4), np.int8), "dtype", "float32", "int8"),
    ],
)
def test_check_input_mismatch(backend: Backend, float_model: bytes, arr: np.ndarray, reason: str,
                              expected: str, got: str) -> None:
    m = Model.load("fc", float_model, backend)
    with pytest.raises(InferenceError) as ei:
        m.check_input(arr)
    err = ei.value
    assert (err.reason, err.model, err.tensor, err.expected, err.got) == (
        reason, "fc", "input", expected, got)
    assert "Model 'fc', input 'input'" in str(err)
    assert err.to_dict()["expected"] == expected


def test_check_input_count_and_names(backend: Backend, float_model: bytes) -> None:
    m = Model.load("fc", float_model, backend)
    x = np.zeros((1, 4), np.float32)
    with pytest.raises(InferenceError) as ei:
        m.check_input([x, x])
    assert ei.value.reason == "input-count"
    with pytest.raises(InferenceError) as ei:
        m.check_input({"imput": x})
    assert ei.value.reason == "input-name" and ei.value.tensor == "imput"
    with pytest.raises(InferenceError) as ei:
        m.check_input([[0.0, 1.0, 2.0, 3.0]])  # type: ignore[list-item]
    assert ei.value.reason == "dtype"


# -- quantized models -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["int8_model", "uint8_model"])
def test_quantized_model_takes_float_and_dequantizes(
        backend: Backend, which: str, request: pytest.FixtureRequest,
        fc_weights: tuple[np.ndarray, np.ndarray]) -> None:
    q: QuantFc = request.getfixturevalue(which)
    m = Model.load("q", q.content, backend)
    t_in, t_out = m.inputs[0], m.outputs[0]
    assert t_in.quantized and t_in.dtype == q.dtype
    assert t_in.scale == pytest.approx(q.q_in.scale) and t_in.zero_point == q.q_in.zero_point
    assert t_out.quantized and t_out.zero_point == q.q_out.zero_point
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.uniform(-2, 2, size=(1, 4)).astype(np.float32)
        (y,) = m.invoke_sync(x)
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, q.expected(x), atol=q.q_out.scale + 1e-6)
        w, b = fc_weights
        # and close to the float maths, within quantization error
        np.testing.assert_allclose(y, x @ w.T + b, atol=0.15)


def test_quantized_accepts_raw_integers_and_can_keep_raw_outputs(
        backend: Backend, int8_model: QuantFc) -> None:
    m = Model.load("q", int8_model.content, backend, options=LoadOptions(dequantize=False))
    x = np.array([[0.3, -0.7, 1.1, 0.0]], np.float32)
    xq = quantize(x, m.inputs[0])
    assert xq.dtype == np.int8
    (raw,) = m.invoke_sync(xq)
    assert raw.dtype == np.int8
    np.testing.assert_allclose(dequantize(raw, m.outputs[0]), int8_model.expected(x),
                               atol=int8_model.q_out.scale + 1e-6)
    with pytest.raises(InferenceError) as ei:
        m.check_input(np.zeros((1, 4), np.uint8))
    assert ei.value.reason == "dtype" and "int8 or float" in str(ei.value.expected)


def test_quantize_clips_and_rounds() -> None:
    t = TensorInfo("x", 0, (3,), (3,), np.dtype(np.int8), 0.5, 10)
    q = quantize(np.array([1000.0, -1000.0, 0.26], np.float32), t)
    assert q.tolist() == [127, -128, 11]
    np.testing.assert_allclose(dequantize(q, t), [58.5, -69.0, 0.5])


# -- async invokes --------------------------------------------------------------------------------


async def test_async_invoke_runs_off_loop_on_one_thread(backend: Backend, float_model: bytes) -> None:
    m = Model.load("fc", float_model, backend)
    threads: set[int] = set()
    orig = m._run

    def spy(arrays: list[np.ndarray]) -> list[np.ndarray]:
        threads.add(threading.get_ident())
        return orig(arrays)

    m._run = spy  # type: ignore[method-assign]
    x = np.ones((1, 4), np.float32)
    results = await asyncio.wait_for(asyncio.gather(*(m.invoke(x) for _ in range(50))), 10)
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert all(np.array_equal(r[0], results[0][0]) for r in results)
    assert m.stats.invocations == 50
    m.close()
    with pytest.raises(InferenceError, match="closed"):
        await m.invoke(x)


async def test_event_loop_keeps_ticking_during_invokes(backend: Backend, float_model: bytes) -> None:
    m = Model.load("fc", float_model, backend)
    orig = m._run

    def slow(arrays: list[np.ndarray]) -> list[np.ndarray]:
        time.sleep(0.05)
        return orig(arrays)

    m._run = slow  # type: ignore[method-assign]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    await asyncio.wait_for(asyncio.gather(*(m.invoke(np.ones((1, 4), np.float32))
                                            for _ in range(4))), 5)
    task.cancel()
    assert ticks >= 10  # ~200 ms of invokes; the loop was never blocked
    m.close()


async def test_async_invoke_counts_input_errors(backend: Backend, float_model: bytes) -> None:
    m = Model.load("fc", float_model, backend)
    with pytest.raises(InferenceError):
        await m.invoke(np.zeros((2, 4), np.float32))
    assert m.stats.errors == 1 and "expected shape" in (m.stats.last_error or "")
    m.close()


async def test_real_invokes_do_not_block_the_loop(backend: Backend) -> None:
    from edge.inference.blazeface import face_model_path

    m = Model.load("face", face_model_path().read_bytes(), backend)
    x = np.zeros((1, 128, 128, 3), np.float32)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    for _ in range(40):
        await m.invoke(x)
    elapsed = time.perf_counter() - start
    task.cancel()
    # the interpreter releases the GIL: the loop spins many times per invoke
    assert ticks > 40 * 5, (ticks, elapsed)
    m.close()
