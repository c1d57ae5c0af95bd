"""Graph passes on onnx-ir: each says whether it mutates its input and what it changed.

onnx-ir tracks every value's producer and uses, including uses inside subgraphs (an ``If``
branch or a ``Loop`` body that reads an outer tensor holds that very value), so a pass
written on it cannot drop or rewire a tensor a subgraph still reads.

* :class:`FoldBatchNormPass` — Conv -> BatchNormalization folded into the Conv;
* :class:`RemoveUnusedInitializersPass` — initializers nothing reads (subgraphs included);
* :class:`UpcastFloat16Pass` — a float16 model computed in float32, its float16 inputs and
  outputs kept (the form every later stage works on);
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

__all__ = ["FoldBatchNormPass", "FoldedBatchNorm", "RemoveUnusedInitializersPass", "UpcastFloat16Pass",
           "apply_passes", "upcast_float16"]

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


#: Ops whose ``dtype`` attribute names the type of the tensor they create.
_DTYPE_OPS = frozenset({"EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"})


def _fp32_tensor(tensor) -> ir.Tensor:
    return ir.tensor(tensor.numpy().astype(np.float32), name=tensor.name)


class UpcastFloat16Pass(InPlacePass):
    """Compute a float16 model in float32: the same function, without fp16 rounding.

    Every float16 initializer and Constant becomes float32, as do ``Cast``/``ConstantOfShape``
    and the ops with a ``dtype`` attribute that made float16 tensors, and every float16 value's
    type (subgraphs included). The graph's float16 inputs and outputs keep their type and
    name: a ``Cast`` to float32 follows each such input, one back to float16 precedes each such
    output, so the model takes and returns what it did. Why: Q/DQ on float16 tensors needs
    opset 19, GPTQ and calibration want float32, and a user's fp16 file (common for TensorRT)
    then goes through every stage like an fp32 one. Idempotent: the boundary Casts are
    recognized on a second run. ``self.upcast``: how many tensors or attributes changed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.upcast = 0

    def call(self, model: ir.Model) -> PassResult:
        self.upcast = 0
        f16, f32 = ir.DataType.FLOAT16, ir.DataType.FLOAT
        graph = model.graph
        # The float16 boundary: outputs not already behind a Cast to float16 (a run before),
        # inputs not already read only through Casts to float32.
        outputs = [i for i, v in enumerate(graph.outputs) if v.dtype == f16 and not _cast_to(v.producer(), f16)]
        inputs = [v for v in graph.inputs if v.dtype == f16 and v.name not in graph.initializers
                  and not all(_cast_to(node, f32) for node, _ in v.uses())]
        kept = {id(v.producer()) for v in graph.outputs if v.dtype == f16 and _cast_to(v.producer(), f16)}
        for value in graph.initializers.values():
            if value.const_value is not None and value.const_value.dtype == f16:
                value.const_value = _fp32_tensor(value.const_value)
                value.dtype = f32
                self.upcast += 1
        for node in ir.traversal.RecursiveGraphIterator(graph):
            if id(node) in kept:
                continue
            for attr in node.attributes.values():  # a Loop body's or a branch's own inputs
                bodies = [attr.value] if attr.type == ir.AttributeType.GRAPH else \
                    list(attr.value) if attr.type == ir.AttributeType.GRAPHS else []
                for body in bodies:
                    for value in body.inputs:
                        if value.dtype == f16:
                            value.dtype = f32
                            self.upcast += 1
            for key, attr in list(node.attributes.items()):
                if attr.type == ir.AttributeType.TENSOR and attr.value is not None and attr.value.dtype == f16:
                    node.attributes[key] = ir.AttrTensor(key, _fp32_tensor(attr.value))
                    self.upcast += 1
                elif (key == "to" and node.op_type == "Cast" or key == "dtype" and node.op_type in _DTYPE_OPS) \
                        and attr.type == ir.AttributeType.INT and attr.as_int() == f16.value:
                    node.attributes[key] = ir.AttrInt64(key, f32.value)
                    self.upcast += 1
            for value in node.outputs:  # the main graph's outputs get their Cast below; a branch's are upcast
                if value.dtype == f16 and not (value.is_graph_output() and value.graph is graph):
                    value.dtype = f32
                    self.upcast += 1
        for value in inputs:
            cast = ir.node("Cast", [value], {"to": f32.value}, name=_unique_name(graph, f"{value.name}_to_fp32"))
            cast.outputs[0].name = _unique_name(graph, f"{value.name}_fp32")
            cast.outputs[0].dtype, cast.outputs[0].shape = f32, value.shape
            ir.convenience.replace_all_uses_with(value, cast.outputs[0])
            cast.replace_input_with(0, value)  # replace_all_uses_with rewired the Cast itself too
            if len(graph):
                graph.insert_before(graph[0], cast)
            else:
                graph.append(cast)
            self.upcast += 1
        for i in outputs:
            value = graph.outputs[i]
            if value.producer() is None:  # an input passed straight through
                continue
            name = value.name
            value.name = _unique_name(graph, f"{name}_fp32")
            value.dtype = f32
            cast = ir.node("Cast", [value], {"to": f16.value}, name=_unique_name(graph, f"{name}_to_fp16"))
            out = cast.outputs[0]
            out.name, out.dtype, out.shape = name, f16, value.shape
            graph.append(cast)
            graph.outputs[i] = out
            self.upcast += 1
        return PassResult(model, modified=bool(self.upcast))


def _cast_to(node: ir.Node | None, dtype: ir.DataType) -> bool:
    return node is not None and node.op_type == "Cast" and "to" in node.attributes and \
        node.attributes["to"].as_int() == dtype.value


def upcast_float16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` computed in float32 (:class:`UpcastFloat16Pass`) and how many values,
    tensors and attributes it changed; ``model`` itself when nothing in it is float16 (0)."""
    if not _has_float16(model):
        return model, 0
    upcast = UpcastFloat16Pass()
    out, modified = apply_passes(model, upcast)
    return (out, upcast.upcast) if modified else (model, 0)


def _has_float16(model: onnx.ModelProto) -> bool:
    """Whether anything in ``model`` may be float16 (a cheap look before the pass runs)."""
    f16 = onnx.TensorProto.FLOAT16
    if any(i.data_type == f16 for i in model.graph.initializer):
        return True
    if any(v.type.tensor_type.elem_type == f16 for v in (*model.graph.input, *model.graph.output,
                                                          *model.graph.value_info)):
        return True
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == f16 or \
                    a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i == f16:
                return True
    return False
