"""Insert QuantizeLinear/DequantizeLinear pairs: explicit, TensorRT-style int8.

Math (ONNX QuantizeLinear/DequantizeLinear, zero point 0)::

    q = saturate(round_half_even(x / s), -128, 127)      r = s * q

Symmetric scales (TensorRT requires zero point 0): ``s = amax / 127`` with
``amax = max(|lo|, |hi|)`` of the calibrated range for activations (per tensor) and of each
output channel for weights. Weights are stored as int8 initializers behind a
DequantizeLinear (what TensorRT runs, and 4x smaller); biases stay float.
Placement is decided by :data:`quantize.rules.QDQ_RULES`.

``target="ort-cpu"`` writes ONNX Runtime's CPU form instead (see :mod:`quantize.targets`):
uint8 activations with a zero point, ``r = s * (q - z)``, ``s = (hi - lo) / 255`` over the
calibrated range widened to include 0, ``z = round(-lo / s)``; int8 weights as above, with
``qmax = 63`` on x86 CPUs without VNNI; placement by :data:`quantize.rules.ORT_CPU_RULES`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnx
from onnx import helper

from trtq.calibration import CalibrationTable
from trtq.core.onnx_model import check_model, load_model, model_sha256
from trtq.quantize.fold import fold_batchnorm
from trtq.quantize.graph import GraphIndex, copy_model, insert_before, remove_unused_initializers
from trtq.quantize.rules import ORT_CPU_RULES, QDQ_RULES, InputQuant, Rule
from trtq.quantize.targets import QuantTarget
from trtq.core.errors import QuantizationError
from trtq.core.checks import names_arg

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


def asymmetric_params(lo: float, hi: float) -> QuantParams:
    """Per-tensor uint8 parameters for an activation in ``[lo, hi]`` (widened to include 0,
    which must stay exact: zero padding and ReLU's zeros)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255 if hi > lo else 1.0 / 255
    zero_point = int(np.clip(np.rint(-lo / scale), 0, 255))
    return QuantParams(np.asarray(scale, np.float32), np.asarray(zero_point, np.uint8))


def weight_params(w: np.ndarray, axis: int | None, qmax: int = QMAX) -> QuantParams:
    """Symmetric int8 parameters per output channel (``axis``) or per tensor (``None``),
    with ``|q| <= qmax`` (127; 63 for 7-bit "reduced range" weights).

    An all-zero channel gets scale 1 (its values quantize to 0 exactly either way).
    """
    a = np.abs(w.astype(np.float64))
    if axis is None:
        amax = np.asarray(a.max(initial=0.0))
    else:
        amax = a.max(axis=tuple(i for i in range(w.ndim) if i != axis % w.ndim), initial=0.0)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    zp = np.zeros(scale.shape, np.int8)
    return QuantParams(scale, zp, None if axis is None else axis % w.ndim)


def quantize_weight(w: np.ndarray, p: QuantParams, qmax: int = QMAX) -> np.ndarray:
    s = p.scale if p.axis is None else p.scale.reshape([-1 if i == p.axis else 1 for i in range(w.ndim)])
    return np.clip(np.rint(w / s), -qmax, qmax).astype(np.int8)


def fake_quantize(x: np.ndarray, amax: np.ndarray | float) -> np.ndarray:
    """``x`` quantized to symmetric int8 of magnitude ``amax`` (a scalar, or per channel
    broadcastable to ``x``) and dequantized, in ``x``'s dtype: what Q/DQ computes in float.
    A zero ``amax`` gets scale 1, as in :func:`weight_params`."""
    amax = np.asarray(amax)
    scale = np.where(amax > 0, amax / QMAX, 1.0)
    return (np.clip(np.rint(x / scale), -QMAX, QMAX) * scale).astype(x.dtype, copy=False)


class _QdqWriter:
    """Creates Q/DQ nodes and their constants; one shared Q/DQ pair per activation tensor."""

    def __init__(self, g: GraphIndex, target: QuantTarget) -> None:
        self.g = g
        self.target = target
        self.dequantized: dict[str, str] = {}
        self.new_nodes: dict[int, list[onnx.NodeProto]] = {}  # keyed by consumer index

    def activation(self, tensor: str, lo: float, hi: float, before: int) -> str:
        if tensor in self.dequantized:
            return self.dequantized[tensor]
        p = activation_params(max(abs(lo), abs(hi))) if self.target.symmetric else asymmetric_params(lo, hi)
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
        qmax = self.target.weight_qmax
        p = weight_params(value, axis, qmax)
        g = self.g
        q = g.add_initializer(f"{tensor}_quantized", quantize_weight(value, p, qmax))
        scale = g.add_initializer(f"{tensor}_scale", p.scale)
        zp = g.add_initializer(f"{tensor}_zero_point", p.zero_point)
        dq_out = g.unique(f"{tensor}_dequantized")
        attrs = {"axis": p.axis} if p.axis is not None else {}
        node = helper.make_node("DequantizeLinear", [q, scale, zp], [dq_out],
                                name=g.unique(f"{tensor}_DequantizeLinear"), **attrs)
        self.new_nodes.setdefault(before, []).append(node)
        self.dequantized[key] = dq_out
        return dq_out


def rules_for(target: QuantTarget) -> dict[str, Rule]:
    """The Q/DQ placement rules of ``target``'s runtime."""
    return QDQ_RULES if target.symmetric else ORT_CPU_RULES


def _plan_node(node: onnx.NodeProto, g: GraphIndex, table: CalibrationTable,
               rules: dict[str, Rule]) -> tuple[list[InputQuant], str | None]:
    """The inputs to quantize for ``node``, or a reason to leave it in float."""
    rule = rules.get(node.op_type)
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
                f"'{node.name}'); the calibration table does not belong to this model — recalibrate"
                + ("" if rules is QDQ_RULES else " with calibration_tensors(model, 'ort-cpu') (or all tensors)"))
        amax = table[name].amax
        if amax > MAX_ACTIVATION_AMAX:
            return [], f"input '{name}' has calibrated |range| {amax:.3g} > {MAX_ACTIVATION_AMAX:g}"
    return wanted, None


