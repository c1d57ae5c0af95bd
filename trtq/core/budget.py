"""The memory budget of the statistics passes (``--max-memory``).

Every pass that runs the model over data (calibration, SmoothQuant and GPTQ statistics,
bias correction, evaluation) holds activations: those ONNX Runtime computes for a batch and
those it returns. Both grow with batch size × activation size, so a pass asks this module
how many samples to run at once (:meth:`MemoryBudget.rows`) and, where it fetches many full
tensors, which tensors to fetch per run (:meth:`MemoryBudget.groups`). The sizes come
from shape inference with the data's own shape (a 1024×1024 input is sized as such);
a tensor whose size shape inference cannot tell counts as the largest one it can.

The budget is for these buffers, not for the whole process (the Python runtime, the model's
weights, the data set and, when exporting, PyTorch come on top). One budget is active at a
time: :func:`memory_budget` sets it for a block (the job sets ``--max-memory``), and
:func:`current_budget` is what passes use when not given one.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from trtq.core.errors import DataError
from trtq.core.onnx_model import infer_types

__all__ = ["DEFAULT_MAX_MEMORY", "MemoryBudget", "RunSizer", "current_budget", "memory_budget", "parse_memory"]

#: The default budget for a pass's activations: with the runtime, weights and data set on top,
#: the default job stays near 2 GB of resident memory on a 224×224 CNN or a MiniLM.
DEFAULT_MAX_MEMORY = 768 * 2**20
#: ONNX Runtime's working memory for one sample, as a multiple of the sum of the sizes of the
#: activations it computes (measured on EfficientNet-Lite0 calibrating all 95 tensors: ~1.7×
#: the 64 MB of activations per sample, rounded up; statistics graphs keep tensors alive for their
#: reductions and copies).
ORT_FACTOR = 2.0

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30}


def parse_memory(text: str | int) -> int:
    """``"2GB"``, ``"512M"``, ``"1.5 GiB"`` or a byte count -> bytes (units are powers of 1024)."""
    if isinstance(text, (int, np.integer)):
        value = int(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise DataError(f"memory size {text!r} is not understood; write e.g. 2GB, 512MB or 1.5GiB")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value < 16 * 2**20:
        raise DataError(f"a memory budget of {value} bytes is too small to run anything; give at least 16MB")
    return value


@dataclass
class MemoryBudget:
    """``limit`` bytes for the activations one pass holds at a time."""

    limit: int = DEFAULT_MAX_MEMORY

    def rows(self, per_sample: int, wanted: int) -> int:
        """Samples to run at once: at most ``wanted``, at least 1, ``per_sample`` bytes each."""
        if per_sample <= 0:
            return max(wanted, 1)
        return max(1, min(wanted, self.limit // per_sample))

    def groups(self, sizes: Mapping[str, int], share: float = 0.5) -> list[list[str]]:
        """The tensors split into runs whose fetched bytes (per sample) stay within ``share`` of
        the budget; in the given order, at least one tensor per run."""
        cap = max(1, int(self.limit * share))
        out: list[list[str]] = []
        used = 0
        for name, size in sizes.items():
            if out and used + size <= cap:
                out[-1].append(name)
                used += size
            else:
                out.append([name])
                used = size
        return out

    @staticmethod
    def tensor_bytes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]],
                     names: Iterable[str] | None = None) -> dict[str, int]:
        """Bytes per sample of the model's float tensors (``names``, default all) when its
        inputs have these per-sample ``shapes`` (without the batch dim)."""
        sizes = _tensor_bytes(model, shapes)
        return sizes if names is None else select(sizes, names)

    @staticmethod
    def ort_bytes(sizes: Mapping[str, int]) -> int:
        """ONNX Runtime's working memory per sample for a run computing tensors of these
        sizes (:meth:`tensor_bytes` of the whole model; an estimate)."""
        return int(ORT_FACTOR * sum(sizes.values()))

    def rows_for(self, model: onnx.ModelProto, feed: Mapping[str, np.ndarray], fetched: Iterable[str] = ()) -> int:
        """Samples of ``feed`` to run ``model`` on at once (see :class:`RunSizer`)."""
        return RunSizer(model, fetched).rows(feed, self)


class RunSizer:
    """How many samples of a feed one run of ``model`` may take: its working memory plus the
    ``fetched`` tensors within the budget. The bytes per sample are worked out once per
    sample shape (data of varying H×W is sized per shape). A model with a fixed batch dim
    runs whole batches."""

    def __init__(self, model: onnx.ModelProto, fetched: Iterable[str] = ()) -> None:
        from trtq.core.onnx_model import input_specs
        from trtq.core.readers import static_batch_size

        self.model, self.fetched = model, list(fetched)
        self.static = static_batch_size(input_specs(model)) is not None
        self._per_sample: dict[tuple, int] = {}

    def rows(self, feed: Mapping[str, np.ndarray], budget: MemoryBudget | None = None) -> int:
        n = len(next(iter(feed.values()))) if feed else 0
        if self.static:
            return n
        shapes = sample_shapes(feed)
        key = tuple(sorted(shapes.items()))
        if key not in self._per_sample:
            sizes = _tensor_bytes(self.model, shapes)
            self._per_sample[key] = MemoryBudget.ort_bytes(sizes) + sum(select(sizes, self.fetched).values())
        return (budget or current_budget()).rows(self._per_sample[key], n)


def run_sliced(run: Callable[[dict], list[np.ndarray]], feed: Mapping[str, np.ndarray], rows: int) -> list[np.ndarray]:
    """``run(feed)``, in slices of ``rows`` samples joined along the batch axis, so the runtime
    holds one slice's activations at a time; the slices are written into the joined outputs
    as they come (never held twice). Outputs without the slice's batch axis cannot be
    joined: then the whole feed runs at once. ``feed`` may hold lazy arrays
    (:class:`~trtq.core.arrayfile.FileArray`): each slice is read as it runs."""
    n = len(next(iter(feed.values()))) if feed else 0
    if rows >= n:
        return run({k: np.asarray(v) for k, v in feed.items()})
    joined: list[np.ndarray] = []
    for start in range(0, n, max(rows, 1)):
        chunk = {k: v[start:start + rows] for k, v in feed.items()}
        count = len(next(iter(chunk.values())))
        out = run(chunk)
        if not joined:
            if any(np.ndim(v) == 0 or np.shape(v)[0] != count for v in out):
                return run({k: np.asarray(v) for k, v in feed.items()})
            joined = [np.empty((n, *np.shape(v)[1:]), np.asarray(v).dtype) for v in out]
        for target, value in zip(joined, out):
            target[start:start + count] = value
    return joined


def select(sizes: Mapping[str, int], names: Iterable[str]) -> dict[str, int]:
    """``sizes`` of ``names``; a name without a size counts as the largest size there is."""
    largest = max(sizes.values(), default=0)
    return {n: sizes.get(n, largest) for n in names}


def _tensor_bytes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    try:
        types = infer_types(model, {k: (1, *v) for k, v in shapes.items()})
    except Exception:  # a model shape inference cannot follow: size nothing, count the inputs
        types = {}
    sizes: dict[str, int] = {}
    produced = [o for node in model.graph.node if node.op_type != "Constant" for o in node.output if o]
    for name in [*shapes, *produced]:
        t = types.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            continue
        tt = t.tensor_type
        if tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim]
        if dims and all(d > 0 for d in dims):
            sizes[name] = math.prod(dims) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
    known = max(sizes.values(), default=0)
    for name in produced:  # unknown sizes count as the largest known one
        sizes.setdefault(name, known)
    return sizes


_CURRENT: contextvars.ContextVar[MemoryBudget] = contextvars.ContextVar("trtq_memory_budget")


def current_budget() -> MemoryBudget:
    """The budget set by the innermost :func:`memory_budget` block (default: :data:`DEFAULT_MAX_MEMORY`)."""
    try:
        return _CURRENT.get()
    except LookupError:
        budget = MemoryBudget()
        _CURRENT.set(budget)
        return budget


@contextlib.contextmanager
def memory_budget(limit: int | str | None) -> Iterator[MemoryBudget]:
    """Passes inside this block hold at most ``limit`` bytes of activations at a time."""
    budget = MemoryBudget(DEFAULT_MAX_MEMORY if limit is None else parse_memory(limit))
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


def sample_shapes(feed: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes (without the batch dim) of a feed."""
    return {k: tuple(np.shape(v)[1:]) for k, v in feed.items()}


def chunks(feed: Mapping[str, np.ndarray], rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The feed in slices of at most ``rows`` samples."""
    n = len(next(iter(feed.values()))) if feed else 0
    for i in range(0, n, max(rows, 1)):
        yield {k: v[i:i + rows] for k, v in feed.items()}


__all__ += ["chunks", "run_sliced", "sample_shapes", "select"]
