"""Fixtures of the policy tests: the compiled ``relay`` test component (tests/wasm/components)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def relay_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.spec_from_file_location("edge_components_build", ROOT / "components" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    out = tmp_path_factory.mktemp("wasm") / "relay.wasm"
    return Path(build.compile_wasm([ROOT / "tests" / "wasm" / "components" / "relay.c"], out))
