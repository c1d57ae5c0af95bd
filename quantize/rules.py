"""Where Q/DQ pairs go: one rule per op type, the TensorRT way.

A rule looks at one node and says which of its inputs to quantize and how. TensorRT
fuses a DequantizeLinear into the consuming op, so Q/DQ sits on the **inputs** of the ops
that compute in int8 (never on their outputs by default):

* Conv, ConvTranspose, Gemm, MatMul: every input. Activations per tensor; constant
  weights per output channel: Conv axis 0 (``[out, in/g, kh, kw]``), ConvTranspose axis 1
  (``[in, out/g, kh, kw]``; per tensor when grouped, since the output channels are then
  split across groups), Gemm axis 0 with ``transB=1`` (``nn.Linear``) else 1, MatMul with a
  constant ``[..., in, out]`` weight the last axis. Biases stay float: TensorRT rejects an
  int32 bias behind a DequantizeLinear.
* Add (a skip connection): Q/DQ on the residual input only, i.e. the input that does not
  come straight from a Conv whose output feeds nothing else. TensorRT then fuses
  ``conv + add`` into one int8 kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx

from trtq.quantize.graph import GraphIndex, get_attr


@dataclass(frozen=True)
class InputQuant:
    """Quantize input ``index`` of a node: an activation (per tensor) or a weight (per channel on ``axis``)."""

    index: int
    weight: bool = False
    axis: int | None = None


Rule = Callable[[onnx.NodeProto, GraphIndex], list[InputQuant]]


def _operand(node: onnx.NodeProto, g: GraphIndex, index: int, axis: int | None) -> InputQuant:
    value = g.constant(node.input[index])
    if value is None:
        return InputQuant(index)
    if axis is not None and value.ndim == 0:
        axis = None
    return InputQuant(index, weight=True, axis=axis)


def conv_rule(node: onnx.NodeProto, g: GraphIndex) -> list[InputQuant]:
    return [InputQuant(0), _operand(node, g, 1, 0)]


def conv_transpose_rule(node: onnx.NodeProto, g: GraphIndex) -> list[InputQuant]:
    axis = 1 if get_attr(node, "group", 1) == 1 else None
    return [InputQuant(0), _operand(node, g, 1, axis)]


def gemm_rule(node: onnx.NodeProto, g: GraphIndex) -> list[InputQuant]:
    b_axis = 0 if get_attr(node, "transB", 0) else 1
    return [_operand(node, g, 0, None), _operand(node, g, 1, b_axis)]


def matmul_rule(node: onnx.NodeProto, g: GraphIndex) -> list[InputQuant]:
    b = g.constant(node.input[1])
    b_axis = b.ndim - 1 if b is not None and b.ndim >= 2 else None
    return [_operand(node, g, 0, None), _operand(node, g, 1, b_axis)]


def residual_add_rule(node: onnx.NodeProto, g: GraphIndex) -> list[InputQuant]:
    if len(node.input) != 2 or any(g.is_constant(i) for i in node.input):
        return []

    def fusable(name: str) -> bool:
        producer = g.producer.get(name)
        return (producer is not None and producer.op_type == "Conv"
                and len(g.consumers[name]) == 1 and name not in g.graph_outputs)

    a, b = (fusable(i) for i in node.input)
    if a and not b:
        return [InputQuant(1)]
    if b and not a:
        return [InputQuant(0)]
    if a and b:
        return [InputQuant(1)]
    return []


#: Q/DQ placement rules by op type. Ops not listed run in floating point.
QDQ_RULES: dict[str, Rule] = {
    "Conv": conv_rule,
    "ConvTranspose": conv_transpose_rule,
    "Gemm": gemm_rule,
    "MatMul": matmul_rule,
    "Add": residual_add_rule,
}


# --- ONNX Runtime CPU (``--target-runtime ort-cpu``) -------------------------------------
# ORT fuses a node into an integer kernel only when *all* its float inputs come from
# DequantizeLinear and its output goes into a QuantizeLinear. So every activation an int8
# Conv writes must be quantized by its consumer: both inputs of an Add (QLinearAdd) and
# the input of spatial pooling. Otherwise that Conv runs in float, between NCHW/NHWC
# transposes: slower than the fp32 model.

def add_both_rule(node: onnx.NodeProto, g: GraphIndex) -> list[InputQuant]:
    """A CNN's skip connection (an input straight from a Conv): both inputs, for QLinearAdd.
    Other Adds stay float, above all a transformer's residual stream, whose outlier
    channels would leave everything else a few int8 levels (MiniLM: cosine 0.93)."""
    if len(node.input) != 2 or any(g.is_constant(i) for i in node.input):
        return []
    from_conv = any(getattr(g.producer.get(i), "op_type", None) == "Conv" for i in node.input)
    return [InputQuant(0), InputQuant(1)] if from_conv else []


def pooling_rule(node: onnx.NodeProto, g: GraphIndex) -> list[InputQuant]:
    return [InputQuant(0)]


def spatial_mean_rule(node: onnx.NodeProto, g: GraphIndex) -> list[InputQuant]:
    """ReduceMean over exactly two axes, the spatial ones of NCHW (``(2, 3)``, or
    ``(-2, -1)`` as PyTorch exports global average pooling); never a LayerNorm's mean over
    the last axis alone."""
    axes = get_attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = g.constant(node.input[1])
        axes = None if value is None else value.reshape(-1).tolist()
    return [InputQuant(0)] if axes is not None and sorted(axes) in ([2, 3], [-2, -1]) else []


ORT_CPU_RULES: dict[str, Rule] = {
    **QDQ_RULES,
    "Add": add_both_rule,
    "GlobalAveragePool": pooling_rule,
    "AveragePool": pooling_rule,
    "MaxPool": pooling_rule,
    "ReduceMean": spatial_mean_rule,
}
