"""Per-layer activation clipping chosen by the error of the layer's *output*.

Calibration methods pick a range from the activation alone (its max, a percentile, the
KL or MSE of its own quantization). What matters is the output of the layer that reads
it: clipping a few large inputs may cost little there while finer steps for the rest
gain a lot, or the reverse. For each activation tensor whose int8 readers are all
weighted layers (Conv, ConvTranspose, Gemm, MatMul with a constant weight), on
calibration samples, this tries ``amax * f`` for a few fractions ``f`` and keeps the one
with the least squared error of those layers' outputs (int8 weights per output channel
and int8 input, against fp32 weights and input), summed over the readers, each relative
to its output energy. Tensors also read by other int8 ops (a residual Add) keep their
calibrated range.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trtq.calibration import CalibrationTable
from trtq.core.onnx_model import input_specs, load_model
from trtq.core.progress import progress_bar
from trtq.core.readers import collect_arrays, fit_batch_size
from trtq.quantize.graph import GraphIndex, float_session
from trtq.quantize.qdq import fake_quantize, quantize_weight, weight_params
from trtq.quantize.rules import QDQ_RULES
from trtq.core.errors import QuantizationError, require
from trtq.quantize.results import ClippedTable
from trtq.core.runtime import ort_session

log = logging.getLogger(__name__)

#: Fractions of the calibrated amax tried per tensor (1.0: keep it).
DEFAULT_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)


@dataclass(frozen=True)
class ClipChoice:
    tensor: str
    nodes: tuple[str, ...]
    fraction: float
    sqnr_before_db: float  # the readers' int8 output SQNR with the calibrated range
    sqnr_after_db: float

    def to_json(self) -> dict:
        return {"tensor": self.tensor, "nodes": list(self.nodes), "fraction": self.fraction,
                "sqnr_before_db": round(self.sqnr_before_db, 2), "sqnr_after_db": round(self.sqnr_after_db, 2)}


def _refinable(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int, int, int | None]]]:
    """Tensor -> its int8 readers as (node, activation input index, weight input index, axis);
    only tensors every int8 reader of which is a weighted layer."""
    g = GraphIndex(model.graph)
    readers: dict[str, list] = {}
    blocked: set[str] = set()
    for node in model.graph.node:
        rule = QDQ_RULES.get(node.op_type)
        if rule is None:
            continue
        wanted = rule(node, g)
        acts = [iq for iq in wanted if not iq.weight]
        weights = [iq for iq in wanted if iq.weight]
        if len(acts) == 1 and len(weights) == 1:
            readers.setdefault(node.input[acts[0].index], []).append(
                (node, acts[0].index, weights[0].index, weights[0].axis))
        else:
            blocked.update(node.input[iq.index] for iq in acts)
    return {t: r for t, r in readers.items() if t not in blocked}


def _layer(node: onnx.NodeProto, act_index: int, weight_index: int, axis: int | None, g: GraphIndex,
           x: np.ndarray, int8_weight: bool, opset: int):
    """A session running ``node`` alone, its input ``x``-shaped, weights fp32 or int8-rounded."""
    ort = require("onnxruntime", "cpu")
    inputs = list(node.input)
    inits = []
    for i, name in enumerate(inputs):
        if i == act_index or not name:
            continue
        value = g.constant(name)
        if value is None:
            raise QuantizationError(f"input {i} of '{node.name}' is not constant")
        if i == weight_index and int8_weight:
            p = weight_params(value, axis)
            s = p.scale if p.axis is None else p.scale.reshape([-1 if k == p.axis else 1 for k in range(value.ndim)])
            value = (quantize_weight(value, p).astype(np.float32) * s).astype(value.dtype)
        inits.append(numpy_helper.from_array(value, f"c{i}"))
        inputs[i] = f"c{i}"
    inputs[act_index] = "x"
    single = helper.make_node(node.op_type, inputs, ["y"], **{a.name: helper.get_attribute_value(a)
                                                               for a in node.attribute})
    graph = helper.make_graph([single], "layer", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                 list(x.shape))],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort_session(model, opts)


def refine_clipping(model: str | os.PathLike | onnx.ModelProto, table: CalibrationTable, data: Any, *,
                    samples: int = 16, batch_size: int = 16, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                    progress: bool = True) -> ClippedTable[ClipChoice]:
    """A copy of ``table`` with each refinable activation's range clipped to the fraction that
    minimizes its readers' int8 output error (see the module docstring), and the choices."""
    model = load_model(model)
    readers = _refinable(model)
    tensors = [t for t in readers if t in table and table[t].amax > 0]
    if not tensors:
        return ClippedTable(table)
    batch_size = fit_batch_size(input_specs(model), batch_size)  # a fixed batch dim wins
    feed = collect_arrays(data, input_specs(model), batch_size, samples)
    if not feed:
        raise QuantizationError("clipping refinement needs calibration data; none was given")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    g = GraphIndex(model.graph)
    session = float_session(model, tensors)
    values = {t: [] for t in tensors}
    n = len(next(iter(feed.values())))
    for i in range(0, n, batch_size):
        for t, v in zip(tensors, session.run(tensors, {k: a[i:i + batch_size] for k, a in feed.items()})):
            values[t].append(np.asarray(v, np.float32))
    ranges = dict(table.ranges)
    choices = []
    with progress_bar("clipping per layer", len(tensors), unit="tensors", enabled=progress) as bar:
        for t in tensors:
            x = np.concatenate(values.pop(t))
            amax = table[t].amax
            layers = []
            for node, ai, wi, axis in readers[t]:
                ref = _layer(node, ai, wi, axis, g, x, False, opset).run(["y"], {"x": x})[0].astype(np.float64)
                layers.append((_layer(node, ai, wi, axis, g, x, True, opset), ref, max((ref ** 2).mean(), 1e-30)))
            errors = []
            for f in fractions:
                xq = fake_quantize(x, amax * f)
                errors.append(sum(((s.run(["y"], {"x": xq})[0] - ref) ** 2).mean() / energy
                                  for s, ref, energy in layers) / len(layers))
            best = int(np.argmin(errors))
            f = float(fractions[best])
            base = errors[list(fractions).index(1.0)] if 1.0 in fractions else errors[0]
            choices.append(ClipChoice(t, tuple(n.name for n, *_ in readers[t]), f,
                                      10 * math.log10(1 / max(base, 1e-30)),
                                      10 * math.log10(1 / max(errors[best], 1e-30))))
            if f != 1.0:
                r = table[t]
                ranges[t] = replace(r, lo=max(r.lo, -amax * f), hi=min(r.hi, amax * f),
                                    method=f"{r.method}+layer-clip")
            bar.advance(1)
    clipped = sum(c.fraction != 1.0 for c in choices)
    log.info("clipping per layer: %d of %d tensors clipped", clipped, len(choices))
    return ClippedTable(CalibrationTable(ranges, table.method, table.model_sha256, table.samples), tuple(choices))


__all__ = ["ClipChoice", "DEFAULT_FRACTIONS", "refine_clipping"]
