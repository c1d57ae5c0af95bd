"""The per-layer precision plan of an explicitly quantized ONNX model, read from the graph.

Since TensorRT 11 (and for strongly typed networks in 10.x) precision is what the ONNX
says: a compute node whose activation and weight inputs come from DequantizeLinear runs
in int8, or in fp8 when those DequantizeLinear nodes take float8e4m3fn; one whose float inputs are fp16 tensors runs in fp16; anything else in fp32.
"""

from __future__ import annotations

import onnx

from trtq.core.onnx_model import infer_types

COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def precision_plan(model: onnx.ModelProto) -> dict[str, str]:
    """``node name -> "int8" | "fp8" | "fp16" | "fp32"`` for the compute nodes (Conv, Gemm, MatMul...)."""
    types = {name: t.tensor_type.elem_type for name, t in infer_types(model).items()}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    producer = {o: n for n in model.graph.node for o in n.output}
    plan = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in COMPUTE_OPS:
            continue
        name = node.name or f"{node.op_type}_{i}"
        inputs = [x for x in node.input[:2] if x]
        if inputs and all(producer.get(x) is not None and producer[x].op_type == "DequantizeLinear" for x in inputs):
            quantized = [types.get(producer[x].input[0]) for x in inputs]
            plan[name] = "fp8" if onnx.TensorProto.FLOAT8E4M3FN in quantized else "int8"
        elif any(types.get(x) == onnx.TensorProto.FLOAT16 for x in inputs):
            plan[name] = "fp16"
        else:
            plan[name] = "fp32"
    return plan
