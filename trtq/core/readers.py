"""Calibration data readers and their validation against the model's inputs.

Accepted data (see :func:`iter_batches`):

* a NumPy array (single-input models) or a mapping ``input name -> array`` (first axis = samples);
* a path to ``.npy`` (single input) or ``.npz`` (keys = input names);
* an :class:`ImageFolderReader` (a folder of images + a :class:`PreprocessSpec`);
* any object with ``get_next()`` returning a feed dict or ``None`` (ONNX Runtime's
  ``CalibrationDataReader`` protocol);
* any iterable of feed dicts (each a batch with a leading batch axis), or, for a
  single-input model, of arrays/tensors or ``(inputs, labels)`` pairs — a PyTorch
  ``DataLoader`` works as it is.

Every batch is checked against the model before it is run: input names, rank, static
dims, dtype kind, and finiteness. Errors name the input and the sample index.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from trtq.core.arrayfile import FileArray, npy_header, open_arrays
from trtq.core.onnx_model import InputSpec
from trtq.core.errors import DataError

log = logging.getLogger(__name__)
_said: set[str] = set()


def _say_once(message: str) -> None:
    """A warning shown once per process: every pass of a job reads the same data."""
    if message not in _said:
        _said.add(message)
        log.warning(message)

Feed = dict[str, np.ndarray]
#: Image size (height, width) for models whose input leaves it open (dynamic H and W).
DEFAULT_IMAGE_SIZE = (224, 224)
#: Largest image (width x height) an image folder may hold; checked from the header, before decoding.
MAX_IMAGE_PIXELS = 64_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def load_arrays(path: str | os.PathLike) -> np.ndarray | dict[str, np.ndarray]:
    """Load ``.npy`` (one array) or ``.npz`` (arrays by input name). Never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if path.suffix == ".npy":
            npy_header(path)  # a hostile header must not make NumPy allocate its claim
            return np.load(path, allow_pickle=False)
    except MemoryError:
        raise DataError(f"data file {path} does not fit in memory") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"data file {path} cannot be read ({exc}); expected a NumPy .npy/.npz file") from exc
    raise DataError(f"data file {path} has suffix '{path.suffix}'; expected .npy or .npz")


def open_data(data: Any, what: str = "data", preprocess: "PreprocessSpec | None" = None) -> Any:
    """The data set a path names, or the data as given.

    A folder of images is an :class:`ImageFolderReader` (read lazily, batch by batch, with
    ``preprocess``; its open size and layout come from the model input), a folder of
    ``.npy``/``.npz`` files an :class:`ArrayFolderReader`; ``.npy``/``.npz`` files are opened
    with :func:`~trtq.core.arrayfile.open_arrays` (rows read from the file as passes need them). Arrays, mappings, readers and iterables are returned unchanged
    (see :func:`iter_batches` for what they may be). ``None`` is refused with a message naming
    ``what`` (e.g. "calibration data").
    """
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_dir():
            if preprocess is not None:
                raise DataError(f"image preprocessing options apply to an image folder, and {path} is a file")
            return open_arrays(path)
        has_images = any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*"))
        has_arrays = any(p.suffix.lower() in (".npy", ".npz") for p in path.rglob("*"))
        if has_images and has_arrays:
            raise DataError(f"folder {path} holds both images and .npy/.npz files; give a folder of one kind")
        if has_arrays:
            return ArrayFolderReader(path)
        return ImageFolderReader(path, preprocess or PreprocessSpec())
    if data is None:
        raise DataError(f"no {what} given")
    return data


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image file becomes a model input.

    The image is converted to RGB (or BGR), resized to ``size`` (height, width) — directly,
    or keeping the aspect ratio and centre-cropping when ``crop`` is true — then
    ``x = (pixel * scale - mean) / std`` per channel, laid out as NCHW or NHWC.
    EfficientNet-Lite0's ``x/127.5 - 1`` is ``scale=1/127.5, mean=(1, 1, 1), std=(1, 1, 1)``.
    ``size`` and ``layout`` left as ``None`` are taken from the model's input when the data
    is read (:meth:`fitted`): its fixed height and width, and where its 3 channels are.
    """

    size: tuple[int, int] | None = None
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str | None = None
    channel_order: str = "RGB"
    crop: bool = True

    def fitted(self, input_spec: InputSpec | None) -> "PreprocessSpec":
        """This spec with ``size``/``layout`` filled in from the model input (rank 4, 3 channels
        first or last); ``DEFAULT_IMAGE_SIZE`` and NCHW where the model leaves them open."""
        shape = tuple(input_spec.shape) if input_spec is not None else ()
        layout, size = self.layout, self.size
        if len(shape) == 4:
            if layout is None:
                layout = "NHWC" if shape[3] == 3 and shape[1] != 3 else "NCHW"
            hw = shape[2:4] if layout == "NCHW" else shape[1:3]
            channels = shape[1] if layout == "NCHW" else shape[3]
            if isinstance(channels, int) and channels > 0 and channels != 3:
                raise DataError(f"input '{input_spec.name}' has {channels} channels ({layout} {list(shape)}); an "
                                "image folder gives 3 (RGB): pass arrays (.npy/.npz) instead")
            if size is None and all(isinstance(d, int) and d > 0 for d in hw):
                size = (int(hw[0]), int(hw[1]))
            elif size is not None and all(isinstance(d, int) and d > 0 for d in hw) and tuple(hw) != tuple(size):
                raise DataError(f"images are resized to {size[0]}x{size[1]} but input '{input_spec.name}' takes "
                                f"{hw[0]}x{hw[1]} ({list(shape)}): drop --resize or match it")
        elif shape:
            raise DataError(f"input '{input_spec.name}' has shape {list(shape)}; an image folder fills an input of "
                            "rank 4 (NCHW or NHWC)")
        return replace(self, size=size or DEFAULT_IMAGE_SIZE, layout=layout or "NCHW")

    def __post_init__(self) -> None:
        if self.layout not in (None, "NCHW", "NHWC"):
            raise DataError(f"layout must be NCHW or NHWC, got {self.layout!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise DataError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if any(s == 0 for s in self.std):
            raise DataError("std must not contain zeros")

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 RGB image (already at ``size``) -> float32 CHW/HWC array."""
        x = rgb.astype(np.float32) * np.float32(self.scale)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x if self.layout == "NHWC" else x.transpose(2, 0, 1))  # None: NCHW


