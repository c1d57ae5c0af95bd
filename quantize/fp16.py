"""fp16 regions: run chosen nodes in half precision, with Casts only at region borders.

:func:`convert_fp16` is a pass ``model -> model`` (the input is not mutated). For each
chosen node:

* its float inputs become fp16: constant weights get an fp16 copy (shared by every fp16
  consumer; the fp32 original stays only if an fp32 node still reads it), and a tensor
  produced in fp32 is cast once, however many fp16 nodes read it;
* its float outputs are fp16; an fp32 consumer (including a QuantizeLinear) reads them
  through one Cast back to fp32.

Casts are always made from the original tensor, never from another Cast, so no pair of
Casts cancels out. Graph inputs and outputs keep their types: an fp16 node producing a
graph output writes an internal fp16 tensor, which one Cast turns into the output.
Inputs that ONNX requires to stay float32 (``Resize`` roi/scales) are left alone. Subgraphs
(``If`` branches, ``Loop``/``Scan`` bodies) are never converted: an fp16 tensor they read from
the outer graph is read through a Cast back to fp32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from trtq.core.onnx_model import check_model, infer_types
from trtq.quantize.graph import (GraphIndex, copy_model, insert_before, outer_reads, remove_unused_initializers,
                                  rename_outer_reads)
from trtq.quantize.precision import FP16_MAX, NEVER_FP16
from trtq.core.errors import QuantizationError

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
#: Inputs that stay float32 whatever the node's precision (by op type: input indices).
FP32_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}


def convert_fp16(model: onnx.ModelProto, nodes: set[str] | frozenset[str]) -> onnx.ModelProto:
    """A copy of ``model`` with the nodes named in ``nodes`` computing in fp16."""
    out = copy_model(model)
    if not nodes:
        return out
    graph = out.graph
    types = {name: t.tensor_type.elem_type for name, t in infer_types(model).items()}
    known = {n.name for n in graph.node}
    missing = sorted(set(nodes) - known)
    if missing:
        raise QuantizationError(f"no node named {missing[:3]} in the model (fp16 plan)")
    bad = [n.name for n in graph.node if n.name in nodes and n.op_type in NEVER_FP16]
    if bad:
        raise QuantizationError(f"nodes {bad[:3]} cannot be converted to fp16 (op types {sorted(NEVER_FP16)[:4]}...)")
    g = GraphIndex(graph)
    graph_outputs = {o.name for o in graph.output}
    half: set[str] = set()  # tensors that are fp16 after the pass
    renamed: dict[str, str] = {}  # graph output -> internal fp16 tensor
    for node in graph.node:
        if node.name not in nodes:
            continue
        for i, name in enumerate(node.output):
            if name and types.get(name) == FLOAT:
                if name in graph_outputs:
                    inner = g.unique(f"{name}_fp16")
                    renamed[name] = inner
                    node.output[i] = inner
                    name = inner
                half.add(name)
    casts: dict[tuple[str, int], str] = {}
    before: dict[int, list[onnx.NodeProto]] = {}
    weights: dict[str, str] = {}

    def cast(tensor: str, to: int, index: int) -> str:
        key = (tensor, to)
        if key not in casts:
            casts[key] = g.unique(f"{tensor}_to_{'fp16' if to == HALF else 'fp32'}")
            before.setdefault(index, []).append(helper.make_node(
                "Cast", [tensor], [casts[key]], to=to, name=g.unique(f"{tensor}_Cast_{'fp16' if to == HALF else 'fp32'}")))
        return casts[key]

    def half_weight(name: str) -> str:
        if name not in weights:
            value = g.constant(name)
            if np.max(np.abs(value), initial=0.0) > FP16_MAX:
                raise QuantizationError(f"weight '{name}' exceeds the fp16 range (±{FP16_MAX:g})")
            weights[name] = g.add_initializer(f"{name}_fp16", value.astype(np.float16))
        return weights[name]

    for index, node in enumerate(graph.node):
        is_half = node.name in nodes
        keep = FP32_INPUTS.get(node.op_type, set())
        for i, name in enumerate(node.input):
            if not name:
                continue
            if name in renamed:  # a graph output also read inside the graph: read the fp16 tensor
                node.input[i] = name = renamed[name]
            if is_half and i not in keep:
                if name in half:
                    continue
                if types.get(name) != FLOAT:
                    continue
                node.input[i] = half_weight(name) if g.is_constant(name) else cast(name, HALF, index)
            elif name in half:
                node.input[i] = cast(name, FLOAT, index)
        # Subgraphs (If/Loop/Scan bodies) stay fp32: an fp16 tensor they read is cast back first.
        reads = outer_reads(node)
        mapping = {name: renamed.get(name, name) for name in reads if name in renamed}
        mapping.update({name: cast(mapping.get(name, name), FLOAT, index) for name in reads
                        if mapping.get(name, name) in half})
        if mapping:
            rename_outer_reads(node, mapping)
    for name, inner in renamed.items():
        graph.node.append(helper.make_node("Cast", [inner], [name], to=FLOAT, name=g.unique(f"{name}_Cast_fp32")))
    insert_before(graph, before)
    del graph.value_info[:]  # stale types; the checker re-infers them
    remove_unused_initializers(graph)
    check_model(out, "the fp16 model")
    return out


def cast_pairs(model: onnx.ModelProto) -> list[str]:
    """Casts whose input is another Cast's output and that restore its input type (they cancel out)."""
    types = {name: t.tensor_type.elem_type for name, t in infer_types(model).items()}
    producer = {o: n for n in model.graph.node for o in n.output}
    pairs = []
    for node in model.graph.node:
        if node.op_type != "Cast":
            continue
        src = producer.get(node.input[0])
        if src is not None and src.op_type == "Cast" and types.get(src.input[0]) == \
                helper.get_attribute_value(next(a for a in node.attribute if a.name == "to")):
            pairs.append(f"{src.name} -> {node.name}")
    return pairs


def fp16_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that compute in fp16 (a float16 output, Casts aside)."""
    types = {name: t.tensor_type.elem_type for name, t in infer_types(model).items()}
    return [n.name for n in model.graph.node if n.op_type != "Cast" and any(types.get(o) == HALF for o in n.output)]


__all__ = ["FP32_INPUTS", "cast_pairs", "convert_fp16", "fp16_nodes"]
