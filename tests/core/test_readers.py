import numpy as np
import pytest
from PIL import Image

from trtq.core import ImageFolderReader, PreprocessSpec, iter_batches
from trtq.core.onnx_model import InputSpec
from trtq.core.errors import DataError

SPECS = [InputSpec("images", np.dtype(np.float32), ("N", 3, 4, 4))]


def _all(data, specs=SPECS, batch_size=3, samples=None):
    return list(iter_batches(data, specs, batch_size, samples))


def test_array_npy_npz_batches_and_cap(tmp_path):
    x = np.arange(7 * 48, dtype=np.float32).reshape(7, 3, 4, 4)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", images=x)
    for data in (x, {"images": x}, tmp_path / "x.npy", tmp_path / "x.npz"):
        got = _all(data)
        assert [first for first, _ in got] == [0, 3, 6]
        np.testing.assert_array_equal(np.concatenate([f["images"] for _, f in got]), x)
    assert sum(len(f["images"]) for _, f in _all(x, samples=5)) == 5


def test_float64_is_cast_but_ints_are_refused():
    x = np.zeros((2, 3, 4, 4))
    assert _all(x)[0][1]["images"].dtype == np.float32
    with pytest.raises(DataError, match="dtype uint8.*convert"):
        _all(x.astype(np.uint8))


def test_shape_errors_say_what_to_do():
    with pytest.raises(DataError, match=r"shape \(3, 4, 4\); the model expects \(N, 3, 4, 4\) float32: add a batch axis"):
        _all({"images": np.zeros((3, 4, 4), np.float32)}, batch_size=8)
    with pytest.raises(DataError, match="axis 1 must be 3"):
        _all(np.zeros((2, 1, 4, 4), np.float32))


def test_wrong_input_name_and_nan():
    with pytest.raises(DataError, match=r"missing \['images'\]; unknown \['pixels'\]"):
        _all({"pixels": np.zeros((2, 3, 4, 4), np.float32)})
    x = np.zeros((5, 3, 4, 4), np.float32)
    x[4, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="'images' holds NaN or Inf at sample 4"):
        _all(x)


def test_ort_reader_protocol_and_iterables():
    class Reader:
        def __init__(self):
            self.items = [{"images": np.ones((2, 3, 4, 4), np.float32)}] * 3

        def get_next(self):
            return self.items.pop() if self.items else None

    assert [first for first, _ in _all(Reader())] == [0, 2, 4]
    assert len(_all(iter([{"images": np.ones((1, 3, 4, 4), np.float32)}]))) == 1


def test_empty_and_unsupported(tmp_path):
    with pytest.raises(DataError, match="empty"):
        _all(np.zeros((0, 3, 4, 4), np.float32))
    with pytest.raises(DataError, match="not supported"):
        _all(42)
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(DataError, match="expected .npy or .npz"):
        _all(tmp_path / "x.txt")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a valid .npy file"):
        _all(tmp_path / "bad.npy")


