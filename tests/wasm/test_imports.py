"""The host imports (edge.wasm.worker.imports) on a real compiled component: a pointer/length
pair outside linear memory traps whatever the other arguments are (docs/abi.md)."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest
from sandbox_support import Recorder, manifest

from edge.wasm.pool import SandboxPool

pytestmark = pytest.mark.timeout(60)

SUBJECT = "edge.dev1.cmd.lc"


async def send(pool: SandboxPool, rec: Recorder, tmp_path: Path, modules: dict[str, Path],
               what: bytes) -> list[int]:
    """Load the lifecycle component, send it one message, return the results it published."""
    await pool.load(manifest(tmp_path, "lc", modules["lifecycle"], subscribe=(SUBJECT,),
                             publish=("edge.dev1.evt.lifecycle",)))
    await pool.deliver("lc", [(SUBJECT, what)])
    await pool.flush()
    return [struct.unpack("<i", data)[0] for _, _, data in rec.published]


@pytest.mark.parametrize(("what", "text"), [
    (b"L", "log: range ("),                # a huge length is not cut short: it traps
    (b"K", "kv_get: buffer (2147483632, 16)"),  # also when the key is absent
    (b"P", "kv_put: range (2147483632, 1000)"),  # also when the key is too long anyway
])
async def test_a_pair_outside_linear_memory_traps(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, modules: dict[str, Path],
        what: bytes, text: str) -> None:
    assert await send(pool, rec, tmp_path, modules, what) == []
    (fault,) = [f for c, f in rec.faults if c == "lc"]
    assert fault.reason == "trap" and fault.export == "edge_on_message"
    assert text in fault.message and "is outside linear memory" in fault.message


async def test_inside_linear_memory_the_error_codes_hold(
        pool: SandboxPool, rec: Recorder, tmp_path: Path, modules: dict[str, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge.wasm.component")
    assert await send(pool, rec, tmp_path, modules, b"k") == [-1]  # absent key
    assert await send(pool, rec, tmp_path, modules, b"l") == [-1, 0]  # a long line is cut
    (line,) = [r.getMessage() for r in caplog.records if "xxx" in r.getMessage()]
    assert "x" * 1024 in line and "x" * 1025 not in line
    assert rec.faults == []
