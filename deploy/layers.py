"""Where the int8 error comes from: each compute layer's output in the quantized model against
the same layer in fp32, on a few evaluation samples (what ``report.html`` charts)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from trtq.core.budget import MemoryBudget, current_budget, run_sliced, sample_shapes
from trtq.core.onnx_model import input_specs, load_model
from trtq.core.readers import collect_arrays, fit_batch_size
from trtq.deploy.compare import signal_noise
from trtq.deploy.plan import COMPUTE_OPS, precision_plan

__all__ = ["LayerError", "layer_errors", "layer_inputs"]


@dataclass(frozen=True)
class LayerError:
    """One compute layer: its precision in the candidate and its output SQNR (dB) vs fp32."""

    node: str
    op_type: str
    precision: str
    sqnr_db: float
    input: str  # the layer's activation input (for range plots)

    def to_json(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "precision": self.precision,
                "sqnr_db": round(self.sqnr_db, 2), "input": self.input}


def _outputs(model: onnx.ModelProto, names: list[str], feed: dict[str, np.ndarray], batch: int) -> dict:
    from trtq.quantize.graph import float_session

    session = float_session(model, names)
    per_run = current_budget().rows_for(model, feed, names)  # samples per run, within the budget
    # In runs of whole batches at most (a fixed batch dim runs exactly its batches).
    values = run_sliced(lambda f: session.run(names, f), feed, min(per_run, batch))
    return dict(zip(names, values))


def layer_errors(reference: Any, candidate: Any, data: Any, *, samples: int = 8,
                 batch_size: int = 8) -> list[LayerError]:
    """Output SQNR of every compute node (Conv, ConvTranspose, Gemm, MatMul) present in both
    models under the same name, in graph order; Q/DQ run in float (TensorRT's math)."""
    ref, cand = load_model(reference), load_model(candidate)
    precision = precision_plan(cand)
    ref_nodes = {n.name: n for n in ref.graph.node if n.op_type in COMPUTE_OPS and n.name}
    nodes = [n for n in cand.graph.node if n.op_type in COMPUTE_OPS and n.name in ref_nodes
             and ref_nodes[n.name].output[0] == n.output[0]]
    if not nodes:
        return []
    specs = input_specs(ref)
    batch_size = fit_batch_size(specs, batch_size)
    feed = collect_arrays(data, specs, batch_size, samples)
    names = [n.output[0] for n in nodes]
    # Both models' outputs of a group of layers at a time (on all samples, the two together
    # within half the memory budget), reduced to signal and noise energy at once.
    signal, noise = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    budget = current_budget()
    n = len(next(iter(feed.values())))
    for group in budget.groups(MemoryBudget.tensor_bytes(ref, sample_shapes(feed), names), share=0.25 / n):
        want, got = _outputs(ref, group, feed, batch_size), _outputs(cand, group, feed, batch_size)
        for name in group:
            signal[name], noise[name] = signal_noise(want.pop(name), got.pop(name))
    out = []
    for node, name in zip(nodes, names):
        sqnr = 10 * math.log10(signal[name] / noise[name]) if noise[name] > 0 else float("inf")
        out.append(LayerError(node.name, node.op_type, precision.get(node.name, "fp32"), sqnr,
                              ref_nodes[node.name].input[0]))
    return out


def layer_inputs(reference: Any, tensors: list[str], data: Any, *, samples: int = 8,
                 batch_size: int = 8) -> dict[str, np.ndarray]:
    """The fp32 values of ``tensors`` on a few samples (to plot their ranges)."""
    ref = load_model(reference)
    specs = input_specs(ref)
    batch_size = fit_batch_size(specs, batch_size)
    feed = collect_arrays(data, specs, batch_size, samples)
    if feed:  # as many of these samples as the memory budget holds of the tensors (a whole batch at least)
        each = sum(MemoryBudget.tensor_bytes(ref, sample_shapes(feed), tensors).values())
        rows = current_budget().rows(4 * each, len(next(iter(feed.values()))))
        keep = max(rows - rows % batch_size, batch_size)
        feed = {k: v[:keep] for k, v in feed.items()}
    inner = [t for t in tensors if t not in feed]
    values = _outputs(ref, inner, feed, batch_size) if inner else {}
    return {t: (feed[t] if t in feed else values[t]) for t in tensors}
