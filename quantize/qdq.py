"""Insert QuantizeLinear/DequantizeLinear pairs: explicit, TensorRT-style int8.

Math (ONNX QuantizeLinear/DequantizeLinear, zero point 0)::

    q = saturate(round_half_even(x / s), -128, 127)      r = s * q

Symmetric scales (TensorRT requires zero point 0): ``s = amax / 127`` with
``amax = max(|lo|, |hi|)`` of the calibrated range for activations (per tensor) and of each
output channel for weights. Weights are stored as int8 initializers behind a
DequantizeLinear (what TensorRT runs, and 4x smaller); biases stay float.
Placement is decided by :data:`quantize.rules.QDQ_RULES`.

**FP8** (E4M3, ``fp8`` nodes): the same placement, zero points of type ``float8e4m3fn``
(0), ``s = amax / 448`` (E4M3's largest finite value) per tensor for activations and per
output channel for weights, ``q = saturate(round_to_nearest_even_fp8(x / s))``; weights are
stored as float8e4m3fn initializers behind a DequantizeLinear. Calibration is amax-based: FP8's
exponent covers outliers with the same relative precision, so clipping buys little and
costs the largest values. FP8 Q/DQ needs opset 19 (the model is converted) and IR version 9.

**INT4 weight-only** (``int4w`` nodes: MatMul/Gemm with a constant 2-D weight): no Q/DQ on the
activation; the weight is stored as int4 behind a DequantizeLinear with ``block_size`` (opset
21, IR version 10) along its input dimension: one scale ``amax / 7`` per block of ``block``
inputs and per output, levels in [-7, 7] (-8 unused: symmetric, as TensorRT's INT4 weights).

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
from trtq.quantize.graph import GraphIndex, get_attr, insert_before, remove_unused_initializers
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
FP8_MAX = 448.0  # E4M3's largest finite magnitude
FP8_OPSET = 19  # float8 types in QuantizeLinear/DequantizeLinear
FP8_IR_VERSION = 9
INT4_QMAX = 7
INT4_OPSET = 21  # block_size on DequantizeLinear, int4 types
INT4_IR_VERSION = 10
DEFAULT_INT4_BLOCK = 128


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


def weight_params(w: np.ndarray, axis: int | None, qmax: float = QMAX) -> QuantParams:
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


def _fp8():
    import ml_dtypes

    return ml_dtypes.float8_e4m3fn


def fp8_scale(amax: np.ndarray | float) -> np.ndarray:
    """``amax / 448`` (a zero ``amax`` gets scale 1, as for int8)."""
    amax = np.asarray(amax, np.float64)
    return np.where(amax > 0, amax / FP8_MAX, 1.0).astype(np.float32)


def quantize_fp8(x: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    """``x / scale`` saturated to ±448 and rounded to the nearest even E4M3 value (what
    QuantizeLinear with a float8e4m3fn zero point and ``saturate=1`` computes)."""
    return np.clip(np.asarray(x, np.float32) / scale, -FP8_MAX, FP8_MAX).astype(_fp8())


def fake_quantize_fp8(x: np.ndarray, amax: np.ndarray | float) -> np.ndarray:
    """FP8 Q/DQ in float (the NumPy reference of what the fp8 model computes)."""
    scale = fp8_scale(amax)
    return (quantize_fp8(x, scale).astype(np.float32) * scale).astype(x.dtype, copy=False)


def int4_weight_axis(node: onnx.NodeProto) -> int:
    """The input (reduction) axis of a MatMul/Gemm weight: 0 for ``[in, out]``, 1 for Gemm's ``transB``."""
    return 1 if node.op_type == "Gemm" and get_attr(node, "transB", 0) else 0


