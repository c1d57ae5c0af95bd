"""Mixed precision: apply a :class:`~quantize.precision.PrecisionPlan` to an fp32 model.

:func:`apply_plan` folds BatchNorm, resolves the plan per node, inserts Q/DQ pairs on the
int8 nodes (:func:`quantize.qdq.quantize`) and converts the fp16 nodes
(:func:`quantize.fp16.convert_fp16`). The result is one ONNX file that TensorRT builds
strongly typed and ONNX Runtime runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import onnx
from onnx import helper

from trtq.core.onnx_model import infer_types, load_model, model_sha256
from trtq.calibration.table import CalibrationTable
from trtq.quantize.fold import fold_batchnorm
from trtq.quantize.fp16 import convert_fp16
from trtq.quantize.graph import get_attr
from trtq.quantize.precision import NodePrecision, Precision, PrecisionPlan, plan_summary
from trtq.quantize.qdq import DEFAULT_INT4_BLOCK, quantize, rules_for
from trtq.quantize.targets import QuantTarget

log = logging.getLogger(__name__)


#: The cost model: time per MAC of a compute layer on Tensor Cores, relative to int8, from the
#: dense peak rates NVIDIA publishes for A100/L40S/H100 (int8 = fp8 = 2x fp16 = 4x TF32, which
#: is what TensorRT runs an fp32 layer in). int4w (INT4 weights, fp16 math) costs fp16's MACs;
#: what it saves is weight bytes (a quarter of fp16's), which matter where a layer is
#: memory-bound (small batches, transformer decoding); the model size shows it.
MAC_COST = {"int8": 1.0, "fp8": 1.0, "int4w": 2.0, "fp16": 2.0, "fp32": 4.0}


@dataclass(frozen=True)
class MixedModel:
    """A mixed-precision model, what each node runs in, and the MACs per sample of each node."""

    model: onnx.ModelProto
    assignments: Mapping[str, NodePrecision]
    macs: Mapping[str, int]

    def summary(self) -> dict[str, int]:
        return plan_summary(self.assignments)

    def mac_share(self, precision: Precision) -> float:
        """The share of the model's MACs computed in ``precision``."""
        total = sum(self.macs.values())
        inside = sum(m for n, m in self.macs.items() if n in self.assignments
                     and self.assignments[n].precision is precision)
        return inside / total if total else 0.0

    @property
    def int8_mac_share(self) -> float:
        return self.mac_share(Precision.INT8)

    def mac_shares(self) -> dict[str, float]:
        """The share of the MACs in each precision that has any (compute layers only)."""
        shares = {p.value: self.mac_share(p) for p in Precision}
        return {k: v for k, v in shares.items() if v > 0}

    def relative_cost(self) -> float:
        """The compute layers' time under :data:`MAC_COST`, relative to all of them in fp16
        (1.0: no faster than fp16; 0.5: every MAC in int8 or fp8)."""
        total = sum(self.macs.values())
        if not total:
            return 1.0
        cost = sum(m * MAC_COST[self.assignments[n].precision.value if n in self.assignments else "fp32"]
                   for n, m in self.macs.items())
        return cost / (total * MAC_COST["fp16"])


def node_macs(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates per sample of each Conv/ConvTranspose/Gemm/MatMul (unknown dims count as 1)."""
    shapes = {}
    for name, t in infer_types(model).items():
        if t.tensor_type.HasField("shape"):
            shapes[name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                            for d in t.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs = {}
    for node in model.graph.node:
        ins = [shapes.get(i) for i in node.input[:2]]
        out = shapes.get(node.output[0]) if node.output else None
        if node.op_type in ("Conv", "ConvTranspose") and ins[1] and out:
            w = ins[1]
            per_out = int(np.prod(w[1:])) if node.op_type == "Conv" else int(np.prod(w[2:])) * w[0] // max(
                1, get_attr(node, "group", 1))
            macs[node.name] = int(np.prod(out[1:])) * per_out
        elif node.op_type in ("Gemm", "MatMul") and ins[0] and ins[1] and out:
            k = ins[0][-1] if not (node.op_type == "Gemm" and get_attr(node, "transA", 0)) else ins[0][0]
            batch_free = out[1:] if len(out) > 1 else out
            macs[node.name] = int(np.prod(batch_free)) * int(k)
    return macs


def apply_plan(model: str | os.PathLike | onnx.ModelProto, table: CalibrationTable, plan: PrecisionPlan, *,
               force: bool = False, target: QuantTarget | str | None = None,
               weights: Mapping[str, np.ndarray] | None = None,
               int4_weights: Mapping[str, np.ndarray] | None = None,
               int4_block: int = DEFAULT_INT4_BLOCK, check: bool = True) -> MixedModel:
    """The fp32 ``model`` with ``plan`` applied: int8 and fp8 Q/DQ, fp16 regions, fp32 elsewhere.
    ``target``: the runtime the int8 part is written for (see :func:`quantize.quantize`).
    ``weights``: int8-ready weights by node name (:func:`quantize.rounding.gptq_weights`),
    used for the nodes the plan puts in int8; the others keep the model's own. ``int4_weights``:
    the same for the int4w nodes (``gptq_weights(..., qmax=7, block=int4_block)``), whose weights
    become INT4 with ``int4_block`` inputs per scale. ``check=False``: no ``onnx.checker`` run
    on the result (see :func:`quantize.quantize`).

    A caller that applies many plans to one model (a search) checks once that ``table``
    belongs to it and passes ``force=True``: the check hashes the serialized model, a
    transient ~4x the model's size."""
    target = QuantTarget.parse(target)
    proto = load_model(model)
    folded = fold_batchnorm(proto)  # our own copy: the weights below are substituted in place
    macs = node_macs(folded)
    assignments = plan.resolve(folded, table, rules_for(target))
    int8 = {n for n, a in assignments.items() if a.precision is Precision.INT8}
    fp16 = {n for n, a in assignments.items() if a.precision is Precision.FP16}
    fp8 = {n for n, a in assignments.items() if a.precision is Precision.FP8}
    int4 = {n for n, a in assignments.items() if a.precision is Precision.INT4W}
    if weights or int4_weights:
        from trtq.quantize.rounding import substitute_weights

        # The weights change, the activations' names do not: the table still applies.
        force = force or table.model_sha256 == model_sha256(proto)
        for chosen, nodes in ((weights, int8), (int4_weights, int4)):
            if chosen and nodes:
                substitute_weights(folded, chosen, nodes, inplace=True)
        proto = folded
    del folded
    out = quantize(proto, table, force=force, nodes=int8, target=target, fp8=fp8, int4w=int4, int4_block=int4_block,
                   check=check)
    del proto
    if fp16:
        out = convert_fp16(out, fp16)
    mixed = MixedModel(out, assignments, macs)
    summary = mixed.summary()
    helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props},
                                 "trtq.precision": ",".join(f"{k}={v}" for k, v in summary.items())})
    log.info("precision plan: %s; %.1f%% of MACs in int8", summary, 100 * mixed.int8_mac_share)
    return mixed


__all__ = ["MAC_COST", "MixedModel", "apply_plan", "node_macs"]
