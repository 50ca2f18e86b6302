"""Fixtures of the sandbox tests (a test module may define its own with the same name)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sandbox_support import DEVICE, Recorder, build_module, compile_test_components

from edge.wasm.pool import SandboxPool


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    build_module().build()
    return compile_test_components(tmp_path_factory.mktemp("wasm"))


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def pool(rec: Recorder) -> AsyncIterator[SandboxPool]:
    p = SandboxPool(DEVICE, rec, backoff_base_s=0.05, deadline_s=5.0)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fuzzing slice's counts (tests/wasm/test_fuzz.py), when it ran."""
    fuzz = sys.modules.get("fuzz")
    stats = getattr(fuzz, "SLICE", None)
    if stats is not None and stats.executions:
        terminalreporter.write_line(
            f"fuzz slice (tests/wasm/test_fuzz.py): {stats.executions:,} executions of the "
            f"prepare path, {stats.prepared:,} accepted, {stats.worker_runs:,} worker runs")
