"""Arrays read from .npy/.npz files row by row (trtq.core.arrayfile)."""

from __future__ import annotations

import numpy as np
import pytest

from trtq.core.arrayfile import FileArray, open_arrays
from trtq.core.errors import DataError
from trtq.core.onnx_model import InputSpec
from trtq.core.readers import collect_arrays, count_samples, iter_batches, open_data, take_rows


@pytest.fixture()
def data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3, 4, 5)).astype(np.float32)
    ids = rng.integers(0, 100, size=(10, 7)).astype(np.int64)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "stored.npz", x=x, ids=ids)
    np.savez_compressed(tmp_path / "packed.npz", x=x, ids=ids)
    return tmp_path, x, ids


def test_npy_rows_read_as_numpy_indexes_them(data):
    folder, x, _ = data
    a = open_arrays(folder / "x.npy")
    assert isinstance(a, FileArray)
    assert (a.shape, a.dtype, a.ndim, len(a)) == (x.shape, x.dtype, 4, 10)
    mask = np.arange(10) % 3 == 0
    for key in (slice(2, 7), slice(None, None, -2), 3, -1, [9, 0, 4], mask, (slice(1, 4), 0, slice(None), 2), (5, 1)):
        np.testing.assert_array_equal(a[key], x[key])
    np.testing.assert_array_equal(np.asarray(a), x)
    with pytest.raises(IndexError):
        a[10]


def test_lazy_views_compose_and_convert(data):
    folder, x, _ = data
    a = open_arrays(folder / "x.npy")
    view = a.rows([8, 2, 5, 6]).rows(slice(1, 4))  # rows 2, 5, 6
    assert isinstance(view, FileArray) and view.shape == (3, 3, 4, 5)
    np.testing.assert_array_equal(view[:], x[[2, 5, 6]])
    half = view.astype(np.float16)
    assert half.dtype == np.float16 and half[1].dtype == np.float16
    np.testing.assert_array_equal(half[:], x[[2, 5, 6]].astype(np.float16))


def test_npz_stored_members_are_lazy_and_compressed_ones_are_read_whole(data):
    folder, x, ids = data
    stored, packed = open_arrays(folder / "stored.npz"), open_arrays(folder / "packed.npz")
    assert isinstance(stored["x"], FileArray) and isinstance(stored["ids"], FileArray)
    assert isinstance(packed["x"], np.ndarray)
    for arrays in (stored, packed):
        np.testing.assert_array_equal(arrays["x"][3:6], x[3:6])
        np.testing.assert_array_equal(arrays["ids"][[1, 9]], ids[[1, 9]])


def test_a_header_claiming_more_than_the_file_holds_is_refused(data):
    folder, _, _ = data
    raw = (folder / "x.npy").read_bytes()
    (folder / "cut.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        open_arrays(folder / "cut.npy")
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="never unpickled"):
        open_arrays(folder / "objects.npy")


def test_collect_arrays_hands_out_views_not_copies(data):
    folder, x, _ = data
    specs = [InputSpec("x", np.dtype(np.float32), ("N", 3, 4, 5))]
    lazy = open_data(folder / "x.npy")
    got = collect_arrays(lazy, specs, batch_size=4, samples=7)
    assert isinstance(got["x"], FileArray) and len(got["x"]) == 7
    np.testing.assert_array_equal(got["x"][:], x[:7])
    assert count_samples(lazy) == 10
    in_memory = collect_arrays({"x": x}, specs, batch_size=4, samples=7)
    assert np.shares_memory(in_memory["x"], x)
    # A model with a static batch of 3 runs whole batches: 6 of the 7 samples.
    static = [InputSpec("x", np.dtype(np.float32), (3, 3, 4, 5))]
    assert len(collect_arrays(lazy, static, samples=7)["x"]) == 6
    # The rows of a split stay lazy.
    part = take_rows(got["x"], np.arange(7) % 2 == 0)
    assert isinstance(part, FileArray)
    np.testing.assert_array_equal(part[:], x[[0, 2, 4, 6]])


def test_file_data_is_validated_like_arrays(data):
    folder, x, _ = data
    bad = x.copy()
    bad[6, 0, 0, 0] = np.nan
    np.save(folder / "bad.npy", bad)
    specs = [InputSpec("x", np.dtype(np.float32), ("N", 3, 4, 5))]
    with pytest.raises(DataError, match="NaN or Inf at sample 6"):
        collect_arrays(open_data(folder / "bad.npy"), specs, batch_size=4)
    # Batches read from a file are plain arrays, converted to the model's dtype.
    wide = [InputSpec("x", np.dtype(np.float64), ("N", 3, 4, 5))]
    batches = [feed["x"] for _, feed in iter_batches(open_data(folder / "x.npy"), wide, batch_size=4)]
    assert [type(b) for b in batches] == [np.ndarray] * 3 and batches[0].dtype == np.float64
    assert collect_arrays(open_data(folder / "x.npy"), wide)["x"][:2].dtype == np.float64