def resize_rgb(img, size: tuple[int, int], crop: bool):
    """PIL image -> uint8 RGB array of ``size`` (h, w); centre-crop to the aspect ratio first."""
    from PIL import Image

    img = img.convert("RGB")
    h, w = size
    if crop:
        src_w, src_h = img.size
        s = min(src_w / w, src_h / h)
        cw, ch = w * s, h * s
        left, top = (src_w - cw) / 2, (src_h - ch) / 2
        img = img.resize((w, h), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    else:
        img = img.resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


class ImageFolderReader:
    """Images in a folder (sorted by name, recursively) preprocessed for one model input."""

    def __init__(self, folder: str | os.PathLike, spec: PreprocessSpec = PreprocessSpec(),
                 input_name: str | None = None) -> None:
        """``spec``'s open size/layout are filled from the model input when the data is read."""
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"image folder {self.folder} does not exist")
        self.files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise DataError(f"image folder {self.folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.spec = spec
        self.input_name = input_name

    def __len__(self) -> int:
        return len(self.files)

    def fitted(self, input_spec: InputSpec | None) -> "ImageFolderReader":
        """This folder read for ``input_spec`` (see :meth:`PreprocessSpec.fitted`)."""
        out = ImageFolderReader.__new__(ImageFolderReader)
        out.folder, out.files, out.input_name = self.folder, self.files, self.input_name
        out.spec = self.spec.fitted(input_spec)
        return out

    def _load(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        spec = self.spec if self.spec.size and self.spec.layout else self.spec.fitted(None)  # no model: defaults
        try:
            with Image.open(path) as img:
                # The size is in the header: refuse a decompression bomb before decoding it.
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise DataError(f"image {path} is {img.width}x{img.height} pixels, over the limit of "
                                    f"{MAX_IMAGE_PIXELS / 1e6:g} megapixels for calibration images: downscale it")
                return spec.apply(resize_rgb(img, spec.size, spec.crop))
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"image {path} cannot be read: {exc}") from exc

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The images, decoded lazily, ``batch_size`` at a time (a large folder never sits in memory)."""
        for start in range(0, len(self.files), batch_size):
            yield np.stack([self._load(p) for p in self.files[start:start + batch_size]])

    def arrays(self) -> np.ndarray:
        """Every image at once (for small folders)."""
        return np.stack([self._load(p) for p in self.files])


class ArrayFolderReader:
    """A folder of ``.npy``/``.npz`` files (sorted by name, recursively), read lazily: each file
    holds one sample (an input's shape without the batch axis) or several (with it); an
    ``.npz`` holds one array per input name."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in (".npy", ".npz"))
        if not self.files:
            raise DataError(f"folder {self.folder} holds no .npy/.npz files")

    def __len__(self) -> int:
        return len(self.files)

    def feeds(self, specs: list[InputSpec]) -> Iterator[Feed]:
        """One feed per file, with a batch axis."""
        ranks = {s.name: len(s.shape) for s in specs}
        for path in self.files:
            arrays = load_arrays(path)
            if isinstance(arrays, np.ndarray):
                arrays = {_single_input(specs, f"{path.name} (a .npy file)"): arrays}
            yield {k: (v[None] if k in ranks and v.ndim == ranks[k] - 1 else v) for k, v in arrays.items()}


def _rebatch(feeds: Iterator[Feed], batch_size: int) -> Iterator[Feed]:
    """Feeds of any row counts joined into batches of ``batch_size`` rows (the last may be smaller)."""
    pending: list[Feed] = []
    rows = 0
    for feed in feeds:
        pending.append(feed)
        rows += len(next(iter(feed.values()))) if feed else 0
        while rows >= batch_size:
            joined = {k: np.concatenate([f[k] for f in pending]) for k in pending[0]}
            yield {k: v[:batch_size] for k, v in joined.items()}
            rest = {k: v[batch_size:] for k, v in joined.items()}
            rows -= batch_size
            pending = [rest] if rows else []
    if rows:
        yield {k: np.concatenate([f[k] for f in pending]) for k in pending[0]}


def _single_input(specs: list[InputSpec], what: str) -> str:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise DataError(f"{what} gives one array, but the model has {len(specs)} inputs ({names}); "
                        "pass a mapping / .npz keyed by input name")
    return specs[0].name


def _slice_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> Iterator[Feed]:
    counts = {k: (v.shape[0] if v.ndim else 0) for k, v in arrays.items()}
    n = min(counts.values()) if counts else 0
    if len(set(counts.values())) > 1:
        raise DataError(f"inputs hold different numbers of samples: {counts}")
    for start in range(0, n, batch_size):
        yield {k: v[start:start + batch_size] for k, v in arrays.items()}


def _from_reader(reader: Any) -> Iterator[Feed]:
    while (feed := reader.get_next()) is not None:
        yield feed


def raw_batches(data: Any, specs: list[InputSpec], batch_size: int) -> Iterator[Feed]:
    """Turn any accepted data form into an iterator of (unvalidated) feed dicts."""
    if isinstance(data, (str, os.PathLike)):
        data = open_data(data)
    if isinstance(data, ImageFolderReader):
        name = data.input_name or _single_input(specs, "an image folder")
        reader = data.fitted(next(s for s in specs if s.name == name) if any(s.name == name for s in specs) else None)
        return ({name: batch} for batch in reader.batches(batch_size))
    if isinstance(data, ArrayFolderReader):
        return _rebatch(data.feeds(specs), batch_size)
    if isinstance(data, (np.ndarray, FileArray)):
        data = {_single_input(specs, "a single array"): data}
    if isinstance(data, Mapping):
        return _slice_batches({k: v if isinstance(v, FileArray) else np.asarray(v) for k, v in data.items()},
                              batch_size)
    if hasattr(data, "get_next"):
        return _from_reader(data)
    if isinstance(data, Iterable):
        return iter(data)
    raise DataError(f"data of type {type(data).__name__} is not supported; pass an "
                    "array, a dict of arrays, a .npy/.npz path, an image folder, a reader "
                    "with get_next(), or an iterable of feed dicts")


def _as_mapping(item: Any, specs: list[InputSpec]) -> Any:
    """A PyTorch DataLoader-style item -> feed dict: a bare tensor/array, or ``(inputs, labels)``
    whose first element is the input(s), for a single-input model."""
    if isinstance(item, Mapping) or len(specs) != 1:
        return item
    if isinstance(item, (tuple, list)) and item:
        item = item[0]
    if isinstance(item, np.ndarray) or hasattr(item, "detach"):
        return {specs[0].name: item}
    return item


def validate_feed(feed: Any, specs: list[InputSpec], first_sample: int) -> Feed:
    """Check one batch against the model's inputs; return it with dtypes made exact."""
    feed = _as_mapping(feed, specs)
    if not isinstance(feed, Mapping):
        raise DataError(f"data batch at sample {first_sample} is a {type(feed).__name__}, "
                        "expected a dict of input name -> array")
    expected = {s.name for s in specs}
    got = set(feed)
    if got != expected:
        missing, extra = sorted(expected - got), sorted(got - expected)
        parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {extra}"] if extra else [])
        raise DataError(f"data inputs do not match the model: {'; '.join(parts)} "
                        f"(the model's inputs are {sorted(expected)})")
    out: Feed = {}
    for spec in specs:
        out[spec.name] = _check_array(spec, feed[spec.name], first_sample)
    return out


def _check_array(spec: InputSpec, value: Any, first_sample: int) -> np.ndarray:
    arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    want = f"the model expects {spec.describe()}"
    if arr.ndim != len(spec.shape):
        hint = ": add a batch axis" if arr.ndim + 1 == len(spec.shape) else ""
        raise DataError(f"input '{spec.name}' has shape {arr.shape}; {want}{hint}")
    for axis, (got, dim) in enumerate(zip(arr.shape, spec.shape)):
        if isinstance(dim, int) and dim > 0 and got != dim:
            raise DataError(f"input '{spec.name}' has shape {arr.shape}; {want} "
                            f"(axis {axis} must be {dim})")
    if arr.dtype != spec.dtype:
        same_kind = (np.issubdtype(arr.dtype, np.floating) and np.issubdtype(spec.dtype, np.floating)) or (
            np.issubdtype(arr.dtype, np.integer) and np.issubdtype(spec.dtype, np.integer))
        if not same_kind:
            raise DataError(f"input '{spec.name}' has dtype {arr.dtype}; {want}; "
                            "convert (and preprocess) the data first")
        arr = arr.astype(spec.dtype)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1))[0]
        raise DataError(f"input '{spec.name}' holds NaN or Inf at sample "
                        f"{first_sample + int(bad)}; clean the data first")
    return arr


