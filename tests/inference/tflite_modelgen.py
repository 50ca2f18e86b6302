"""Build tiny FULLY_CONNECTED TFLite models in memory (no TensorFlow), for the inference tests.

``y = x @ W.T + b`` with ``x`` of shape [1, n_in]. Float models store float32 weights; quantized
models (int8 or uint8) store quantized weights, an int32 bias with scale ``s_in * s_w`` and per-tensor
scale / zero point on input and output, as a converter would.
"""

from __future__ import annotations

from dataclasses import dataclass

import flatbuffers  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
from ai_edge_litert import schema_py_generated as schema


@dataclass(frozen=True)
class QuantParams:
    scale: float
    zero_point: int


def _quant(q: QuantParams | None) -> schema.QuantizationParametersT | None:
    if q is None:
        return None
    p = schema.QuantizationParametersT()
    p.scale = [q.scale]
    p.zeroPoint = [q.zero_point]
    return p


def _tensor(name: str, shape: list[int], ttype: int, buffer: int,
            q: QuantParams | None = None) -> schema.TensorT:
    t = schema.TensorT()
    t.name = name
    t.shape = shape
    t.type = ttype
    t.buffer = buffer
    t.quantization = _quant(q)
    return t


def _buffer(data: bytes | None) -> schema.BufferT:
    b = schema.BufferT()
    if data is not None:
        b.data = list(data)
    return b


def _pack(tensors: list[schema.TensorT], buffers: list[schema.BufferT]) -> bytes:
    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.FULLY_CONNECTED
    code.deprecatedBuiltinCode = schema.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    op = schema.OperatorT()
    op.opcodeIndex = 0
    op.inputs = [0, 1, 2]
    op.outputs = [3]
    op.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = schema.FullyConnectedOptionsT()
    graph = schema.SubGraphT()
    graph.tensors = tensors
    graph.inputs = [0]
    graph.outputs = [3]
    graph.operators = [op]
    graph.name = "main"
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes = [code]
    model.subgraphs = [graph]
    model.buffers = buffers
    model.description = "test fully connected"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def float_fc(weights: npt.NDArray[np.float32], bias: npt.NDArray[np.float32]) -> bytes:
    """A float32 FULLY_CONNECTED model: input [1, n_in] float32, output [1, n_out] float32."""
    n_out, n_in = weights.shape
    f32 = schema.TensorType.FLOAT32
    tensors = [
        _tensor("input", [1, n_in], f32, 1),
        _tensor("weights", [n_out, n_in], f32, 2),
        _tensor("bias", [n_out], f32, 3),
        _tensor("output", [1, n_out], f32, 4),
    ]
    buffers = [_buffer(None), _buffer(None),
               _buffer(weights.astype("<f4").tobytes()), _buffer(bias.astype("<f4").tobytes()),
               _buffer(None)]
    return _pack(tensors, buffers)


@dataclass(frozen=True)
class QuantFc:
    """A quantized FC model and what it was built from, to compute the expected result."""

    content: bytes
    dtype: type[np.integer]  # np.int8 or np.uint8
    q_in: QuantParams
    q_w: QuantParams
    q_out: QuantParams
    w_q: npt.NDArray[np.int32]
    b_q: npt.NDArray[np.int32]

    def expected(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Reference result in numpy: quantize x, integer matmul, requantize, dequantize."""
        info = np.iinfo(self.dtype)
        xq = np.clip(np.round(x / self.q_in.scale) + self.q_in.zero_point, info.min, info.max)
        acc = (xq.astype(np.int64) - self.q_in.zero_point) @ (
            self.w_q.astype(np.int64) - self.q_w.zero_point).T + self.b_q
        real = acc * (self.q_in.scale * self.q_w.scale)
        yq = np.clip(np.round(real / self.q_out.scale) + self.q_out.zero_point, info.min, info.max)
        out: npt.NDArray[np.float32] = ((yq - self.q_out.zero_point) * self.q_out.scale).astype(
            np.float32)
        return out


def quant_fc(weights: npt.NDArray[np.float32], bias: npt.NDArray[np.float32], dtype: type[np.integer],
             q_in: QuantParams, q_out: QuantParams) -> QuantFc:
    """Quantize ``weights``/``bias`` and build an int8 or uint8 FULLY_CONNECTED model."""
    n_out, n_in = weights.shape
    info = np.iinfo(dtype)
    w_absmax = float(np.abs(weights).max()) or 1.0
    if dtype == np.int8:
        ttype = schema.TensorType.INT8
        q_w = QuantParams(w_absmax / 127.0, 0)
    else:
        ttype = schema.TensorType.UINT8
        q_w = QuantParams(w_absmax / 127.0, 128)
    w_q = np.clip(np.round(weights / q_w.scale) + q_w.zero_point, info.min, info.max).astype(np.int32)
    b_scale = q_in.scale * q_w.scale
    b_q = np.round(bias / b_scale).astype(np.int32)
    tensors = [
        _tensor("input", [1, n_in], ttype, 1, q_in),
        _tensor("weights", [n_out, n_in], ttype, 2, q_w),
        _tensor("bias", [n_out], schema.TensorType.INT32, 3, QuantParams(b_scale, 0)),
        _tensor("output", [1, n_out], ttype, 4, q_out),
    ]
    buffers = [_buffer(None), _buffer(None), _buffer(w_q.astype(dtype).tobytes()),
               _buffer(b_q.astype("<i4").tobytes()), _buffer(None)]
    return QuantFc(_pack(tensors, buffers), dtype, q_in, q_w, q_out, w_q, b_q)