def int4_block_scales(w: np.ndarray, axis: int, block: int, qmax: int = INT4_QMAX) -> np.ndarray:
    """Per-block scales ``amax / qmax`` of a 2-D weight: ``w``'s shape with ``axis`` cut to
    ``ceil(size / block)`` (a zero block gets scale 1)."""
    wt = np.moveaxis(np.abs(w.astype(np.float64)), axis, 0)  # [K, N]
    k = wt.shape[0]
    nb = -(-k // block)
    padded = np.zeros((nb * block, *wt.shape[1:]))
    padded[:k] = wt
    amax = padded.reshape(nb, block, *wt.shape[1:]).max(axis=1)
    return np.moveaxis(np.where(amax > 0, amax / qmax, 1.0), 0, axis).astype(np.float32)


def expand_blocks(scale: np.ndarray, axis: int, block: int, size: int) -> np.ndarray:
    """Block scales repeated to the weight's shape along ``axis`` (``size`` entries)."""
    return np.repeat(scale, block, axis=axis).take(np.arange(size), axis=axis)


def quantize_int4(w: np.ndarray, scale: np.ndarray, axis: int, block: int) -> np.ndarray:
    """INT4 levels of ``w`` (nearest, in [-7, 7]) for block ``scale`` (:func:`int4_block_scales`)."""
    import ml_dtypes

    full = expand_blocks(scale, axis, block, w.shape[axis])
    return np.clip(np.rint(w / full), -INT4_QMAX, INT4_QMAX).astype(ml_dtypes.int4)


class _QdqWriter:
    """Creates Q/DQ nodes and their constants; one shared Q/DQ pair per activation tensor."""

    def __init__(self, g: GraphIndex, target: QuantTarget) -> None:
        self.g = g
        self.target = target
        self.dequantized: dict[str, str] = {}
        self.new_nodes: dict[int, list[onnx.NodeProto]] = {}  # keyed by consumer index

    def activation(self, tensor: str, lo: float, hi: float, before: int, fp8: bool = False) -> str:
        key = f"{tensor}@fp8" if fp8 else tensor
        if key in self.dequantized:
            return self.dequantized[key]
        if fp8:
            p = QuantParams(fp8_scale(max(abs(lo), abs(hi))), np.zeros((), _fp8()))
        else:
            p = activation_params(max(abs(lo), abs(hi))) if self.target.symmetric else asymmetric_params(lo, hi)
        g = self.g
        tensor_in, tensor = tensor, tensor + ("_fp8" if fp8 else "")
        scale = g.add_initializer(f"{tensor}_scale", p.scale)
        zp = g.add_initializer(f"{tensor}_zero_point", p.zero_point)
        q_out, dq_out = g.unique(f"{tensor}_quantized"), g.unique(f"{tensor}_dequantized")
        nodes = [
            helper.make_node("QuantizeLinear", [tensor_in, scale, zp], [q_out],
                             name=g.unique(f"{tensor}_QuantizeLinear")),
            helper.make_node("DequantizeLinear", [q_out, scale, zp], [dq_out],
                             name=g.unique(f"{tensor}_DequantizeLinear")),
        ]
        self.new_nodes.setdefault(before, []).extend(nodes)
        self.dequantized[key] = dq_out
        return dq_out

    def weight(self, tensor: str, value: np.ndarray, axis: int | None, before: int, fp8: bool = False) -> str:
        key = f"{tensor}@{axis}" + ("@fp8" if fp8 else "")
        if key in self.dequantized:
            return self.dequantized[key]
        g = self.g
        if fp8:
            per = weight_params(value, axis, FP8_MAX)  # scale amax / 448 per channel
            p = QuantParams(per.scale, np.zeros(per.scale.shape, _fp8()), per.axis)
            shape = [1] * value.ndim
            if p.axis is not None:
                shape[p.axis] = -1
            stored = quantize_fp8(value, p.scale.reshape(shape))
            tensor = tensor + "_fp8"
        else:
            qmax = self.target.weight_qmax
            p = weight_params(value, axis, qmax)
            stored = quantize_weight(value, p, qmax)
        q = g.add_initializer(f"{tensor}_quantized", stored)
        scale = g.add_initializer(f"{tensor}_scale", p.scale)
        zp = g.add_initializer(f"{tensor}_zero_point", p.zero_point)
        dq_out = g.unique(f"{tensor}_dequantized")
        attrs = {"axis": p.axis} if p.axis is not None else {}
        node = helper.make_node("DequantizeLinear", [q, scale, zp], [dq_out],
                                name=g.unique(f"{tensor}_DequantizeLinear"), **attrs)
        self.new_nodes.setdefault(before, []).append(node)
        self.dequantized[key] = dq_out
        return dq_out

    def weight_int4(self, tensor: str, value: np.ndarray, axis: int, block: int, before: int) -> str:
        """An int4 block-quantized weight behind ``DequantizeLinear(axis, block_size)``."""
        import ml_dtypes

        key = f"{tensor}@int4@{axis}@{block}"
        if key in self.dequantized:
            return self.dequantized[key]
        g = self.g
        scale = int4_block_scales(value, axis, block)
        q = g.add_initializer(f"{tensor}_int4", quantize_int4(value, scale, axis, block))
        s = g.add_initializer(f"{tensor}_int4_scale", scale)
        zp = g.add_initializer(f"{tensor}_int4_zero_point", np.zeros(scale.shape, ml_dtypes.int4))
        dq_out = g.unique(f"{tensor}_int4_dequantized")
        node = helper.make_node("DequantizeLinear", [q, s, zp], [dq_out], name=g.unique(f"{tensor}_DequantizeLinear"),
                                axis=axis, block_size=block)
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
             target: QuantTarget | str | None = None, fp8: Iterable[str] | None = None,
             int4w: Iterable[str] | None = None, int4_block: int = DEFAULT_INT4_BLOCK,
             check: bool = True) -> onnx.ModelProto:
    """Return an explicitly quantized copy of ``model`` (Q/DQ pairs, TensorRT-style int8).

    BatchNorm is folded into convolutions first. ``table`` must have been computed for
    this model (its SHA-256 is checked; ``force=True`` skips the check, and only the
    tensor names must then match). Nodes whose activation ranges are absurd are left in
    float and logged. ``nodes`` limits int8 to the named nodes (names after BatchNorm
    folding; default: every node a Q/DQ rule applies to). ``target``: ``"tensorrt"``
    (default) or ``"ort-cpu"``, or a :class:`quantize.targets.QuantTarget` (see there).
    ``fp8``: nodes quantized to FP8 E4M3 instead (same placement; TensorRT only). ``int4w``:
    MatMul/Gemm nodes whose weight alone becomes INT4 with ``int4_block`` inputs per scale.
    ``check=False`` skips ``onnx.checker`` on the result (a search's candidates, which ONNX
    Runtime loads anyway: the checker's serialized copy is ~1.5x the model's size).
    """
    if isinstance(table, (str, os.PathLike)):
        from trtq.calibration import load_table

        table = load_table(table)  # a saved table (trtq JSON or a TensorRT cache); its model is checked below
    if not isinstance(table, CalibrationTable):
        raise QuantizationError(f"table must be a CalibrationTable or the path of a saved one, got "
                                f"{type(table).__name__}: run trtq.calibrate(model, data) first")
    nodes = names_arg(nodes, "nodes")
    fp8_nodes = set(names_arg(fp8, "fp8") or ())
    int4_nodes = set(names_arg(int4w, "int4w") or ())
    if int4_nodes and (int4_block < 1 or int4_block & (int4_block - 1)):
        raise QuantizationError(f"the int4 block size must be a power of two (32, 64, 128...), got {int4_block}")
    target = QuantTarget.parse(target)
    if fp8_nodes and not target.symmetric:
        raise QuantizationError("fp8 is for TensorRT (Ada GPUs and newer); ONNX Runtime's CPU kernels have no fp8: "
                                "drop --target-runtime ort-cpu, or the fp8 nodes")
    rules = rules_for(target)
    model = load_model(model)
    already = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if already:
        raise QuantizationError(f"the model already holds {already} QuantizeLinear/DequantizeLinear nodes; "
                                "pass the fp32 model")
    if not force and table.model_sha256 != model_sha256(model):  # hashing serializes the model: only when asked
        raise QuantizationError(
            "the calibration table was computed for another model (SHA-256 "
            f"{table.model_sha256[:12]}... vs {model_sha256(model)[:12]}...): recalibrate this model (trtq calibrate "
            "MODEL --data DATA), or pass force=True if only its weights changed and every tensor name is the same")
    need = INT4_OPSET if int4_nodes else FP8_OPSET if fp8_nodes else MIN_OPSET
    if any(o.domain in ("", "ai.onnx") and o.version < need for o in model.opset_import):
        model = _upgrade_opset(model, need)
    out = fold_batchnorm(model)  # a new model: edited below, ``model`` stays as it is
    g = GraphIndex(out.graph)
    writer = _QdqWriter(g, target)
    skipped = []
    selected = None if nodes is None else set(nodes)
    plans: dict[int, list[InputQuant]] = {}
    int4_done = 0
    for index, node in enumerate(out.graph.node):
        if node.name in int4_nodes:
            w = g.constant(node.input[1]) if len(node.input) > 1 else None
            if node.op_type not in ("MatMul", "Gemm") or w is None or w.ndim != 2:
                raise QuantizationError(f"int4w is for MatMul/Gemm nodes with a constant 2-D weight; "
                                        f"{node.op_type} '{node.name}' has none")
            node.input[1] = writer.weight_int4(node.input[1], w, int4_weight_axis(node), int4_block, index)
            int4_done += 1
            continue
        if selected is not None and node.name not in selected and node.name not in fp8_nodes:
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
            in_fp8 = node.name in fp8_nodes
            if iq.weight:
                node.input[iq.index] = writer.weight(name, g.constant(name), iq.axis, index, in_fp8)
            else:
                node.input[iq.index] = writer.activation(name, table[name].lo, table[name].hi, index, in_fp8)
    quantized = len(plans)
    if fp8_nodes:
        out.ir_version = max(out.ir_version, FP8_IR_VERSION)
    if int4_done:
        out.ir_version = max(out.ir_version, INT4_IR_VERSION)
    insert_before(out.graph, writer.new_nodes)
    remove_unused_initializers(out.graph)
    for msg in skipped:
        log.warning("left in float: %s", msg)
    n_fp8 = sum(out.graph.node[i].name in fp8_nodes for i in plans)
    log.info("quantized %d nodes to int8, %d to fp8 and %d weights to int4 (%d left in float by the range check)",
             quantized - n_fp8, n_fp8, int4_done, len(skipped))
    helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props},
                                 "trtq.quantization": target.describe(),
                                 "trtq.calibration_method": table.method})
    if check:
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


def _upgrade_opset(model: onnx.ModelProto, opset: int = MIN_OPSET) -> onnx.ModelProto:
    from onnx import version_converter

    why = "int4 block-wise weights" if opset >= INT4_OPSET else "fp8 Q/DQ" if opset >= FP8_OPSET \
        else "per-channel Q/DQ"
    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises plain RuntimeError/ValueError
        raise QuantizationError(f"the model's opset is below {opset} (needed for {why}) and converting it "
                                f"failed: {exc}") from exc
