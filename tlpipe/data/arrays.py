"""Arrays on disk, written and read a chunk at a time, so memory holds a chunk and not the array.

NumPy's own formats (.npz as np.savez writes it, .npy), so any reader can `np.load` them; NumPy has no
writer that takes an array piece by piece, and np.memmap would keep every touched page resident (below).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from tlpipe.fs import atomic_file


def _write_header(fh, shape: tuple[int, ...], dtype) -> None:
    """The .npy header of an array of `shape` and `dtype`."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(fh, header)


def _write_rows(fh, name: str, chunk: np.ndarray, shape: tuple[int, ...], dtype) -> int:
    """One block of rows after the header; returns the row count."""
    chunk = np.ascontiguousarray(chunk, dtype)
    if chunk.shape[1:] != tuple(shape[1:]):
        raise ValueError(f"{name}: chunk of shape {chunk.shape} does not fit {shape}")
    fh.write(chunk.reshape(-1).view(np.uint8).data)
    return len(chunk)


def _check_rows(name: str, rows: int, shape: tuple[int, ...]) -> None:
    if rows != shape[0]:
        raise ValueError(f"{name}: {rows} rows written, {shape[0]} declared")


def _write_npy(fh, name: str, chunks: Iterable[np.ndarray], shape: tuple[int, ...], dtype) -> None:
    """The .npy header for `shape`, then `chunks` (row blocks, in order, together exactly shape[0] rows)."""
    _write_header(fh, shape, dtype)
    _check_rows(name, sum(_write_rows(fh, name, chunk, shape, dtype) for chunk in chunks), shape)


class NpzWriter:
    """An .npz (uncompressed, as np.savez writes it) whose arrays are written chunk by chunk.

    Each array goes straight into its zip member through a stream, so memory holds one chunk, not the array;
    `np.load` reads the file like any other .npz.
    """

    def __init__(self, path: str | Path):
        self._zip = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)

    def write(self, name: str, chunks: Iterable[np.ndarray], shape: tuple[int, ...], dtype) -> None:
        """Write array `name` of `shape` from `chunks` (row blocks, in order, together exactly shape[0] rows)."""
        with self._zip.open(f"{name}.npy", "w", force_zip64=True) as fh:
            _write_npy(fh, name, chunks, shape, dtype)

    def close(self) -> None:
        """Finish the zip (its central directory)."""
        self._zip.close()

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NpyWriter:
    """A .npy file written chunk by chunk (rows in order), so memory holds one chunk, not the array.

    Plain writes rather than a writable np.memmap: every page written through a map stays resident in the
    process until the map is closed, which would make memory grow with the array.
    """

    @staticmethod
    def write(path: str | Path, chunks: Iterable[np.ndarray], shape: tuple[int, ...], dtype) -> None:
        """Write `path` (staged next to it, then renamed) from `chunks` totalling exactly shape[0] rows."""
        NpyWriter.write_many([Path(path)], ([chunk] for chunk in chunks), [shape], dtype)

    @staticmethod
    def write_many(paths: list[Path], chunks: Iterable[list[np.ndarray]], shapes: list[tuple[int, ...]], dtype) -> None:
        """Several .npy files side by side: each item of `chunks` holds the next row block of every file.

        For a model with several outputs (one pass, one file per output); each file is staged and renamed
        only when all of them are whole.
        """
        with ExitStack() as stack:
            handles = []
            for path, shape in zip(paths, shapes, strict=True):
                staged = stack.enter_context(atomic_file(path))
                handles.append(stack.enter_context(open(staged, "wb")))
                _write_header(handles[-1], shape, dtype)
            rows = [0] * len(paths)
            for blocks in chunks:
                for i, (fh, path, shape, block) in enumerate(zip(handles, paths, shapes, blocks, strict=True)):
                    rows[i] += _write_rows(fh, Path(path).name, block, shape, dtype)
            for path, count, shape in zip(paths, rows, shapes, strict=True):
                _check_rows(Path(path).name, count, shape)


class NpyRows:
    """Rows [start, start + count) of a .npy file, read with positioned reads.

    Not np.memmap: mapped pages that a pass over the file touches count as the process's resident memory
    (peak RSS would grow to the file's size), while pread goes through the page cache, which the kernel owns.
    """

    def __init__(self, path: str | Path, start: int = 0, count: int | None = None):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fh)
            self._offset = fh.tell()
        if fortran:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not supported")
        self.dtype, self.row_shape = np.dtype(dtype), tuple(shape[1:])
        self._row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.start, self.count = start, shape[0] - start if count is None else count
        if self.start + self.count > shape[0]:
            raise ValueError(f"{self.path}: rows {start}..{start + self.count} beyond its {shape[0]} rows")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.count, *self.row_shape)

    @property
    def nbytes(self) -> int:
        return self.count * self._row_bytes

    def __len__(self) -> int:
        return self.count

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Rows at `indices` (in that order), read in file order: one pread per run of consecutive rows."""
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices), *self.row_shape), self.dtype)
        if not len(indices):
            return out
        order = np.argsort(indices, kind="stable")
        wanted = indices[order]
        # Runs of consecutive rows (a shuffled block is one run): one large read each instead of one per row.
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for run in np.split(np.arange(len(wanted)), breaks):
                first, count = int(wanted[run[0]]), len(run)
                raw = os.pread(fd, count * self._row_bytes, self._offset + (self.start + first) * self._row_bytes)
                out[order[run]] = np.frombuffer(raw, self.dtype).reshape(count, *self.row_shape)
        finally:
            os.close(fd)
        return out

    def chunks(self, size: int = 1024) -> Iterator[np.ndarray]:
        """All rows in order, `size` at a time."""
        for begin in range(0, self.count, size):
            yield self.read(np.arange(begin, min(begin + size, self.count)))

    def load(self) -> np.ndarray:
        """All rows in memory."""
        with open(self.path, "rb") as fh:
            fh.seek(self._offset + self.start * self._row_bytes)
            return np.fromfile(fh, self.dtype, self.count * int(np.prod(self.row_shape))).reshape(self.shape)