def static_batch_size(specs: list[InputSpec]) -> int | None:
    """The batch size a model with a fixed first dim can run, else ``None``.

    Array data is then sliced into batches of exactly that size; a last, smaller batch
    would not fit the model and is refused by the shape check with a clear message.
    """
    static = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    return static.pop() if len(static) == 1 else None


def fit_batch_size(specs: list[InputSpec], wanted: int) -> int:
    """The batch size to run a model at: its fixed batch dim if it has one (most exported
    files fix it at 1), else ``wanted``."""
    return static_batch_size(specs) or wanted


def collect_arrays(data: Any, specs: list[InputSpec], batch_size: int = 32,
                   samples: int | None = None) -> dict[str, np.ndarray | FileArray]:
    """The first ``samples`` samples of ``data``, validated, as one array per input; ``{}`` when
    there is none. For small fixed sets that are run many times, sliced batch by batch.

    Arrays are not copied: an ndarray comes back as a view (converted where the model wants
    another float/int width) and a :class:`~trtq.core.arrayfile.FileArray` as a lazy view of its
    rows, so a pass holds the batch it runs, not the data set. Other data (image folders,
    readers, iterables) is read once and joined.

    For a model with a fixed batch size the sample count is a multiple of it (:func:`iter_batches`
    leaves a short remainder out), so the arrays can be run in batches of exactly that size.
    """
    arrays = _arrays_of(data, specs)
    if arrays is None:
        parts: dict[str, list[np.ndarray]] = {}
        for _, feed in iter_batches(data, specs, batch_size, samples):
            for k, v in feed.items():
                parts.setdefault(k, []).append(np.asarray(v))
        return {k: np.concatenate(v) for k, v in parts.items()}
    # Validated batch by batch (names, shapes, dtypes, finiteness), then handed out as views.
    files = [v for v in arrays.values() if isinstance(v, FileArray)]
    key = (tuple((s.name, tuple(s.shape), str(s.dtype)) for s in specs), samples)
    n = files[0].checked.get(key) if files and len(files) == len(arrays) else None
    if n is None:
        n = sum(len(next(iter(feed.values()))) for _, feed in iter_batches(arrays, specs, batch_size, samples))
        for f in files:
            f.checked[key] = n
    dtypes = {s.name: s.dtype for s in specs}
    return {k: (v.rows(slice(0, n)).astype(dtypes[k]) if isinstance(v, FileArray) else v[:n].astype(dtypes[k], copy=False))
            for k, v in arrays.items()}


