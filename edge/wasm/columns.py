"""Runtime side of batches: the copy-mode batch file, the shared-mode output area, and the
checked copy of a shared tick's results back into the world.

Shared mode (docs/sandbox.md, "Shared world columns"): the worker maps the world's column files
read-only and writes what the component writes into the component's :class:`OutputArea`
(one column per write column, rows in batch order). When the tick's reply arrives the runtime
copies back, with :meth:`WorldColumns.scatter`, only the write columns the reply says were
written and only the batch's rows, to the batch's slots: whatever the worker does, it cannot
change a column outside the manifest's write set nor a slot outside its batch.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.errors import SandboxError

F64 = np.ndarray


class _File:
    """A file in the pool's shared memory directory, mapped by both processes."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, max(size, 8))
            self.map = mmap.mmap(fd, max(size, 8))
        finally:
            os.close(fd)

    def discard(self) -> None:
        # The mapping stays valid while views of it exist; only the name goes.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class CopyBatch(_File):
    """Copy mode: every batch column, filled by the caller and read back after the tick."""

    def __init__(self, path: Path, ncols: int, capacity: int) -> None:
        super().__init__(path, ncols * capacity * 8)
        self.ncols = ncols
        self.capacity = capacity
        self.array = np.frombuffer(self.map, dtype=np.float64,
                                   count=ncols * capacity).reshape(ncols, capacity)
        self._views: tuple[int, list[np.ndarray]] = (-1, [])

    def views(self, n: int) -> list[np.ndarray]:
        if self._views[0] != n:
            self._views = (n, [self.array[c, :n] for c in range(self.ncols)])
        return self._views[1]


class OutputArea(_File):
    """Shared mode: the rows a worker wrote, one column per write column (writable order)."""

    def __init__(self, path: Path, nwrite: int, capacity: int) -> None:
        super().__init__(path, nwrite * capacity * 8)
        self.capacity = capacity
        self.array = np.frombuffer(self.map, dtype=np.float64,
                                   count=nwrite * capacity).reshape(nwrite, capacity)


class WorldColumns:
    """The runtime's own writable mapping of a shared batch's write columns."""

    def __init__(self, columns: Sequence[tuple[str, int, int]], writable: Sequence[int]) -> None:
        self.key = tuple(columns)
        self.arrays: list[np.ndarray] = []
        for col in writable:
            path, ino, nbytes = columns[col]
            self.arrays.append(_map_world_column(path, ino, nbytes))

    def scatter(self, out: OutputArea, written: int, n: int, index: np.ndarray | None) -> int:
        """Copy the first ``n`` rows of every output column whose bit is set in ``written``
        (already checked against the write set) into the world, at the batch's slots.
        Returns the number of columns copied."""
        copied = 0
        for k, arr in enumerate(self.arrays):
            if not written >> k & 1:
                continue
            rows = out.array[k, :n]
            if index is None:
                arr[:n] = rows
            else:
                arr[index[:n]] = rows
            copied += 1
        return copied


def _map_world_column(path: str, ino: int, nbytes: int) -> np.ndarray:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise SandboxError(f"cannot open the world column {path}: {exc.strerror}",
                           reason="columns") from exc
    try:
        st = os.fstat(fd)
        if st.st_ino != ino or st.st_size < nbytes or nbytes % 8:
            raise SandboxError(f"{path} is not the world column named ({nbytes} bytes)",
                               reason="columns")
        return np.frombuffer(mmap.mmap(fd, nbytes), dtype=np.float64)
    finally:
        os.close(fd)
