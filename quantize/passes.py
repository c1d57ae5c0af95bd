"""Graph passes on onnx-ir: each says whether it mutates its input and what it changed.

onnx-ir tracks every value's producer and uses, including uses inside subgraphs (an ``If``
branch or a ``Loop`` body that reads an outer tensor holds that very value), so a pass
written on it cannot drop or rewire a tensor a subgraph still reads.

* :class:`FoldBatchNormPass` — Conv -> BatchNormalization folded into the Conv;
* :class:`RemoveUnusedInitializersPass` — initializers nothing reads (subgraphs included);
* :func:`apply_passes` — run passes on an ``onnx.ModelProto`` and get a new one back.

Nodes *inside* subgraphs are left untouched on purpose: trtq quantizes the main graph (where
a model's convolutions and matmuls live); a branch keeps its float computation and still
reads whatever outer tensors it read before. ``tests/quantize/test_passes.py`` shows both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import FunctionalPass, InPlacePass, PassResult, Sequential

__all__ = ["FoldBatchNormPass", "FoldedBatchNorm", "RemoveUnusedInitializersPass", "apply_passes"]

log = logging.getLogger(__name__)


def apply_passes(model: onnx.ModelProto, *passes: InPlacePass | FunctionalPass) -> tuple[onnx.ModelProto, bool]:
    """Run ``passes`` in order on an IR copy of ``model`` (which is left as it is); return the
    resulting ModelProto and whether any pass changed it."""
    result = Sequential(*passes)(ir.from_proto(model))
    return ir.to_proto(result.model), result.modified


def _const(value: ir.Value | None) -> np.ndarray | None:
    """The value of an initializer or a Constant node's output, else ``None``."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _unique_name(graph: ir.Graph, base: str) -> str:
    taken = set(graph.initializers) | {v.name for n in graph for v in n.outputs} | {v.name for v in graph.inputs}
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def _add_initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=_unique_name(graph, base), const_value=ir.tensor(array))
    graph.register_initializer(value)
    return value


@dataclass(frozen=True)
class FoldedBatchNorm:
    conv: str
    batchnorm: str


class FoldBatchNormPass(InPlacePass):
    """Fold each inference-mode BatchNormalization into the Conv that feeds it.

    For ``y = gamma * (conv(x, W) + b - mean) / sqrt(var + eps) + beta`` with
    ``s = gamma / sqrt(var + eps)`` per output channel: ``W' = W * s`` (along the
    output-channel axis 0) and ``b' = (b - mean) * s + beta``, in float64, stored in W's dtype.
    Foldable: the Conv output has the BN as its only use anywhere (subgraphs included) and is
    not a graph output; W, b and the BN parameters are constants. The BN's output name is kept.
    Main graph only (see the module docstring). ``self.folded`` lists what was folded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.folded: list[FoldedBatchNorm] = []

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        self.folded = []
        for bn in list(graph):
            if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
                continue
            if len([o for o in bn.outputs if o.name]) != 1 or len(bn.outputs) != 1:
                continue
            mode = bn.attributes.get("training_mode")
            if mode is not None and mode.as_int():
                continue
            x = bn.inputs[0]
            conv = x.producer() if x is not None else None
            if conv is None or conv.op_type != "Conv" or len(x.uses()) != 1 or x.is_graph_output():
                continue
            if self._fold(graph, conv, bn):
                self.folded.append(FoldedBatchNorm(conv.name or "", bn.name or ""))
        if self.folded:
            log.info("folded %d BatchNormalization nodes into convolutions", len(self.folded))
        return PassResult(model, modified=bool(self.folded))

    @staticmethod
    def _fold(graph: ir.Graph, conv: ir.Node, bn: ir.Node) -> bool:
        params = [_const(v) for v in bn.inputs[1:5]]
        weight = _const(conv.inputs[1])
        has_bias = len(conv.inputs) > 2 and conv.inputs[2] is not None
        bias = _const(conv.inputs[2]) if has_bias else None
        if weight is None or any(p is None for p in params) or (has_bias and bias is None):
            return False
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        eps = bn.attributes["epsilon"].as_float() if "epsilon" in bn.attributes else 1e-5
        s = gamma / np.sqrt(var + eps)
        w = (weight.astype(np.float64) * s.reshape(-1, *([1] * (weight.ndim - 1)))).astype(weight.dtype)
        b0 = bias.astype(np.float64) if bias is not None else np.zeros_like(mean)
        b = ((b0 - mean) * s + beta).astype(weight.dtype)
        base = conv.name or conv.outputs[0].name
        w_value = _add_initializer(graph, f"{base}.weight_folded", w)
        b_value = _add_initializer(graph, f"{base}.bias_folded", b)
        if len(conv.inputs) < 3:
            conv.resize_inputs(3)
        conv.replace_input_with(1, w_value)
        conv.replace_input_with(2, b_value)
        out, name = bn.outputs[0], bn.outputs[0].name
        ir.convenience.replace_all_uses_with(out, conv.outputs[0], replace_graph_outputs=True)
        graph.remove(bn, safe=True)
        out.name = None
        conv.outputs[0].name = name
        return True


class RemoveUnusedInitializersPass(InPlacePass):
    """Drop initializers (and their graph-input entries) that no node, subgraph or output reads."""

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        unused = [v for v in graph.initializers.values() if not v.uses() and not v.is_graph_output()]
        for value in unused:
            if value.is_graph_input():
                graph.inputs.remove(value)
            del graph.initializers[value.name]
        return PassResult(model, modified=bool(unused))
