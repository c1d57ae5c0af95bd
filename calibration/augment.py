"""The calibration graph: the model plus, per calibrated tensor, the statistics observers need.

For each tensor ``t`` the augmented model outputs, computed inside ONNX Runtime:

* ``min(t)``, ``max(t)`` and ``sum(t)`` over the whole batch (``ReduceMin/Max/Sum`` over
  all axes but the first, finished on the host); the sum
  is finite only if ``t`` holds no NaN/Inf (``ReduceMin/Max`` skip NaN), so it is the
  collector's cheap non-finite alarm;
* for observers that need values (histograms), ``t`` itself or, when one batch of it holds
  more than ``max_elements`` values, every ``k``-th row along axis -2 (image rows, token
  positions) — a deterministic, even subsample that keeps memory and copying small.

Only these outputs leave ONNX Runtime, so a batch's full activations are never copied out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.core.onnx_model import infer_types

FLOAT32 = TensorProto.FLOAT
#: Values per tensor and batch that histogram calibration sees at most: 64K per batch of 8
#: is about 2M values per tensor over 256 samples (500 per bin of a 4096-bin histogram).
DEFAULT_MAX_ELEMENTS = 1 << 16


@dataclass(frozen=True)
class Probe:
    """Output names of one tensor's statistics in the augmented model."""

    tensor: str
    lo: str
    hi: str
    total: str
    values: str | None  # the (sub)sampled values, or None
    row_step: int  # 1: ``values`` is the whole tensor


def _unique(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Inferred shape (ints, or None for unknown dims) and elem type of every tensor."""
    out = {}
    for name, t in infer_types(model).items():
        tt = t.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim) \
            if tt.HasField("shape") else None
        out[name] = (dims, tt.elem_type)
    return out


def row_step(shape: tuple | None, batch_size: int, max_elements: int | None) -> int:
    """Every how many rows (axis -2) to keep so one batch yields about ``max_elements`` values."""
    if max_elements is None or shape is None or len(shape) < 3 or any(d is None for d in shape[1:]):
        return 1
    per_batch = batch_size * int(np.prod(shape[1:]))
    if per_batch <= max_elements:
        return 1
    return int(min(-(-per_batch // max_elements), shape[-2]))


def _reduce(op: str, src: str, out: str, axes: list[int] | None, axes_name: str | None,
            opset: int) -> onnx.NodeProto:
    """``op`` over ``axes`` (all when None), axes given the way the model's opset wants."""
    if axes is None:
        return helper.make_node(op, [src], [out], keepdims=0)
    axes_as_input = opset >= 18 or (op == "ReduceSum" and opset >= 13)
    if axes_as_input:
        return helper.make_node(op, [src, axes_name], [out], keepdims=0)
    return helper.make_node(op, [src], [out], keepdims=0, axes=axes)


def augment(model: onnx.ModelProto, tensors: list[str], *, values: bool, batch_size: int,
            max_elements: int | None) -> tuple[onnx.ModelProto, list[Probe]]:
    """Return the calibration graph and one :class:`Probe` per tensor (in order)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    shapes = tensor_shapes(model)
    del g.output[:]
    zero, big, axis = (_unique(n, taken) for n in ("trtq_zero", "trtq_end", "trtq_axis"))
    slice_constants = [numpy_helper.from_array(np.array([0], np.int64), zero),
                       numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), big),
                       numpy_helper.from_array(np.array([-2], np.int64), axis)]
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    can_slice = opset >= 10  # Slice takes steps as an input from opset 10
    probes = []
    for t in tensors:
        shape, elem = shapes.get(t, (None, FLOAT32))
        src = t
        if elem != FLOAT32:  # reduce in float32: an fp16 sum overflows long before its values do
            src = _unique(f"{t}_f32", taken)
            g.node.append(helper.make_node("Cast", [t], [src], to=FLOAT32))
        lo, hi, total = (_unique(f"{t}_{s}", taken) for s in ("min", "max", "sum"))
        # Reduce every axis but the first: ORT parallelises over the rows left (2x faster
        # than one reduction over everything); the few partial results are combined on the host.
        axes = list(range(1, len(shape))) if shape is not None and len(shape) >= 2 else None
        axes_name = None
        if axes is not None:
            axes_name = _unique(f"{t}_axes", taken)
            g.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
        for op, name in (("ReduceMin", lo), ("ReduceMax", hi), ("ReduceSum", total)):
            g.node.append(_reduce(op, src, name, axes, axes_name, opset))
        g.output.extend(helper.make_tensor_value_info(n, FLOAT32, [] if axes is None else [None])
                        for n in (lo, hi, total))
        step, vals = 1, None
        if values:
            step = row_step(shape, batch_size, max_elements) if can_slice else 1
            vals = src
            if step > 1:
                if slice_constants:
                    g.initializer.extend(slice_constants)
                    slice_constants = []
                vals = _unique(f"{t}_rows", taken)
                steps = _unique(f"{t}_step", taken)
                g.initializer.append(numpy_helper.from_array(np.array([step], np.int64), steps))
                g.node.append(helper.make_node("Slice", [src, zero, big, axis, steps], [vals]))
            g.output.append(helper.make_tensor_value_info(vals, FLOAT32, None if shape is None else [None] * len(shape)))
        probes.append(Probe(t, lo, hi, total, vals, step))
    return out, probes


def expose(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """The model with ``tensors`` as its only outputs (the slow, exact path)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors)
    return out
