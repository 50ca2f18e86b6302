"""Fixtures for the inference tests: the real backend, tiny generated models, the face model."""

from __future__ import annotations

import numpy as np
import pytest
from tflite_modelgen import QuantFc, QuantParams, float_fc, quant_fc

from edge.inference.backend import Backend, select_backend

RNG_SEED = 7


@pytest.fixture(scope="session")
def backend() -> Backend:
    return select_backend()


@pytest.fixture(scope="session")
def fc_weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(RNG_SEED)
    return rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=3).astype(np.float32)


@pytest.fixture(scope="session")
def float_model(fc_weights: tuple[np.ndarray, np.ndarray]) -> bytes:
    return float_fc(*fc_weights)


@pytest.fixture(scope="session")
def int8_model(fc_weights: tuple[np.ndarray, np.ndarray]) -> QuantFc:
    return quant_fc(*fc_weights, np.int8, QuantParams(0.02, -3), QuantParams(0.05, 2))


@pytest.fixture(scope="session")
def uint8_model(fc_weights: tuple[np.ndarray, np.ndarray]) -> QuantFc:
    return quant_fc(*fc_weights, np.uint8, QuantParams(0.02, 128), QuantParams(0.05, 130))
