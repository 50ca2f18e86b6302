"""Worker side of a batch: the column memory ``col_read`` and ``col_write`` reach.

*Copy* mode (``setup``): one runtime-owned batch file holding every column, read and written in
place; the runtime copies only the write columns back into the world.

*Shared* mode (``bind``): the world's own column files, mapped **read-only** (``O_RDONLY`` +
``PROT_READ``: a store into them faults), and the component's *output area*, a runtime-owned
file with one row-per-entity column for each write column. ``col_write`` goes to the output
area and sets a bit in :attr:`Columns.written`; the runtime copies the written columns back
into the world for the batch's slots only. ``col_read`` of a column written earlier in the same
tick reads the output area, so a component sees its own writes as before.

numpy is imported only when a batch's slots are not contiguous (the gather by slot index): a
worker whose systems run over contiguous batches never loads it (about 20 MB of RSS).
"""

from __future__ import annotations

import mmap
import os
from types import ModuleType
from typing import TYPE_CHECKING, Any

from edge.wasm.protocol import BindSpec

if TYPE_CHECKING:
    import numpy.typing as npt

F64 = Any  # a float64 numpy array (numpy is imported only for sparse batches)
#: Write columns a shared batch can have (the written bitmask is 64 bits).
MAX_SHARED_WRITE_COLUMNS = 64


