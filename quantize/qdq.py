"""Insert QuantizeLinear/DequantizeLinear pairs: explicit, TensorRT-style int8.

Math (ONNX QuantizeLinear/DequantizeLinear, zero point 0)::

    q = saturate(round_half_even(x / s), -128, 127)      r = s * q

Symmetric scales (TensorRT requires zero point 0): ``s = amax / 127`` with
``amax = max(|lo|, |hi|)`` of the calibrated range for activations (per tensor) and of each
output channel for weights. Weights are stored as int8 initializers behind a
DequantizeLinear (what TensorRT runs, and 4x smaller); biases stay float.
Placement is decided by :data:`quantize.rules.QDQ_RULES`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx
from onnx import helper

from calibration import CalibrationTable
from calibration.onnx_model import check_model, load_model, model_sha256
from quantize.fold import fold_batchnorm
from quantize.graph import GraphIndex, copy_model, insert_before, remove_unused_initializers
from quantize.rules import QDQ_RULES, InputQuant
from trtq.errors import QuantizationError

log = logging.getLogger(__name__)

QMAX = 127
#: Activations whose calibrated |range| exceeds this are left in float (e.g. attention-mask
#: paths built from float32's minimum): quantizing them would destroy every other value.
MAX_ACTIVATION_AMAX = 1e5
MIN_OPSET = 13  # per-channel DequantizeLinear needs the axis attribute


@dataclass(frozen=True)
class QuantParams:
    """``r = scale * (q - zero_point)``; ``axis`` is the channel axis of a per-channel scale."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None


def activation_params(amax: float) -> QuantParams:
    """Per-tensor symmetric int8 parameters for an activation of magnitude ``amax``."""
    scale = np.float32(amax / QMAX) if amax > 0 else np.float32(1.0 / QMAX)
    return QuantParams(np.asarray(scale, np.float32), np.asarray(0, np.int8))


def weight_params(w: np.ndarray, axis: int | None) -> QuantParams:
    """Symmetric int8 parameters per output channel (``axis``) or per tensor (``None``).

    An all-zero channel gets scale 1 (its values quantize to 0 exactly either way).
    """
    a = np.abs(w.astype(np.float64))
    if axis is None:
        amax = np.asarray(a.max(initial=0.0))
    else:
        amax = a.max(axis=tuple(i for i in range(w.ndim) if i != axis % w.ndim), initial=0.0)
    scale = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)
    zp = np.zeros(scale.shape, np.int8)
    return QuantParams(scale, zp, None if axis is None else axis % w.ndim)


def quantize_weight(w: np.ndarray, p: QuantParams) -> np.ndarray:
    s = p.scale if p.axis is None else p.scale.reshape([-1 if i == p.axis else 1 for i in range(w.ndim)])
    return np.clip(np.rint(w / s), -QMAX, QMAX).astype(np.int8)


def fake_quantize(x: np.ndarray, amax: np.ndarray | float) -> np.ndarray:
    """``x`` quantized to symmetric int8 of magnitude ``amax`` (a scalar, or per channel
    broadcastable to ``x``) and dequantized, in ``x``'s dtype: what Q/DQ computes in float.
    A zero ``amax`` gets scale 1, as in :func:`weight_params`."""
    amax = np.asarray(amax)
    scale = np.where(amax > 0, amax / QMAX, 1.0)
    return (np.clip(np.rint(x / scale), -QMAX, QMAX) * scale).astype(x.dtype, copy=False)


class _QdqWriter:
    """Creates Q/DQ nodes and their constants; one shared Q/DQ pair per activation tensor."""

    def __init__(self, g: GraphIndex) -> None:
        self.g = g
        self.dequantized: dict[str, str] = {}
        self.new_nodes: dict[int, list[onnx.NodeProto]] = {}  # keyed by consumer index

    def activation(self, tensor: str, amax: float, before: int) -> str:
        if tensor in self.dequantized:
            return self.dequantized[tensor]
        p = activation_params(amax)
        g = self.g
        scale = g.add_initializer(f"{tensor}_scale", p.scale)
        zp = g.add_initializer(f"{tensor}_zero_point", p.zero_point)
        q_out, dq_out = g.unique(f"{tensor}_quantized"), g.unique(f"{tensor}_dequantized")
        nodes = [
            helper.make_node("QuantizeLinear", [tensor, scale, zp], [q_out], name=g.unique(f"{tensor}_QuantizeLinear")),
            helper.make_node("DequantizeLinear", [q_out, scale, zp], [dq_out], name=g.unique(f"{tensor}_DequantizeLinear")),
        ]
        self.new_nodes.setdefault(before, []).extend(nodes)
        self.dequantized[tensor] = dq_out
        return dq_out

    def weight(self, tensor: str, value: np.ndarray, axis: int | None, before: int) -> str:
        key = f"{tensor}@{axis}"
        if key in self.dequantized:
            return self.dequantized[key]
        p = weight_params(value, axis)
        g = self.g
        q = g.add_initializer(f"{tensor}_quantized", quantize_weight(value, p))
        scale = g.add_initializer(f"{tensor}_scale", p.scale)
        zp = g.add_initializer(f"{tensor}_zero_point", p.zero_point)
        dq_out = g.unique(f"{tensor}_dequantized")
        attrs = {"axis": p.axis} if p.axis is not None else {}
        node = helper.make_node("DequantizeLinear", [q, scale, zp], [dq_out],
                                name=g.unique(f"{tensor}_DequantizeLinear"), **attrs)
        self.new_nodes.setdefault(before, []).append(node)
        self.dequantized[key] = dq_out
        return dq_out


