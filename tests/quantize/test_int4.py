"""INT4 weight-only, block-wise: the DequantizeLinear form (opset 21, block_size, int4
storage), per-block scales, ONNX Runtime against a NumPy reference, GPTQ at 4 bits against
nearest rounding, plan validation, and a TensorRT-RTX build."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import has_module
from trtq.calibration import calibrate
from trtq.deploy import OrtRunner, compare_outputs, run_all
from trtq.deploy.plan import precision_plan
from trtq.quantize import apply_plan
from trtq.quantize.precision import Precision, PrecisionPlan, PrecisionRule
from trtq.quantize.qdq import INT4_QMAX, expand_blocks, int4_block_scales
from trtq.quantize.rounding import gptq_weights

needs_trt = pytest.mark.skipif(not (has_module("tensorrt") or has_module("tensorrt_rtx")),
                               reason="needs TensorRT or TensorRT-RTX: pip install 'trtq[rtx]'")


def make_mlp(seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """x [N, 256] -> MatMul(w1 [256, 96]) -> Relu -> Gemm(w2 [32, 96], transB) -> y, with a few
    outlier input rows in w1 and outlier input channels in x, as trained transformers have."""
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(0, 1, (256, 96)) * np.where(rng.random(256) < 0.05, 6, 1)[:, None] / 16).astype(np.float32)
    w2 = rng.normal(0, 0.1, (32, 96)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc", transB=1)], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.normal(0, 1, (2600, 256)) * np.where(rng.random(256) < 0.03, 8, 1)
    # Channels that move together (a shared low-rank part), as a trained network's do: with
    # independent channels H is nearly diagonal and GPTQ has nothing to spread an error over
    # (there, input-order and act-order GPTQ and nearest rounding came within 0.4 dB).
    x += 1.5 * rng.normal(size=(len(x), 16)) @ rng.normal(size=(16, 256)) / 4
    return model, x.astype(np.float32)


def test_int4_weights_are_block_wise_dequantize_linear_at_opset_21():
    model, x = make_mlp()
    table = calibrate(model, x[:64], "minmax", progress=False)
    out = apply_plan(model, table, PrecisionPlan(Precision.INT4W), int4_block=64).model
    onnx.checker.check_model(out, full_check=True)
    assert out.opset_import[0].version >= 21 and out.ir_version >= 10
    assert not [n for n in out.graph.node if n.op_type == "QuantizeLinear"]  # activations stay float
    dqs = {n.input[0]: n for n in out.graph.node if n.op_type == "DequantizeLinear"}
    inits = {i.name: i for i in out.graph.initializer}
    assert len(dqs) == 2 and all(inits[k].data_type == TensorProto.INT4 for k in dqs)
    attrs = {k: {a.name: a.i for a in n.attribute} for k, n in dqs.items()}
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    mm1 = next(k for k in dqs if k.startswith("w1"))
    assert attrs[mm1] == {"axis": 0, "block_size": 64}  # [in, out]: blocks along the inputs
    assert attrs[next(k for k in dqs if k.startswith("w2"))] == {"axis": 1, "block_size": 64}  # transB
    scale = numpy_helper.to_array(inits[dqs[mm1].input[1]])
    assert scale.shape == (256 // 64, 96)
    blocks = np.abs(w1).reshape(4, 64, 96).max(axis=1)
    np.testing.assert_allclose(scale, blocks / INT4_QMAX, rtol=1e-6)  # amax / 7 per block and output
    levels = numpy_helper.to_array(inits[mm1]).astype(np.int8)
    assert levels.min() >= -7 and levels.max() <= 7
    assert precision_plan(out) == {"mm1": "fp32", "fc": "fp32"}  # weight-only: the math is float


def test_ort_runs_int4_exactly_as_the_numpy_reference():
    model, x = make_mlp()
    table = calibrate(model, x[:64], "minmax", progress=False)
    out = apply_plan(model, table, PrecisionPlan(Precision.INT4W), int4_block=32).model
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    w2 = numpy_helper.to_array(model.graph.initializer[1])

    def dq(w, axis):
        scale = int4_block_scales(w, axis, 32)
        full = expand_blocks(scale, axis, 32, w.shape[axis])
        return np.clip(np.rint(w / full), -7, 7) * full

    want = np.maximum(x[:100] @ dq(w1, 0), 0) @ dq(w2, 1).T
    np.testing.assert_allclose(run_all(OrtRunner(out), x[:100])["y"], want, rtol=1e-4, atol=1e-4)


def test_gptq_at_4_bits_beats_nearest_rounding():
    model, x = make_mlp()
    table = calibrate(model, x[:64], "minmax", progress=False)
    rounded = gptq_weights(model, x[:2048], samples=2048, qmax=INT4_QMAX, block=64, progress=False)
    assert {r.node for r in rounded.layers} == {"mm1", "fc"}
    assert all(r.sqnr_db > r.sqnr_nearest_db for r in rounded.layers)
    ref = run_all(OrtRunner(model), x[2048:])
    sqnr = {}
    for label, weights in (("nearest", None), ("gptq", rounded.weights)):
        out = apply_plan(model, table, PrecisionPlan(Precision.INT4W), int4_weights=weights, int4_block=64).model
        sqnr[label] = compare_outputs(ref, run_all(OrtRunner(out), x[2048:])).outputs[0].sqnr_db
    assert sqnr["gptq"] > sqnr["nearest"]
    # The GPTQ levels survive quantization exactly: each block's largest weight stays at +-7.
    out = apply_plan(model, table, PrecisionPlan(Precision.INT4W), int4_weights=rounded.weights, int4_block=64).model
    dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w1"))
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    scale = expand_blocks(inits[dq.input[1]], 0, 64, 256)
    np.testing.assert_allclose(inits[dq.input[0]].astype(np.float32) * scale, rounded.weights["mm1"], rtol=1e-5,
                               atol=1e-7)


def test_int4w_applies_only_to_constant_weight_matmuls():
    from tests.conftest import make_cnn

    model = make_cnn()
    x = np.random.default_rng(0).normal(0, 1, (16, 3, 8, 8)).astype(np.float32)
    table = calibrate(model, x, "minmax", progress=False)
    mixed = apply_plan(model, table, PrecisionPlan.from_flags("int8", int4w=["Conv", "fc"]))
    got = {name: (a.precision, a.reason) for name, a in mixed.assignments.items()}
    assert got["fc"][0] is Precision.INT4W
    assert got["conv1"] == (Precision.FP32, "int4w is for MatMul/Gemm nodes with a constant 2-D weight")



def test_the_ladder_climbs_from_int4w_to_int8_only_where_the_target_needs_it():
    from trtq.deploy.evaluate import FidelityEvaluator, Target
    from trtq.quantize.sensitivity import layer_groups, search_precision

    model, x = make_mlp()
    table = calibrate(model, x[:256], "minmax", progress=False)
    rounded = gptq_weights(model, x[:2048], samples=2048, qmax=INT4_QMAX, block=64, progress=False)
    evaluate = FidelityEvaluator(model, x[2048:], batch_size=64)
    base = PrecisionPlan.from_flags("fp32", int4w=["MatMul", "Gemm"])
    kwargs = dict(int4_weights=rounded.weights, int4_block=64)

    def cosine(plan):
        return evaluate(apply_plan(model, table, plan, **kwargs).model)["cosine"]

    # Each group alone moved up to int8: the target is the better of the two, so exactly
    # that one group must climb, to int8 (not fp16), and the other keep INT4 weights.
    one_up = {g.name: cosine(base.with_overrides([PrecisionRule(f"name:{g.name}", Precision.INT8)]))
              for g in layer_groups(model)}
    assert cosine(base) < min(one_up.values())
    best = max(one_up, key=one_up.get)
    target = Target("cosine", one_up[best])
    res = search_precision(model, table, evaluate, target.met, base=base, target=str(target), progress=False,
                           **kwargs)
    assert res.met and res.steps[0].precision is Precision.INT4W and not target.met(res.steps[0].metrics)
    assert res.rungs == {best: Precision.INT8}
    # Why it is there: back on int4w the target missed (with the metric that missed it), or it
    # heads the ranking and alone met the target (no refining needed).
    assert res.reasons[best].startswith(("on int4w the target missed (cosine ", "rank 1 of the ranking"))
    assert res.to_json()["why"] == dict(res.reasons)
    got = {n: a.precision for n, a in res.mixed.assignments.items() if n in one_up}
    assert got == {best: Precision.INT8, next(n for n in one_up if n != best): Precision.INT4W}
    ops = [n.op_type for n in res.mixed.model.graph.node]
    assert "QuantizeLinear" in ops and res.mixed.model.opset_import[0].version >= 21
    # A group the plan pins in fp32 stays there, whatever the target.
    pinned = base.with_overrides([PrecisionRule(f"name:{best}", Precision.FP32)])
    res = search_precision(model, table, evaluate, Target("cosine", 1.5).met, base=pinned, progress=False, **kwargs)
    assert not res.met and best not in res.rungs
    assert res.mixed.assignments[best].precision is Precision.FP32

@needs_trt
def test_tensorrt_rtx_builds_int4_weight_only_matmuls():
    from trtq.deploy.build import BuildOptions, build_engine

    model, x = make_mlp()
    table = calibrate(model, x[:64], "minmax", progress=False)
    out = apply_plan(model, table, PrecisionPlan(Precision.INT4W), int4_block=64).model
    built = build_engine(out, BuildOptions(max_batch=8, progress=False))
    assert len(built.engine) > 1000
