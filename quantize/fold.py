"""Fold BatchNormalization into the preceding Conv (an onnx-ir pass: returns a new model).

For ``y = gamma * (conv(x, W) + b - mean) / sqrt(var + eps) + beta`` with
``s = gamma / sqrt(var + eps)`` per output channel:
``W' = W * s`` (along the output-channel axis 0) and ``b' = (b - mean) * s + beta``.
Folding before quantization matters: the int8 weight scales must be those of the weights
TensorRT will actually run, and a BN between conv and Q/DQ would block int8 fusion.
"""

from __future__ import annotations

import onnx

from trtq.quantize.passes import FoldBatchNormPass, RemoveUnusedInitializersPass, apply_passes

__all__ = ["fold_batchnorm"]


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with every foldable Conv -> BatchNormalization folded
    (:class:`~trtq.quantize.passes.FoldBatchNormPass`), and the initializers that leaves
    unused removed. ``model`` itself is not changed; with nothing to fold, an unchanged copy.

    A model with no BatchNormalization in its main graph (the pass folds only there) is
    copied without the IR round trip: the IR graph's node/value cycles keep the model's
    tensors alive until Python's cyclic collector runs, which a search applying a plan per
    candidate felt as +0.7 GB on all-MiniLM-L6-v2."""
    if not any(node.op_type == "BatchNormalization" for node in model.graph.node):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    folding = FoldBatchNormPass()
    folded, changed = apply_passes(model, folding)
    if not changed:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    folded, _ = apply_passes(folded, RemoveUnusedInitializersPass())
    return folded