class Columns:
    """The batch columns of one instance, over its (pinned) linear memory ``mem``."""

    def __init__(self, mem: memoryview, ncols: int, writable: tuple[int, ...]) -> None:
        self.mem = mem
        self.memf64: F64 | None = None
        self.ncols = ncols
        self.out_pos = {col: k for k, col in enumerate(writable)}  # column -> output column
        self.shared = False  # the running tick uses the shared batch
        # copy mode
        self.cols: memoryview | None = None
        self.cols_map: mmap.mmap | None = None
        self.stride = 0
        # shared mode
        self.maps: dict[tuple[str, int], mmap.mmap] = {}
        self.wcols: list[F64] = []
        self.wviews: list[memoryview] = []
        self.index: npt.NDArray[Any] | None = None
        self.bound_n = -1
        self.out_map: mmap.mmap | None = None
        self.out_views: list[memoryview] = []
        self.written = 0

    # -- copy mode -------------------------------------------------------------------------------

    def unmap(self) -> None:
        if self.cols is not None:
            self.cols.release()
            self.cols = None
        if self.cols_map is not None:
            self.cols_map.close()
            self.cols_map = None

    def map_batch(self, path: str, capacity: int) -> None:
        self.unmap()
        size = self.ncols * capacity * 8
        fd = os.open(path, os.O_RDWR)
        try:
            self.cols_map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.cols = memoryview(self.cols_map)
        self.stride = capacity * 8

    # -- shared mode -----------------------------------------------------------------------------

    def unbind(self) -> None:
        for view in (*self.wviews, *self.out_views):
            view.release()
        self.wviews = []
        self.wcols = []
        self.out_views = []
        self.out_map = None
        self.index = None
        self.bound_n = -1
        self.maps = {}  # unmapped once the last view is gone

    def bind(self, spec: BindSpec) -> None:
        """Map the world's column files read-only (mappings are kept and reused) and the output
        area read-write."""
        old = self.maps
        self.unbind()  # a failed bind leaves nothing bound: a shared tick then fails
        if len(self.out_pos) > MAX_SHARED_WRITE_COLUMNS:
            raise ValueError(f"bind: {len(self.out_pos)} write columns, at most "
                             f"{MAX_SHARED_WRITE_COLUMNS} in shared mode")
        np = _numpy() if spec.index is not None else None
        index = np.frombuffer(spec.index, dtype=np.intp) if np is not None and spec.index is not None else None
        maps: dict[tuple[str, int], mmap.mmap] = {}
        for path, ino, nbytes in spec.columns:
            key = (path, ino)
            m = maps.get(key) or old.get(key)
            if m is None or len(m) < nbytes:
                m = map_column(path, ino, nbytes)
            maps[key] = m
        slots = min((len(maps[(p, i)]) // 8 for p, i, _ in spec.columns), default=0)
        rows = int(index.max()) + 1 if index is not None and len(index) else spec.n
        if index is not None and (len(index) < spec.n or int(index.min(initial=0)) < 0):
            raise ValueError(f"bind: {len(index)} slots for {spec.n} rows")
        if rows > slots:
            raise ValueError(f"bind: slot {rows - 1} is outside the mapped columns ({slots} slots)")
        if len(spec.columns) != self.ncols:
            raise ValueError(f"bind: {len(spec.columns)} columns, the component has {self.ncols}")
        nout = len(self.out_pos)
        if spec.output is not None:
            path, capacity = spec.output
            if capacity < spec.n:
                raise ValueError(f"bind: output area of {capacity} rows for {spec.n}")
            fd = os.open(path, os.O_RDWR)
            try:
                out = mmap.mmap(fd, max(nout * capacity * 8, 8))
            finally:
                os.close(fd)
        else:
            capacity = spec.n
            out = mmap.mmap(-1, max(nout * capacity * 8, 8))  # private: nobody copies it back
        self.maps = maps
        if np is not None:  # the sparse gather reads through numpy views
            self.wcols = [np.frombuffer(maps[(p, i)], dtype=np.float64) for p, i, _ in spec.columns]
        self.wviews = [memoryview(maps[(p, i)]) for p, i, _ in spec.columns]
        self.out_map = out
        whole = memoryview(out)
        stride = capacity * 8
        self.out_views = [whole[k * stride:(k + 1) * stride] for k in range(nout)]
        whole.release()
        self.index = index
        self.bound_n = spec.n
        if np is not None and self.memf64 is None:
            self.memf64 = np.frombuffer(self.mem, dtype=np.float64, count=len(self.mem) // 8)

    # -- col_read / col_write ----------------------------------------------------------------------

    def _mem_f64(self, ptr: int, n: int) -> F64:
        """Linear memory at ``ptr`` as ``n`` float64 (a view; aligned pointers are cheapest)."""
        if ptr & 7 == 0 and self.memf64 is not None:
            return self.memf64[ptr >> 3:(ptr >> 3) + n]
        return _numpy().frombuffer(self.mem, dtype="<f8", count=n, offset=ptr)

    def read(self, col: int, ptr: int, n: int) -> bool:
        """Copy ``n`` rows of column ``col`` to linear memory at ``ptr`` (checked by the caller);
        False if no batch is mapped."""
        n8 = n * 8
        mem = self.mem
        if self.shared:
            k = self.out_pos.get(col)
            if k is not None and self.written >> k & 1:
                mem[ptr:ptr + n8] = self.out_views[k][:n8]
            elif self.index is None:
                mem[ptr:ptr + n8] = self.wviews[col][:n8]
            else:  # slots validated by bind: "clip" skips the bounds check and its buffering
                _numpy().take(self.wcols[col], self.index[:n], out=self._mem_f64(ptr, n), mode="clip")
            return True
        if self.cols is None:
            return False
        off = col * self.stride
        mem[ptr:ptr + n8] = self.cols[off:off + n8]
        return True

    def write(self, col: int, ptr: int, n: int) -> bool:
        """Copy ``n`` rows from linear memory at ``ptr`` into write column ``col`` (checked by
        the caller); False if no batch is mapped."""
        n8 = n * 8
        if self.shared:
            k = self.out_pos[col]
            self.out_views[k][:n8] = self.mem[ptr:ptr + n8]
            self.written |= 1 << k
            return True
        if self.cols is None:
            return False
        off = col * self.stride
        self.cols[off:off + n8] = self.mem[ptr:ptr + n8]
        return True

    def close(self) -> None:
        self.unmap()
        self.unbind()
        self.memf64 = None


_NUMPY: ModuleType | None = None


def _numpy() -> ModuleType:
    global _NUMPY
    if _NUMPY is None:
        import numpy

        _NUMPY = numpy
    return _NUMPY


def map_column(path: str, ino: int, nbytes: int) -> mmap.mmap:
    """Map ``nbytes`` of a world column file read-only, checking it is the file the runtime
    meant (a store into the mapping raises SIGSEGV)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if st.st_ino != ino:
            raise ValueError(f"{path} is not the column file the runtime named")
        if st.st_size < nbytes:
            raise ValueError(f"{path} holds {st.st_size} bytes, {nbytes} expected")
        return mmap.mmap(fd, nbytes, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
