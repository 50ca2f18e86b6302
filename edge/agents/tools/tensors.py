"""Tensors in tool requests and replies: nested JSON lists or base64 little-endian bytes."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.agents.tools.errors import ToolError

MAX_JSON_ELEMENTS = 100_000  # larger model outputs must be asked for as base64


def tensor_in(spec: Mapping[str, Any], default_dtype: np.dtype[Any], where: str) -> npt.NDArray[Any]:
    dtype = np.dtype(spec["dtype"]) if "dtype" in spec else default_dtype
    if "b64" in spec:
        if "shape" not in spec or "dtype" not in spec:
            raise ToolError(f"{where}: 'b64' needs 'shape' and 'dtype'", tool="run_model")
        try:
            raw = base64.b64decode(spec["b64"], validate=True)
        except ValueError as err:
            raise ToolError(f"{where}: 'b64' is not base64: {err}", tool="run_model") from err
        shape = tuple(int(d) for d in spec["shape"])
        want = int(np.prod(shape)) * dtype.itemsize
        if len(raw) != want:
            raise ToolError(f"{where}: {len(raw)} bytes do not fill shape {list(shape)} of {dtype} "
                            f"({want} bytes)", tool="run_model")
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    if "data" not in spec:
        raise ToolError(f"{where}: give 'data' (nested lists) or 'b64' + 'shape' + 'dtype'", tool="run_model")
    try:
        arr = np.asarray(spec["data"], dtype=dtype)
    except (ValueError, TypeError) as err:
        raise ToolError(f"{where}: 'data' is not a regular array of numbers: {err}", tool="run_model") from err
    if "shape" in spec and list(arr.shape) != [int(d) for d in spec["shape"]]:
        raise ToolError(f"{where}: data has shape {list(arr.shape)}, not {spec['shape']}", tool="run_model")
    return arr


def tensor_out(arr: npt.NDArray[Any], encoding: str) -> dict[str, Any]:
    out: dict[str, Any] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
    if encoding == "b64":
        out["b64"] = base64.b64encode(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()).decode()
    elif arr.size > MAX_JSON_ELEMENTS:
        raise ToolError(f"output of {arr.size} elements is too large for JSON; ask for output_encoding 'b64'",
                        tool="run_model")
    else:
        out["data"] = arr.tolist()
    return out
