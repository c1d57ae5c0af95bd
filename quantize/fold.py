"""Fold BatchNormalization into the preceding Conv (a pass: returns a new model).

For ``y = gamma * (conv(x, W) + b - mean) / sqrt(var + eps) + beta`` with
``s = gamma / sqrt(var + eps)`` per output channel:
``W' = W * s`` (along the output-channel axis 0) and ``b' = (b - mean) * s + beta``.
Folding before quantization matters: the int8 weight scales must be those of the weights
TensorRT will actually run, and a BN between conv and Q/DQ would block int8 fusion.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from trtq.quantize.graph import GraphIndex, copy_model, get_attr, remove_unused_initializers

log = logging.getLogger(__name__)


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with every foldable Conv -> BatchNormalization folded.

    Foldable: the Conv output feeds only the BN and is not a graph output; W, b and the BN
    parameters are constants; the BN is in inference mode with a single output.
    """
    model = copy_model(model)
    g = GraphIndex(model.graph)
    removed: set[int] = set()
    for bn in list(model.graph.node):
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        if get_attr(bn, "training_mode", 0):
            continue
        conv = g.producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(g.consumers[bn.input[0]]) != 1:
            continue
        if bn.input[0] in g.graph_outputs:
            continue
        params = [g.constant(n) for n in bn.input[1:5]]
        weight = g.constant(conv.input[1])
        bias = g.constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        if weight is None or any(p is None for p in params) or (has_bias and bias is None):
            continue
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        eps = get_attr(bn, "epsilon", 1e-5)
        s = gamma / np.sqrt(var + eps)
        w = (weight.astype(np.float64) * s.reshape(-1, *([1] * (weight.ndim - 1)))).astype(weight.dtype)
        b0 = bias.astype(np.float64) if bias is not None else np.zeros_like(mean)
        b = ((b0 - mean) * s + beta).astype(weight.dtype)
        base = conv.name or conv.output[0]
        new_inputs = [conv.input[0], g.add_initializer(f"{base}.weight_folded", w),
                      g.add_initializer(f"{base}.bias_folded", b)]
        del conv.input[:]
        conv.input.extend(new_inputs)
        conv.output[0] = bn.output[0]
        removed.add(id(bn))
    if removed:
        keep = [n for n in model.graph.node if id(n) not in removed]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        remove_unused_initializers(model.graph)
        log.info("folded %d BatchNormalization nodes into convolutions", len(removed))
    return model
