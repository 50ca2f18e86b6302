"""Fixtures of the policy tests: the compiled ``relay`` test component (tests/wasm/components), and a
started runtime of the test module's ``CONFIG`` with its ``POLICY`` file (``rt``)."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.config import load_config
from edge.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def relay_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.spec_from_file_location("edge_components_build", ROOT / "components" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    out = tmp_path_factory.mktemp("wasm") / "relay.wasm"
    return Path(build.compile_wasm([ROOT / "tests" / "wasm" / "components" / "relay.c"], out))


@pytest.fixture
async def rt(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runtime]:
    """A runtime of the module's ``CONFIG`` (device.toml) with its ``POLICY`` as policy.toml."""
    (tmp_path / "policy.toml").write_text(request.module.POLICY)
    (tmp_path / "device.toml").write_text(request.module.CONFIG)
    runtime = Runtime(load_config(tmp_path / "device.toml", data_dir=tmp_path / "data"))
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()

