"""One loaded TFLite model: tensor metadata, input checks, (de)quantization, off-loop invokes.

A TFLite interpreter is not thread-safe, so each :class:`Model` owns one worker thread: all
invokes for one model run one after the other on that thread, while the event loop stays free.
Quantized tensors (int8 / uint8 / int16 with a non-zero scale) accept float input, quantized with
the tensor's ``scale`` / ``zero_point``; quantized outputs are dequantized to float32 (unless the
model was loaded with ``dequantize=False``). Arrays already in the tensor's integer dtype pass
through unchanged. Float tensors take float32 only: no silent casts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt

from edge.inference.backend import DEFAULT_NUM_THREADS, Backend, DelegateSpec
from edge.inference.errors import InferenceError

log = logging.getLogger("edge.inference")

LATENCY_WINDOW = 1024
"""How many recent invoke latencies feed the p50 / p99 figures."""

T = TypeVar("T")

QUANTIZED_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16))

Inputs: TypeAlias = npt.NDArray[Any] | Sequence[npt.NDArray[Any]] | Mapping[str, npt.NDArray[Any]]
"""One array (single-input models), a list in input order, or a dict keyed by tensor name."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """An input or output tensor. ``shape_signature`` has -1 for dimensions that may vary."""

    name: str
    index: int
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and self.dtype in QUANTIZED_DTYPES

    @classmethod
    def from_details(cls, d: Mapping[str, Any]) -> TensorInfo:
        scale, zero_point = d.get("quantization", (0.0, 0))
        sig = d.get("shape_signature", d["shape"])
        return cls(
            name=str(d["name"]), index=int(d["index"]),
            shape=tuple(int(x) for x in d["shape"]), shape_signature=tuple(int(x) for x in sig),
            dtype=np.dtype(d["dtype"]), scale=float(scale), zero_point=int(zero_point),
        )

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": str(self.dtype)}
        if self.quantized:
            out.update(scale=self.scale, zero_point=self.zero_point)
        return out


def quantize(x: npt.NDArray[Any], t: TensorInfo) -> npt.NDArray[Any]:
    """Float -> the tensor's integer dtype with its scale / zero point (round half to even, clip)."""
    info = np.iinfo(t.dtype)
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(t.scale)) + t.zero_point
    out: npt.NDArray[Any] = np.clip(q, info.min, info.max).astype(t.dtype)
    return out


def dequantize(q: npt.NDArray[Any], t: TensorInfo) -> npt.NDArray[np.float32]:
    """The tensor's integer dtype -> float32."""
    return ((q.astype(np.float32) - np.float32(t.zero_point)) * np.float32(t.scale)).astype(
        np.float32)


class ModelStats:
    """Invocation counters and a window of recent latencies (seconds, compute time on the worker)."""

    def __init__(self, window: int = LATENCY_WINDOW) -> None:
        self.invocations = 0
        self.errors = 0
        self.last_error: str | None = None
        self._latencies: deque[float] = deque(maxlen=window)

    def record(self, seconds: float) -> None:
        self.invocations += 1
        self._latencies.append(seconds)

    def record_error(self, err: BaseException) -> None:
        self.errors += 1
        self.last_error = str(err)

    def percentile_ms(self, q: float) -> float | None:
        if not self._latencies:
            return None
        return float(np.percentile(np.fromiter(self._latencies, dtype=np.float64), q)) * 1e3


_STOP = object()


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.cancelled():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class _Worker:
    """One daemon thread running submitted calls in order (a model's interpreter is not
    thread-safe). Lighter than a ThreadPoolExecutor hop: one queue put, one loop callback."""

    def __init__(self, name: str) -> None:
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            fn, arg, loop, fut = item
            try:
                ok, value = True, fn(arg)
            except BaseException as exc:  # noqa: BLE001  handed to the awaiting coroutine
                ok, value = False, exc
            try:
                loop.call_soon_threadsafe(_settle, fut, ok, value)
            except RuntimeError:  # the loop closed while we ran
                pass

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._q.put((fn, arg, loop, fut))
        return fut

    def stop(self) -> None:
        """Calls already submitted still run; then the thread ends."""
        self._q.put(_STOP)


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """How to build the interpreter for a model."""

    num_threads: int = DEFAULT_NUM_THREADS
    delegate: DelegateSpec | None = None
    dequantize: bool = True


