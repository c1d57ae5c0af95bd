"""Arrays in ``.npy`` / ``.npz`` files, read row by row on demand.

A calibration set of 1024×1024 images is 12.6 MB a sample: 64 samples loaded whole are
0.8 GB before any pass runs, and every pass that joined them into one array held a second
copy. :class:`FileArray` keeps only the file's header; indexing its first axis reads those
rows from the file (through the page cache, so a second pass costs a copy, not a disk read)
into a fresh array. Passes slice it batch by batch, so the process holds one batch at a time.

``.npz`` members stored without compression (``np.savez``) are read in place;
compressed members (``np.savez_compressed``) are read whole, as before. Headers are checked
against the file size before anything is allocated; object arrays are refused (nothing is
ever unpickled).
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy

from trtq.core.errors import DataError

__all__ = ["FileArray", "open_arrays"]

#: Zip local file header: signature, then fixed fields; the name and extra-field lengths are at 26 and 28.
_LOCAL_HEADER = struct.Struct("<4s22xHH")


class FileArray:
    """A read-only array whose rows (first axis) live in a file: ``len``, ``shape``, ``dtype``
    and ``ndim`` as for an ndarray; ``a[i:j]``, ``a[i]``, ``a[mask]`` and ``a[[i, k]]`` read
    those rows into a new ndarray; :meth:`rows` is a lazy view of a row subset;
    ``np.asarray(a)`` reads everything."""

    def __init__(self, path: str | os.PathLike, offset: int, shape: tuple[int, ...], dtype: np.dtype,
                 index: np.ndarray | None = None, cast: np.dtype | None = None) -> None:
        self.path, self.offset = Path(path), int(offset)
        self._file_shape, self._file_dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self._index = index  # row numbers in the file (None: all, in order)
        self._cast = None if cast is None or np.dtype(cast) == self._file_dtype else np.dtype(cast)
        self.checked: dict = {}  # readers.collect_arrays: validated sample counts

    # -- the ndarray surface the passes use ------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        n = self._file_shape[0] if self._index is None else len(self._index)
        return (n, *self._file_shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._cast or self._file_dtype

    @property
    def ndim(self) -> int:
        return len(self._file_shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"FileArray({self.path.name}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._read(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            first, rest = (key[0] if key else slice(None)), key[1:]
            rows = self[first]
            return rows[rest] if _is_int(first) else rows[(slice(None), *rest)]
        if _is_int(key):
            n = len(self)
            if not -n <= int(key) < n:
                raise IndexError(f"index {key} is out of bounds for {n} rows")
            return self._read(np.array([int(key) % n]))[0]
        return self._read(self._positions(key))

    # -- lazy views --------------------------------------------------------------------------
    def rows(self, key: Any) -> "FileArray":
        """The rows ``key`` (slice, mask or indices) as a lazy :class:`FileArray`."""
        return self._view(self._file_rows(self._positions(key)), self._cast)

    def astype(self, dtype: Any, copy: bool = True) -> "FileArray":
        """A lazy view whose reads are converted to ``dtype``."""
        return self._view(self._index, np.dtype(dtype))

    def _view(self, index: np.ndarray | None, cast: np.dtype | None) -> "FileArray":
        return FileArray(self.path, self.offset, self._file_shape, self._file_dtype, index, cast)

    # -- reading -------------------------------------------------------------------------------
    def _positions(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n)[key]
        key = np.asarray(key)
        if key.dtype == bool:
            if key.shape != (n,):
                raise IndexError(f"a boolean mask of shape {key.shape} does not fit {n} rows")
            return np.flatnonzero(key)
        if key.dtype.kind not in "iu" or key.ndim != 1:
            raise IndexError(f"FileArray rows are indexed by slices, integers, masks or 1-d index arrays, not {key!r}")
        if key.size and (key.min() < -n or key.max() >= n):
            raise IndexError(f"row index out of bounds for {n} rows")
        return key % n if key.size else key.astype(np.int64)

    def _file_rows(self, positions: np.ndarray) -> np.ndarray:
        return positions.astype(np.int64) if self._index is None else self._index[positions]

    def _read(self, positions: np.ndarray) -> np.ndarray:
        rows = self._file_rows(positions)
        out = np.empty((len(rows), *self._file_shape[1:]), self._file_dtype)
        row_bytes = math.prod(self._file_shape[1:]) * self._file_dtype.itemsize
        if len(rows) and row_bytes:
            view = memoryview(out.reshape(-1).view(np.uint8))
            # Consecutive rows are read in one call.
            breaks = np.flatnonzero(np.diff(rows) != 1) + 1
            with open(self.path, "rb", buffering=0) as f:
                for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
                    f.seek(self.offset + int(rows[start]) * row_bytes)
                    want = (stop - start) * row_bytes
                    got = f.readinto(view[start * row_bytes:stop * row_bytes])
                    while got < want:  # short reads (pipes, network file systems)
                        more = f.readinto(view[start * row_bytes + got:stop * row_bytes])
                        if not more:
                            raise DataError(f"data file {self.path} ended early: was it changed while being read?")
                        got += more
        return out if self._cast is None else out.astype(self._cast)


def _is_int(key: Any) -> bool:
    return isinstance(key, (int, np.integer)) and not isinstance(key, bool)


def _header(f, path: Path, payload_end: int, what: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """Read an .npy header at the file's position; check the claimed size against the bytes there."""
    try:
        version = npy.read_magic(f)
        reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = reader(f)
    except (ValueError, EOFError) as exc:
        raise DataError(f"{what} is not a valid .npy file ({exc})") from exc
    offset = f.tell()
    need = math.prod(shape) * dtype.itemsize
    if dtype.hasobject:
        raise DataError(f"{what} holds Python objects ({dtype}); only numeric arrays are read (never unpickled)")
    if need > payload_end - offset:
        raise DataError(f"{what} claims a {dtype} array of shape {shape} ({need / 1e9:.3g} GB) but holds "
                        f"{(payload_end - offset) / 1e9:.3g} GB of data: the file is truncated or corrupt")
    return tuple(shape), dtype, bool(fortran), offset