def lazy_batches(data: Any, specs: list[InputSpec], batch_size: int = 32,
                 samples: int | None = None) -> Iterator[tuple[int, dict[str, np.ndarray | FileArray]]]:
    """:func:`iter_batches`, except that array data (validated first, see :func:`collect_arrays`)
    comes as views: a file's rows are read when the consumer slices the batch (or calls
    ``np.asarray``), so a pass that runs a batch in budget-sized slices never holds all of it."""
    arrays = _arrays_of(data, specs)
    if arrays is None:
        yield from iter_batches(data, specs, batch_size, samples)
        return
    feed = collect_arrays(arrays, specs, batch_size, samples)
    n = len(next(iter(feed.values())))
    step = static_batch_size(specs) or batch_size
    for start in range(0, n, step):
        yield start, {k: take_rows(v, slice(start, start + step)) for k, v in feed.items()}


def _arrays_of(data: Any, specs: list[InputSpec]) -> dict[str, np.ndarray | FileArray] | None:
    """``data`` as arrays by input name, when it is arrays (an ndarray, a FileArray or a mapping of them)."""
    if isinstance(data, (str, os.PathLike)) and not Path(data).is_dir():
        data = open_arrays(data)
    if isinstance(data, (np.ndarray, FileArray)):
        return {_single_input(specs, "a single array"): data}
    if isinstance(data, Mapping) and data and all(isinstance(v, (np.ndarray, FileArray)) for v in data.values()):
        return dict(data)
    return None