def _plan_node(node: onnx.NodeProto, g: GraphIndex, table: CalibrationTable) -> tuple[list[InputQuant], str | None]:
    """The inputs to quantize for ``node``, or a reason to leave it in float."""
    rule = QDQ_RULES.get(node.op_type)
    if rule is None:
        return [], None
    wanted = rule(node, g)
    for iq in wanted:
        if iq.weight:
            continue
        name = node.input[iq.index]
        if name not in table:
            raise QuantizationError(
                f"no calibrated range for tensor '{name}' (input {iq.index} of {node.op_type} "
                f"'{node.name}'); the calibration table does not belong to this model — recalibrate")
        amax = table[name].amax
        if amax > MAX_ACTIVATION_AMAX:
            return [], f"input '{name}' has calibrated |range| {amax:.3g} > {MAX_ACTIVATION_AMAX:g}"
    return wanted, None


def calibration_tensors(model: str | os.PathLike | onnx.ModelProto) -> list[str]:
    """The activation tensors :func:`quantize` needs ranges for (after BatchNorm folding).

    Calibrating only these (``calibrate(..., tensors=calibration_tensors(model))``) is
    what ``trtq quantize`` does: the same result, a fraction of the work.
    """
    model = fold_batchnorm(load_model(model))
    g = GraphIndex(model.graph)
    names = []
    for node in model.graph.node:
        rule = QDQ_RULES.get(node.op_type)
        if rule is not None:
            names.extend(node.input[iq.index] for iq in rule(node, g) if not iq.weight)
    return list(dict.fromkeys(names))


def quantize(model: str | os.PathLike | onnx.ModelProto, table: CalibrationTable, *,
             force: bool = False, nodes: Iterable[str] | None = None) -> onnx.ModelProto:
    """Return an explicitly quantized copy of ``model`` (Q/DQ pairs, TensorRT-style int8).

    BatchNorm is folded into convolutions first. ``table`` must have been computed for
    this model (its SHA-256 is checked; ``force=True`` skips the check, and only the
    tensor names must then match). Nodes whose activation ranges are absurd are left in
    float and logged. ``nodes`` limits int8 to the named nodes (names after BatchNorm
    folding; default: every node a Q/DQ rule applies to).
    """
    model = load_model(model)
    already = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if already:
        raise QuantizationError(f"the model already holds {already} QuantizeLinear/DequantizeLinear nodes; "
                                "pass the fp32 model")
    if table.model_sha256 != model_sha256(model) and not force:
        raise QuantizationError(
            "the calibration table was computed for another model (SHA-256 "
            f"{table.model_sha256[:12]}... vs {model_sha256(model)[:12]}...); recalibrate, or force")
    if any(o.domain in ("", "ai.onnx") and o.version < MIN_OPSET for o in model.opset_import):
        model = _upgrade_opset(model)
    model = fold_batchnorm(model)
    out = copy_model(model)
    g = GraphIndex(out.graph)
    writer = _QdqWriter(g)
    quantized, skipped = 0, []
    selected = None if nodes is None else set(nodes)
    for index, node in enumerate(out.graph.node):
        if selected is not None and node.name not in selected:
            continue
        wanted, reason = _plan_node(node, g, table)
        if reason:
            skipped.append(f"{node.op_type} '{node.name}': {reason}")
            continue
        for iq in wanted:
            name = node.input[iq.index]
            if iq.weight:
                node.input[iq.index] = writer.weight(name, g.constant(name), iq.axis, index)
            else:
                node.input[iq.index] = writer.activation(name, table[name].amax, index)
        quantized += bool(wanted)
    insert_before(out.graph, writer.new_nodes)
    remove_unused_initializers(out.graph)
    for msg in skipped:
        log.warning("left in float: %s", msg)
    log.info("quantized %d nodes to int8 (%d left in float by the range check)", quantized, len(skipped))
    helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props},
                                 "trtq.quantization": "int8-qdq-symmetric",
                                 "trtq.calibration_method": table.method})
    check_model(out, "the quantized model")
    return out


def _upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises plain RuntimeError/ValueError
        raise QuantizationError(f"the model's opset is below {MIN_OPSET} (needed for per-channel "
                                f"Q/DQ) and converting it failed: {exc}") from exc
