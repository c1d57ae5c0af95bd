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
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx

from trtq.core.errors import DataError
from trtq.core.onnx_model import infer_types

__all__ = ["DEFAULT_MAX_MEMORY", "MemoryBudget", "current_budget", "memory_budget", "parse_memory"]

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
    _sizes: dict = field(default_factory=dict, repr=False)

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

    def tensor_bytes(self, model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]],
                     names: Iterable[str] | None = None) -> dict[str, int]:
        """Bytes per sample of the model's float tensors (``names``, default all) when its
        inputs have these per-sample ``shapes`` (without the batch dim); cached per shape."""
        key = (id(model), tuple(sorted((k, tuple(v)) for k, v in shapes.items())))
        if key not in self._sizes:
            self._sizes = {key: _tensor_bytes(model, shapes)}  # one model and shape at a time
        sizes = self._sizes[key]
        if names is None:
            return dict(sizes)
        largest = max(sizes.values(), default=0)
        return {n: sizes.get(n, largest) for n in names}

    def ort_bytes(self, model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> int:
        """ONNX Runtime's working memory per sample for a run of ``model`` (an estimate)."""
        return int(ORT_FACTOR * sum(self.tensor_bytes(model, shapes).values()))

    def rows_for(self, model: onnx.ModelProto, feed: Mapping[str, np.ndarray], fetched: Iterable[str] = ()) -> int:
        """Samples of ``feed`` to run ``model`` on at once: its working memory plus the
        ``fetched`` tensors within the budget. A model with a fixed batch dim runs whole batches."""
        n = len(next(iter(feed.values()))) if feed else 0
        if any(isinstance(d, int) and d > 0 for d in _batch_dims(model)):
            return n
        shapes = sample_shapes(feed)
        per_sample = self.ort_bytes(model, shapes) + sum(self.tensor_bytes(model, shapes, fetched).values())
        return self.rows(per_sample, n)


def _batch_dims(model: onnx.ModelProto) -> list:
    inits = {t.name for t in model.graph.initializer}
    return [vi.type.tensor_type.shape.dim[0].dim_value for vi in model.graph.input
            if vi.name not in inits and vi.type.tensor_type.shape.dim
            and vi.type.tensor_type.shape.dim[0].HasField("dim_value")]


def run_sliced(run: Callable[[dict], list[np.ndarray]], feed: Mapping[str, np.ndarray], rows: int) -> list[np.ndarray]:
    """``run(feed)``, in slices of ``rows`` samples joined along the batch axis, so the runtime
    holds one slice's activations at a time. Outputs without the slice's batch axis cannot be
    joined: then the whole feed runs at once."""
    n = len(next(iter(feed.values()))) if feed else 0
    if rows >= n:
        return run(dict(feed))
    parts = []
    for chunk in chunks(feed, rows):
        out = run(chunk)
        if any(np.ndim(v) == 0 or np.shape(v)[0] != len(next(iter(chunk.values()))) for v in out):
            return run(dict(feed))
        parts.append(out)
    return [np.concatenate(p) for p in zip(*parts)]


def _tensor_bytes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    # The graph with batch-1 inputs of the data's shape; weights as bare typed tensors
    # (infer_types reads only their names, types and dims), value infos dropped (they may
    # hold the old symbolic shapes).
    inputs = []
    for vi in model.graph.input:
        vi2 = onnx.ValueInfoProto()
        vi2.CopyFrom(vi)
        if vi.name in shapes:
            dims = vi2.type.tensor_type.shape.dim
            del dims[:]
            for d in (1, *shapes[vi.name]):
                dims.add().dim_value = int(d)
        inputs.append(vi2)
    weights = [onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims) for t in model.graph.initializer]
    light = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions,
                            graph=onnx.GraphProto(name=model.graph.name, node=model.graph.node, input=inputs,
                                                  initializer=weights, output=model.graph.output))
    try:
        types = infer_types(light)
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


__all__ += ["chunks", "run_sliced", "sample_shapes"]