def calibration_tensors(model: str | os.PathLike | onnx.ModelProto,
                        target: QuantTarget | str | None = None) -> list[str]:
    """The activation tensors :func:`quantize` needs ranges for (after BatchNorm folding).

    Calibrating only these (``calibrate(..., tensors=calibration_tensors(model))``) is
    what ``trtq quantize`` does: the same result, a fraction of the work. ``target``: as
    for :func:`quantize` (``ort-cpu`` quantizes more tensors).
    """
    rules = rules_for(QuantTarget.parse(target, reduce_range=False))
    model = fold_batchnorm(load_model(model))
    g = GraphIndex(model.graph)
    names = []
    for node in model.graph.node:
        rule = rules.get(node.op_type)
        if rule is not None:
            names.extend(node.input[iq.index] for iq in rule(node, g) if not iq.weight)
    return list(dict.fromkeys(names))


def quantize(model: str | os.PathLike | onnx.ModelProto, table: CalibrationTable, *,
             force: bool = False, nodes: Iterable[str] | None = None,
             target: QuantTarget | str | None = None) -> onnx.ModelProto:
    """Return an explicitly quantized copy of ``model`` (Q/DQ pairs, TensorRT-style int8).

    BatchNorm is folded into convolutions first. ``table`` must have been computed for
    this model (its SHA-256 is checked; ``force=True`` skips the check, and only the
    tensor names must then match). Nodes whose activation ranges are absurd are left in
    float and logged. ``nodes`` limits int8 to the named nodes (names after BatchNorm
    folding; default: every node a Q/DQ rule applies to). ``target``: ``"tensorrt"``
    (default) or ``"ort-cpu"``, or a :class:`quantize.targets.QuantTarget` (see there).
    """
    if isinstance(table, (str, os.PathLike)):
        from trtq.calibration import load_table

        table = load_table(table)  # a saved table (trtq JSON or a TensorRT cache); its model is checked below
    if not isinstance(table, CalibrationTable):
        raise QuantizationError(f"table must be a CalibrationTable or the path of a saved one, got "
                                f"{type(table).__name__}: run trtq.calibrate(model, data) first")
    nodes = names_arg(nodes, "nodes")
    target = QuantTarget.parse(target)
    rules = rules_for(target)
    model = load_model(model)
    already = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if already:
        raise QuantizationError(f"the model already holds {already} QuantizeLinear/DequantizeLinear nodes; "
                                "pass the fp32 model")
    if table.model_sha256 != model_sha256(model) and not force:
        raise QuantizationError(
            "the calibration table was computed for another model (SHA-256 "
            f"{table.model_sha256[:12]}... vs {model_sha256(model)[:12]}...): recalibrate this model (trtq calibrate "
            "MODEL --data DATA), or pass force=True if only its weights changed and every tensor name is the same")
    if any(o.domain in ("", "ai.onnx") and o.version < MIN_OPSET for o in model.opset_import):
        model = _upgrade_opset(model)
    model = fold_batchnorm(model)
    out = copy_model(model)
    g = GraphIndex(out.graph)
    writer = _QdqWriter(g, target)
    skipped = []
    selected = None if nodes is None else set(nodes)
    plans: dict[int, list[InputQuant]] = {}
    for index, node in enumerate(out.graph.node):
        if selected is not None and node.name not in selected:
            continue
        wanted, reason = _plan_node(node, g, table, rules)
        if reason:
            skipped.append(f"{node.op_type} '{node.name}': {reason}")
        elif wanted:
            plans[index] = wanted
    if not target.symmetric:
        plans = _drop_unfused(g, plans)
    for index, wanted in plans.items():
        node = out.graph.node[index]
        for iq in wanted:
            name = node.input[iq.index]
            if iq.weight:
                node.input[iq.index] = writer.weight(name, g.constant(name), iq.axis, index)
            else:
                node.input[iq.index] = writer.activation(name, table[name].lo, table[name].hi, index)
    quantized = len(plans)
    insert_before(out.graph, writer.new_nodes)
    remove_unused_initializers(out.graph)
    for msg in skipped:
        log.warning("left in float: %s", msg)
    log.info("quantized %d nodes to int8 (%d left in float by the range check)", quantized, len(skipped))
    helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props},
                                 "trtq.quantization": target.describe(),
                                 "trtq.calibration_method": table.method})
    check_model(out, "the quantized model")
    return out