def test_image_folder_preprocessing(tmp_path):
    Image.fromarray(np.full((10, 20, 3), 255, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "b.jpg")
    spec = PreprocessSpec(size=(4, 4), scale=1 / 127.5, mean=(1, 1, 1))
    reader = ImageFolderReader(tmp_path, spec)
    arr = reader.arrays()
    assert arr.shape == (2, 3, 4, 4) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(arr[1], -1.0, atol=1e-6)
    (tmp_path / "c.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="c.png cannot be read"):
        ImageFolderReader(tmp_path, spec).arrays()


def test_static_batch_models_get_batches_of_their_size():
    specs = [InputSpec("images", np.dtype(np.float32), (2, 3, 4, 4))]
    got = _all(np.zeros((6, 3, 4, 4), np.float32), specs=specs, batch_size=32)
    assert [f["images"].shape[0] for _, f in got] == [2, 2, 2]
    # A remainder short of one batch is left out; data short of one batch is refused.
    assert [f["images"].shape[0] for _, f in _all(np.zeros((5, 3, 4, 4), np.float32), specs=specs)] == [2, 2]
    with pytest.raises(DataError, match="batches of exactly 2 samples .* only 1"):
        _all(np.zeros((1, 3, 4, 4), np.float32), specs=specs)


def test_image_folders_are_read_lazily_batch_by_batch(tmp_path, monkeypatch):
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    spec = PreprocessSpec(size=(4, 4))
    reader = ImageFolderReader(tmp_path, spec)
    monkeypatch.setattr(ImageFolderReader, "arrays", lambda self: pytest.fail("the whole folder was decoded"))
    opened = []
    load = ImageFolderReader._load
    monkeypatch.setattr(ImageFolderReader, "_load", lambda self, p: opened.append(p.name) or load(self, p))
    batches = iter_batches(reader, [InputSpec("x", np.dtype(np.float32), ("N", 3, 4, 4))], batch_size=2)
    first, feed = next(batches)
    assert first == 0 and feed["x"].shape == (2, 3, 4, 4) and opened == ["0.png", "1.png"]
    assert [f["x"].shape[0] for _, f in batches] == [2, 1] and len(opened) == 5


def _image_folder(folder, count=5):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("shape, expected", [(("N", 3, 64, 48), (2, 3, 64, 48)), (("N", 32, 40, 3), (2, 32, 40, 3)),
                                             (("N", 3, "H", "W"), (2, 3, 224, 224))])
def test_image_folders_take_the_models_size_and_layout(tmp_path, shape, expected):
    from trtq.core import open_data

    specs = [InputSpec("x", np.dtype(np.float32), shape)]
    got = _all(open_data(_image_folder(tmp_path / "img")), specs=specs, batch_size=2)
    assert got[0][1]["x"].shape == expected


def test_image_preprocessing_options_and_mismatches(tmp_path):
    from trtq.core import open_data

    folder = _image_folder(tmp_path / "img")
    specs = [InputSpec("x", np.dtype(np.float32), ("N", 3, 16, 16))]
    spec = PreprocessSpec(scale=1.0, mean=(100.0, 100.0, 100.0), std=(2.0, 2.0, 2.0), channel_order="BGR")
    x = _all(open_data(folder, preprocess=spec), specs=specs, batch_size=5)[0][1]["x"]
    raw = _all(open_data(folder), specs=specs, batch_size=5)[0][1]["x"]  # x/255, RGB
    np.testing.assert_allclose(x[:, ::-1], (raw * 255 - 100) / 2, atol=1e-3)
    with pytest.raises(DataError, match="resized to 32x32 but input 'x' takes 16x16"):
        _all(open_data(folder, preprocess=PreprocessSpec(size=(32, 32))), specs=specs)
    with pytest.raises(DataError, match="has 1 channels"):
        _all(open_data(folder), specs=[InputSpec("x", np.dtype(np.float32), ("N", 1, 16, 16))])


def test_a_folder_of_npy_files_is_a_data_set(tmp_path):
    from trtq.core import open_data

    folder = tmp_path / "arrays"
    folder.mkdir()
    rng = np.random.default_rng(0)
    samples = [rng.normal(size=(3, 4, 4)).astype(np.float32) for _ in range(5)]
    for i, s in enumerate(samples[:3]):
        np.save(folder / f"{i}.npy", s)  # one sample per file, no batch axis
    np.save(folder / "3.npy", np.stack(samples[3:]))  # two samples, with the batch axis
    specs = [InputSpec("x", np.dtype(np.float32), ("N", 3, 4, 4))]
    got = _all(open_data(folder), specs=specs, batch_size=2)
    assert [f["x"].shape[0] for _, f in got] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([f["x"] for _, f in got]), np.stack(samples))
    (folder / "photo.png").write_bytes(b"")
    with pytest.raises(DataError, match="both images and .npy/.npz"):
        open_data(folder)
