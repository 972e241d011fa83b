"""Rows of a large ``.npy`` file read on demand, without mapping the file.

An IVF-PQ index re-scores each query's few hundred candidates against exact vectors kept on
disk (float16, ten million rows are 5 GB). A memory mapping would serve those reads, but the
kernel maps every cached page around each fault into the process (fault-around), so after a
while of scattered reads most of the file counts in the process's resident memory, whatever
the read-ahead advice. :class:`RowFile` reads the rows asked for with ``pread`` instead: a
query's rows cost one small read each, the page cache still serves repeated ones, and the
process holds only what it copied. A large request (a slice, or many rows at once, as a
brute-force pass or a filter's exact search makes) goes through a mapping that lives only for
that call.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["RowFile"]

MAP_ABOVE = 2048  # rows of one request above which a temporary mapping reads them


class RowFile:
    """A read-only 2-D ``.npy`` array that indexes like one (``a[i]``, ``a[rows]``, ``a[s:e]``,
    ``len``, ``shape``, ``dtype``, ``np.asarray``), reading only the rows asked for."""

    ndim = 2

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            self._offset = f.tell()
        if len(shape) != 2 or fortran:
            raise ValueError(f"{self.path}: expected a 2-D C-ordered array, got shape {shape}")
        self.shape, self.dtype = tuple(int(x) for x in shape), np.dtype(dtype)
        self._row = self.shape[1] * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"RowFile({self.path!r}, shape={self.shape}, dtype={self.dtype})"

    def _mapped(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")

    def _read_row(self, r: int, out: np.ndarray) -> None:
        data = os.pread(self._fd, self._row, self._offset + r * self._row)
        if len(data) != self._row:
            raise OSError(f"{self.path}: row {r} is cut short (the file is damaged)")
        out[:] = np.frombuffer(data, self.dtype)

    def __getitem__(self, key) -> np.ndarray:
        n = self.shape[0]
        if isinstance(key, (int, np.integer)):
            r = int(key) + (n if key < 0 else 0)
            if not 0 <= r < n:
                raise IndexError(f"row {int(key)} is out of range for {n} rows")
            out = np.empty(self.shape[1], self.dtype)
            self._read_row(r, out)
            return out
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                count = max(0, stop - start)
                if count > MAP_ABOVE:
                    return np.array(self._mapped()[start:stop])
                data = os.pread(self._fd, count * self._row, self._offset + start * self._row)
                return np.frombuffer(data, self.dtype).reshape(count, self.shape[1]).copy()
            key = np.arange(start, stop, step)
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"rows of a RowFile are indexed by an int, a slice or a 1-D array of ints, got {key!r}")
        rows = np.where(rows < 0, rows + n, rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"rows out of range for {n} rows")
        if len(rows) > MAP_ABOVE:
            return np.array(self._mapped()[rows])
        out = np.empty((len(rows), self.shape[1]), self.dtype)
        for k, r in enumerate(rows.tolist()):
            self._read_row(r, out[k])
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.array(self._mapped())
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