class Model:
    """A ready model. Build with :meth:`load` (blocking) or :meth:`open` (async)."""

    def __init__(
        self, name: str, interpreter: Any, backend: Backend, *, sha256: str, size: int,
        source: str = "", options: LoadOptions = LoadOptions(), delegate_in_use: str | None = None,
    ) -> None:
        self.name = name
        self.backend = backend
        self.sha256 = sha256
        self.size = size
        self.source = source
        self.options = options
        self.delegate_in_use = delegate_in_use
        self.loaded_at = time.time()
        self.stats = ModelStats()
        self._interp = interpreter
        self._inputs = tuple(TensorInfo.from_details(d) for d in interpreter.get_input_details())
        self._outputs = tuple(TensorInfo.from_details(d) for d in interpreter.get_output_details())
        self._shapes: list[tuple[int, ...]] = [t.shape for t in self._inputs]
        self._worker: _Worker | None = None
        self._closed = False

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def load(cls, name: str, content: bytes, backend: Backend, *, options: LoadOptions = LoadOptions(),
             source: str = "") -> Model:
        """Build a model from the ``.tflite`` file bytes (blocking: run it in a thread)."""
        if not content:
            raise InferenceError(f"Model '{name}' is empty ({source or 'no source'}).",
                                 model=name, reason="load")
        interp, used = backend.make_interpreter(
            content, num_threads=options.num_threads, delegate=options.delegate, model=name)
        return cls(name, interp, backend, sha256=hashlib.sha256(content).hexdigest(),
                   size=len(content), source=source, options=options, delegate_in_use=used)

    @classmethod
    async def open(cls, name: str, content: bytes, backend: Backend, *,
                   options: LoadOptions = LoadOptions(), source: str = "") -> Model:
        """:meth:`load` on a worker thread."""
        return await asyncio.to_thread(cls.load, name, content, backend, options=options,
                                       source=source)

    # -- metadata -----------------------------------------------------------------------------

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._outputs

    @property
    def interpreter(self) -> Any:
        """The raw interpreter (not thread-safe: only touch it when no invoke is running)."""
        return self._interp

    # -- input checks -------------------------------------------------------------------------

    def _as_list(self, inputs: Inputs) -> list[npt.NDArray[Any]]:
        if isinstance(inputs, np.ndarray):
            arrays: list[Any] = [inputs]
        elif isinstance(inputs, Mapping):
            known = {t.name for t in self._inputs}
            unknown = sorted(set(inputs) - known)
            if unknown:
                raise InferenceError(
                    f"Model '{self.name}' has no input tensor named {', '.join(unknown)}; "
                    f"inputs are: {', '.join(sorted(known))}.",
                    model=self.name, tensor=unknown[0], expected=", ".join(sorted(known)),
                    reason="input-name")
            missing = [t.name for t in self._inputs if t.name not in inputs]
            if missing:
                raise InferenceError(
                    f"Model '{self.name}': input tensor '{missing[0]}' is missing.",
                    model=self.name, tensor=missing[0], reason="input-name")
            arrays = [inputs[t.name] for t in self._inputs]
        else:
            arrays = list(inputs)
        if len(arrays) != len(self._inputs):
            raise InferenceError(
                f"Model '{self.name}' takes {len(self._inputs)} input(s), got {len(arrays)}.",
                model=self.name, expected=str(len(self._inputs)), got=str(len(arrays)),
                reason="input-count")
        for i, a in enumerate(arrays):
            if not isinstance(a, np.ndarray):
                raise InferenceError(
                    f"Model '{self.name}': input '{self._inputs[i].name}' must be a numpy array, "
                    f"got {type(a).__name__}.", model=self.name, tensor=self._inputs[i].name,
                    expected="numpy.ndarray", got=type(a).__name__, reason="dtype")
        return arrays

    def check_input(self, inputs: Inputs) -> list[npt.NDArray[Any]]:
        """Validate shapes and dtypes; return the arrays in input order (not yet quantized).

        Raises :class:`InferenceError` (reason ``shape`` or ``dtype``) naming the model, the tensor
        and the expected vs received shape / dtype.
        """
        arrays = self._as_list(inputs)
        for t, a in zip(self._inputs, arrays, strict=True):
            sig = t.shape_signature or t.shape
            if len(a.shape) != len(sig) or any(
                    s != -1 and s != d for s, d in zip(sig, a.shape, strict=True)):
                raise InferenceError(
                    f"Model '{self.name}', input '{t.name}': expected shape {list(sig)}, "
                    f"got {list(a.shape)}.", model=self.name, tensor=t.name,
                    expected=str(list(sig)), got=str(list(a.shape)), reason="shape")
            ok = a.dtype == t.dtype or (t.quantized and a.dtype.kind == "f")
            if not ok:
                want = f"{t.dtype} or float (quantized)" if t.quantized else str(t.dtype)
                raise InferenceError(
                    f"Model '{self.name}', input '{t.name}': expected dtype {want}, got {a.dtype}.",
                    model=self.name, tensor=t.name, expected=want, got=str(a.dtype),
                    reason="dtype")
        return arrays

    # -- running ------------------------------------------------------------------------------

    def _run(self, arrays: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        start = time.perf_counter()
        try:
            interp = self._interp
            resized = False
            for i, (t, a) in enumerate(zip(self._inputs, arrays, strict=True)):
                if a.shape != self._shapes[i]:
                    interp.resize_tensor_input(t.index, list(a.shape))
                    self._shapes[i] = a.shape
                    resized = True
            if resized:
                interp.allocate_tensors()
            for t, a in zip(self._inputs, arrays, strict=True):
                if t.quantized and a.dtype != t.dtype:
                    a = quantize(a, t)
                interp.set_tensor(t.index, np.ascontiguousarray(a))
            interp.invoke()
            outs: list[npt.NDArray[Any]] = []
            for t in self._outputs:
                o = interp.get_tensor(t.index)
                if t.quantized and self.options.dequantize:
                    o = dequantize(o, t)
                outs.append(o)
        except Exception as exc:
            self.stats.record_error(exc)
            raise InferenceError(f"Model '{self.name}' failed to run: {exc}", model=self.name,
                                 reason="invoke", got=str(exc)) from exc
        self.stats.record(time.perf_counter() - start)
        return outs

    def invoke_sync(self, inputs: Inputs) -> list[npt.NDArray[Any]]:
        """Check and run on the calling thread (tests, benchmarks; never on the event loop)."""
        return self._run(self.check_input(inputs))

    async def invoke(self, inputs: Inputs) -> list[npt.NDArray[Any]]:
        """Check, then run on this model's own thread. Outputs in output order, dequantized."""
        if self._closed:
            raise InferenceError(f"Model '{self.name}' is closed.", model=self.name,
                                 reason="closed")
        try:
            arrays = self.check_input(inputs)
        except InferenceError as exc:
            self.stats.record_error(exc)
            raise
        return await self.submit(lambda m: m._run(arrays))

    async def submit(self, fn: Callable[[Model], T]) -> T:
        """Run ``fn(self)`` on this model's thread, in turn with its invokes (one hop for
        pre-process + :meth:`invoke_sync` + post-process, none of it on the event loop)."""
        if self._closed:
            raise InferenceError(f"Model '{self.name}' is closed.", model=self.name,
                                 reason="closed")
        if self._worker is None:
            self._worker = _Worker(f"infer-{self.name}")
        result: T = await self._worker.submit(fn, self)
        return result

    def close(self) -> None:
        """Refuse new invokes; invokes already queued still finish on the model's thread."""
        self._closed = True
        if self._worker is not None:
            self._worker.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend.label, "source": self.source, "sha256": self.sha256,
            "size": self.size, "threads": self.options.num_threads,
            "delegate": self.delegate_in_use,
            "inputs": [t.describe() for t in self._inputs],
            "outputs": [t.describe() for t in self._outputs],
        }