def _lazy(path: Path, shape, dtype: np.dtype, fortran: bool, offset: int) -> FileArray | None:
    """A FileArray where the layout allows row reads (C order, native byte order, rank >= 1)."""
    if fortran and len(shape) > 1 or not shape or not dtype.isnative:
        return None
    return FileArray(path, offset, shape, dtype)


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """Shape, dtype, Fortran order and data offset of an ``.npy`` file, checked against its size."""
    with open(path, "rb") as f:
        return _header(f, path, path.stat().st_size, f"data file {path}")


def _open_npy(path: Path) -> FileArray | np.ndarray:
    shape, dtype, fortran, offset = npy_header(path)
    lazy = _lazy(path, shape, dtype, fortran, offset)
    return lazy if lazy is not None else np.load(path, allow_pickle=False)


def _open_npz(path: Path) -> dict[str, FileArray | np.ndarray]:
    out: dict[str, FileArray | np.ndarray] = {}
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DataError(f"data file {path} is not a valid .npz file ({exc})") from exc
    with archive, open(path, "rb") as f:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key, what = info.filename[:-4], f"array '{info.filename[:-4]}' of {path}"
            lazy = None
            if info.compress_type == zipfile.ZIP_STORED:
                f.seek(info.header_offset)
                signature, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
                if signature != b"PK\x03\x04":
                    raise DataError(f"data file {path} is not a valid .npz file (bad entry for {key})")
                start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
                f.seek(start)
                shape, dtype, fortran, offset = _header(f, path, start + info.file_size, what)
                lazy = _lazy(path, shape, dtype, fortran, offset)
            if lazy is None:  # compressed (or a layout rows cannot be read from): read it whole
                with archive.open(info) as member:
                    _header(member, path, info.file_size, what)  # check the claim before allocating it
                with np.load(path, allow_pickle=False) as arrays:
                    lazy = arrays[key]
            out[key] = lazy
    return out


def open_arrays(path: str | os.PathLike) -> FileArray | np.ndarray | dict[str, FileArray | np.ndarray]:
    """An ``.npy`` file as one array, an ``.npz`` as arrays by name, each a :class:`FileArray`
    where its rows can be read in place (else an ndarray read whole)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        if path.suffix == ".npz":
            return _open_npz(path)
        if path.suffix == ".npy":
            return _open_npy(path)
    except MemoryError:
        raise DataError(f"data file {path} does not fit in memory") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"data file {path} cannot be read ({exc}); expected a NumPy .npy/.npz file") from exc
    raise DataError(f"data file {path} has suffix '{path.suffix}'; expected .npy or .npz")
