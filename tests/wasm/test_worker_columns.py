"""Batch columns in the worker (edge.wasm.worker.columns), in this process with a real world:
world columns are mapped read-only, writes go to the output area and are marked written."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import pytest
from sandbox_support import DEVICE, demo

from edge.wasm.abi import prepare_module
from edge.wasm.protocol import BindSpec, LoadSpec
from edge.wasm.worker import Instance
from edge.wasm.worker.columns import map_column
from edge.world.store import World


@pytest.fixture
def physics(components_dir: Path) -> Instance:
    m = demo("physics")
    wasm, _ = prepare_module(m.module.read_bytes(), m)
    inst = Instance(LoadSpec(name="physics", wasm=wasm, device=DEVICE, ncols=len(m.columns),
                             writable=m.writable, publish=(), gas=m.limits.gas,
                             publish_per_call=1, kv={}, stack_bytes=64 * 1024))
    assert inst.start()
    return inst


def world(n: int) -> World:
    w = World(shared=True, capacity=n)
    for i in range(n):
        w.spawn(f"e{i}", components={"position": {"x": i}, "velocity": {"x": 1.0, "y": 2.0}})
    return w


def test_world_columns_are_mapped_read_only(physics: Instance, tmp_path: Path) -> None:
    w = world(4)
    m = demo("physics")
    refs = w.shared_refs(m.columns)
    assert refs is not None
    out = tmp_path / "out"
    out.write_bytes(bytes(3 * 4 * 8))
    physics.bind(BindSpec(4, tuple((r.path, r.ino, r.nbytes) for r in refs), None, None,
                          (str(out), 4)))
    cols = physics.columns
    assert all(v.readonly for v in cols.wviews)
    assert cols.wcols == []  # contiguous slots: no numpy views (nor numpy) in the worker
    with pytest.raises(TypeError):
        cols.wviews[3][0:8] = bytes(8)
    index = np.arange(4, dtype=np.intp).tobytes()  # a sparse bind reads through numpy views
    physics.bind(BindSpec(4, tuple((r.path, r.ino, r.nbytes) for r in refs), index, None, (str(out), 4)))
    cols = physics.columns
    assert cols.wcols and not any(a.flags.writeable for a in cols.wcols)
    with pytest.raises(ValueError):
        cols.wcols[3][0] = 9.0
    fd = os.open(refs[3].path, os.O_RDONLY)
    try:
        with pytest.raises(PermissionError):
            mmap.mmap(fd, refs[3].nbytes, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    with pytest.raises(TypeError):  # the view map_column returns cannot be written either
        memoryview(map_column(refs[0].path, refs[0].ino, refs[0].nbytes))[0:1] = b"\x00"

    before = {name: w.column(name).copy() for name in m.columns}
    physics.result.reset()
    physics.tick(4, 0.5, True)
    assert physics.result.fault is None and physics.result.written == 0b111
    for name in m.columns:  # the worker changed nothing in the world
        np.testing.assert_array_equal(w.column(name), before[name])
    rows = np.frombuffer(out.read_bytes()).reshape(3, 4)
    np.testing.assert_allclose(rows[0], [0.5, 1.5, 2.5, 3.5])  # x + vx * dt, in batch order
    np.testing.assert_allclose(rows[1], [1.0] * 4)
    physics.close()
    w.close()