def take_rows(array: np.ndarray | FileArray, rows: Any) -> np.ndarray | FileArray:
    """``array[rows]``, lazily for a :class:`~trtq.core.arrayfile.FileArray`."""
    return array.rows(rows) if isinstance(array, FileArray) else array[rows]


def count_samples(data: Any, cap: int | None = None) -> int | None:
    """Number of samples in array-like data (for progress bars), else ``None``."""
    n = None
    if isinstance(data, (np.ndarray, FileArray)) and data.ndim:
        n = data.shape[0]
    elif isinstance(data, Mapping) and data:
        first = next(iter(data.values()))
        first = first if isinstance(first, FileArray) else np.asarray(first)
        n = first.shape[0] if first.ndim else None
    elif isinstance(data, ImageFolderReader):
        n = len(data)
    if n is None:
        return cap
    return min(n, cap) if cap is not None else n


def iter_batches(data: Any, specs: list[InputSpec], batch_size: int = 32,
                 samples: int | None = None) -> Iterator[tuple[int, Feed]]:
    """Yield ``(first_sample_index, validated feed)`` batches, at most ``samples`` samples.

    A model with a fixed batch dim is fed batches of exactly that size: a last, smaller
    remainder is left out (and data smaller than one batch is refused).
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    static = static_batch_size(specs)
    batch_size = static or batch_size
    fixed = f"the model runs batches of exactly {static} samples (its inputs fix the batch dimension)"
    if static and samples is not None and samples % static:
        _say_once(f"{fixed}: {max(samples - samples % static, static)} samples are used where {samples} were asked")
        samples = max(samples - samples % static, static)
    seen = 0
    for raw in raw_batches(data, specs, batch_size):
        raw = _as_mapping(raw, specs)
        rows = {len(v) for v in raw.values() if getattr(v, "ndim", 0)} if isinstance(raw, Mapping) else set()
        if static and rows and max(rows) < static:
            if seen == 0:
                raise DataError(f"{fixed} but the data has only {max(rows)}")
            _say_once(f"{fixed}: the data's last {max(rows)} sample(s), which do not fill a batch, are left out")
            break
        feed = validate_feed(raw, specs, seen)
        n = next(iter(feed.values())).shape[0] if feed else 0
        if samples is not None and seen + n > samples:
            feed = {k: v[: samples - seen] for k, v in feed.items()}
            n = samples - seen
        if n == 0:
            break
        yield seen, feed
        seen += n
        if samples is not None and seen >= samples:
            break
    if seen == 0:
        raise DataError("the data is empty: no samples were read")


#: Inputs that mark which positions of a sequence are tokens (1) and which are padding (0):
#: the Hugging Face convention, which most transformer exports keep.
MASK_INPUTS = ("attention_mask",)


@dataclass(frozen=True)
class Padding:
    """A transformer's padded token inputs: the mask input and the inputs whose axis 1 is
    open too (input ids, token types, positions); :meth:`trim` cuts those of the mask's length.

    Calibration and SmoothQuant's statistics run the samples longest first and cut each batch
    after its longest sample (:meth:`trim`). With sentences padded to the longest of a data
    set, padding is most of the positions (69% of 128 docstring sentences padded to 128
    tokens), and a padded position's activations never reach a token's output (the mask
    keeps it out of attention); in batches of similar lengths little of it is left (the
    shorter samples' tail in each batch). Only trailing padding is cut (left padding stays),
    and only where the model leaves the sequence length open.
    """

    mask: str
    inputs: tuple[str, ...]

    @classmethod
    def of(cls, specs: list[InputSpec]) -> "Padding | None":
        mask = next((s for s in specs if s.name in MASK_INPUTS and len(s.shape) == 2
                     and (np.issubdtype(s.dtype, np.integer) or s.dtype == np.bool_)), None)
        if mask is None or isinstance(mask.shape[1], int) and mask.shape[1] > 0:
            return None  # no mask, or a fixed sequence length: nothing may be cut
        # Every input whose axis 1 is open too: exporters do not always give the ids and the
        # mask one symbol for it. :meth:`trim` cuts those of the mask's length.
        return cls(mask.name, tuple(s.name for s in specs if len(s.shape) >= 2
                                    and not (isinstance(s.shape[1], int) and s.shape[1] > 0)))

    @classmethod
    def of_outputs(cls, model: Any) -> "Padding | None":
        """:meth:`of` for running ``model`` (an ONNX ModelProto) to its outputs: only when every
        output's dims past the batch are fixed (a sentence embedding, a classifier's logits), so
        that cutting padding leaves the outputs' shapes, and the tokens' values, as they are."""
        from trtq.core.onnx_model import input_specs

        padding = cls.of(input_specs(model))
        if padding is None:
            return None
        for out in model.graph.output:
            t = out.type.tensor_type
            if not t.HasField("shape") or any(not d.HasField("dim_value") for d in list(t.shape.dim)[1:]):
                return None
        return padding

    def lengths(self, feed: Mapping[str, Any]) -> np.ndarray:
        """Per sample: one past its last token (0 for an all-padding sample)."""
        mask = np.asarray(feed[self.mask]) != 0
        t = mask.shape[1]
        return np.where(mask.any(axis=1), t - np.argmax(mask[:, ::-1], axis=1), 0)

    def order(self, feed: Mapping[str, Any]) -> np.ndarray:
        """Sample indices, longest first (ties in data order)."""
        return np.argsort(-self.lengths(feed), kind="stable")

    def trim(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        """``feed`` with the positions after its longest sample cut from every token input
        (at least one position is kept)."""
        feed = dict(feed)
        if self.mask not in feed or not len(feed[self.mask]):
            return feed
        t = np.shape(feed[self.mask])[1]
        keep = max(int(self.lengths(feed).max()), 1)
        if keep < t:
            for name in self.inputs:
                if np.shape(feed[name])[1] == t:
                    feed[name] = np.asarray(feed[name])[:, :keep]
        return feed


def length_batches(data: Any, specs: list[InputSpec], batch_size: int = 32, samples: int | None = None
                   ) -> tuple[Iterator[tuple[int, Feed]], np.ndarray] | None:
    """For array data of a model with padded token inputs (see :class:`Padding`): the first
    ``samples`` samples in batches, longest first, each cut after its longest sample, as
    ``(position, feed)`` (the position in that order), with the original index of every
    position. ``None`` for other models and other data (use :func:`lazy_batches`)."""
    padding = Padding.of(specs)
    arrays = _arrays_of(data, specs) if padding is not None else None
    if arrays is None or padding.mask not in arrays:
        return None
    feed, _, order = by_length(collect_arrays(arrays, specs, batch_size, samples), specs)
    step = static_batch_size(specs) or batch_size

    def batches() -> Iterator[tuple[int, Feed]]:
        for start in range(0, len(order), step):
            yield start, padding.trim({k: np.asarray(v[start:start + step]) for k, v in feed.items()})
    return batches(), order


def in_data_order(values: Mapping[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of samples run in ``order`` (row ``i``: sample ``order[i]``) back in the data's order."""
    out = {}
    for name, v in values.items():
        out[name] = np.empty_like(v)
        out[name][order] = v
    return out


def by_length(feed: Mapping[str, Any], specs: list[InputSpec]) -> tuple[dict[str, Any], "Padding | None", np.ndarray | None]:
    """``feed`` (arrays by input name) with its samples longest first, for a model with padded
    token inputs (see :class:`Padding`); the padding and the original index of each row come
    back too. Other models' feeds come back unchanged, with ``None`` for both."""
    padding = Padding.of(specs)
    if padding is None or padding.mask not in feed:
        return dict(feed), None, None
    order = padding.order(feed)
    return {k: take_rows(v, order) for k, v in feed.items()}, padding, order
