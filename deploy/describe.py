"""What an ONNX model is, in a few lines (``trtq inspect model.onnx``): I/O, opsets, Q/DQ pairs
by precision, and each compute node's precision as TensorRT would build it."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import onnx

from trtq.core.onnx_model import input_specs, load_model
from trtq.deploy.plan import precision_plan

__all__ = ["ModelDescription", "describe_onnx"]

_QDQ_TYPES = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT4: "int4",
              onnx.TensorProto.UINT4: "uint4", onnx.TensorProto.FLOAT8E4M3FN: "fp8"}


@dataclass(frozen=True)
class ModelDescription:
    inputs: tuple[tuple[str, str, tuple], ...]  # name, dtype, shape
    outputs: tuple[tuple[str, str, tuple], ...]
    opsets: dict[str, int]
    nodes: int
    qdq: dict[str, int] = field(default_factory=dict)  # Q/DQ nodes by quantized type
    precision: dict[str, str] = field(default_factory=dict)  # compute node -> int8 | fp16 | fp32
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"inputs": [list(i) for i in self.inputs], "outputs": [list(o) for o in self.outputs],
                "opsets": self.opsets, "nodes": self.nodes, "qdq": self.qdq, "precision": self.precision,
                "metadata": self.metadata}


def _dtype(elem: int) -> str:
    return onnx.TensorProto.DataType.Name(elem).lower()


def _dims(value: onnx.ValueInfoProto) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in value.type.tensor_type.shape.dim)


def describe_onnx(model: str | os.PathLike | onnx.ModelProto) -> ModelDescription:
    proto = load_model(model)
    graph_inputs = {s.name for s in input_specs(proto)}
    inputs = tuple((v.name, _dtype(v.type.tensor_type.elem_type), _dims(v)) for v in proto.graph.input
                   if v.name in graph_inputs)
    outputs = tuple((v.name, _dtype(v.type.tensor_type.elem_type), _dims(v)) for v in proto.graph.output)
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    qdq: Counter = Counter()
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            kind = inits.get(node.input[2]) if len(node.input) > 2 else None
            if kind is None and node.op_type == "DequantizeLinear":
                kind = inits.get(node.input[0])  # a weight stored quantized
            qdq[f"{node.op_type} {_QDQ_TYPES.get(kind, 'uint8' if kind is None else _dtype(kind))}"] += 1
    return ModelDescription(inputs, outputs, {o.domain or "ai.onnx": o.version for o in proto.opset_import},
                            len(proto.graph.node), dict(sorted(qdq.items())), precision_plan(proto),
                            {p.key: p.value for p in proto.metadata_props})