#: Ops ORT fuses into integer kernels only with a quantized output. A MatMul with
#: dequantized inputs and a float output still becomes MatMulIntegerToFloat.
_NEEDS_OUTPUT_Q = ("Conv", "ConvTranspose", "Gemm")


def _drop_unfused(g: GraphIndex, plans: dict[int, list[InputQuant]]) -> dict[int, list[InputQuant]]:
    """For ORT's CPU kernels: leave in float every weighted node whose output no consumer
    quantizes (e.g. the classifier producing the logits). ORT fuses a node into an integer
    kernel only when its output is quantized; otherwise it would dequantize the int8
    weights on every call and run in float anyway: slower, and less accurate."""
    graph = g.graph

    def quantized(tensor: str, into: set[str]) -> bool:
        """Quantized by a consumer, directly or behind a Relu/Clip that ORT folds into the Q."""
        if tensor in into:
            return True
        after = g.consumers.get(tensor, [])
        return (len(after) == 1 and after[0].op_type in ("Relu", "Clip")
                and quantized(after[0].output[0], into))

    plans = dict(plans)
    while True:
        quantized_inputs = {graph.node[i].input[iq.index] for i, wanted in plans.items() for iq in wanted
                            if not iq.weight}
        unfused = [i for i, wanted in plans.items() if graph.node[i].op_type in _NEEDS_OUTPUT_Q
                   and any(iq.weight for iq in wanted)
                   and not any(quantized(o, quantized_inputs) for o in graph.node[i].output)]
        if not unfused:
            return plans
        for i in unfused:
            log.info("left in float for ONNX Runtime: %s '%s' (its output is not quantized, so it would not fuse)",
                     graph.node[i].op_type, graph.node[i].name)
            del plans[i]


def _upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises plain RuntimeError/ValueError
        raise QuantizationError(f"the model's opset is below {MIN_OPSET} (needed for per-channel "
                                f"Q/DQ) and converting it failed: {exc}") from exc
