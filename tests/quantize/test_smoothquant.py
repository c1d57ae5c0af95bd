"""SmoothQuant: same function in fp32, lower int8 error where activations have outlier channels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.calibration import calibrate
from trtq.deploy import OrtRunner, compare_outputs, run_all
from trtq.quantize import calibration_tensors, quantize
from trtq.quantize.smoothquant import choose_alpha, linear_groups, smooth_factors, smooth_quant

D, H = 16, 32
OUTLIERS = (3, 11)  # input channels 30x larger than the rest, as in transformer LayerNorm outputs


def make_block(seed: int = 0, gemm: bool = False) -> onnx.ModelProto:
    """x (N,S,D) -> LayerNorm -> {MatMul Wa, MatMul Wb} -> Relu(a)+b -> MatMul W2 -> y (N,S,D).

    Two layers read the LayerNorm output (one group, one shared factor); the last reads a
    computed tensor. ``gemm``: 2-D input and ``Gemm(transB=1)`` layers instead of MatMul.
    """
    rng = np.random.default_rng(seed)
    f = np.float32
    gamma = np.ones(D, f)
    gamma[list(OUTLIERS)] = 30.0
    wa, wb, w2 = (rng.normal(0, 0.3, s).astype(f) for s in ((D, H), (D, H), (H, D)))
    inits = [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(np.zeros(D, f), "beta")]
    if gemm:
        inits += [numpy_helper.from_array(wa.T.copy(), "wa"), numpy_helper.from_array(wb.T.copy(), "wb"),
                  numpy_helper.from_array(w2.T.copy(), "w2"), numpy_helper.from_array(np.zeros(H, f), "bias")]
        lin = [helper.make_node("Gemm", ["ln", "wa", "bias"], ["a"], name="fc_a", transB=1),
               helper.make_node("Gemm", ["ln", "wb"], ["b"], name="fc_b", transB=1),
               helper.make_node("Gemm", ["h", "w2"], ["y"], name="fc_2", transB=1)]
        shape = ["N", D]
    else:
        inits += [numpy_helper.from_array(w, n) for w, n in ((wa, "wa"), (wb, "wb"), (w2, "w2"))]
        lin = [helper.make_node("MatMul", ["ln", "wa"], ["a"], name="fc_a"),
               helper.make_node("MatMul", ["ln", "wb"], ["b"], name="fc_b"),
               helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc_2")]
        shape = ["N", 6, D]
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
             lin[0], lin[1],
             helper.make_node("Relu", ["a"], ["ra"], name="relu"),
             helper.make_node("Add", ["ra", "b"], ["h"], name="add"), lin[2]]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def data(n: int, gemm: bool = False, seed: int = 1) -> np.ndarray:
    shape = (n, D) if gemm else (n, 6, D)
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("gemm", [False, True])
def test_smoothed_model_computes_the_same_function(gemm):
    model = make_block(gemm=gemm)
    result = smooth_quant(model, data(64, gemm), progress=False)
    smoothed, report = result.model, result.records
    groups = {r.tensor: r for r in report}
    assert set(groups) == {"ln", "h"} and groups["ln"].nodes == ("fc_a", "fc_b")
    assert groups["ln"].alpha is not None  # the outlier channels make smoothing pay
    assert groups["ln"].sqnr_after_db > groups["ln"].sqnr_before_db + 3
    muls = [n for n in smoothed.graph.node if n.op_type == "Mul"]
    assert [m.input[0] for m in muls if m.input[0] == "ln"] == ["ln"]  # one factor for the group
    consumers = [n.name for n in smoothed.graph.node if "ln" in n.input]
    assert "add" not in consumers  # only the linear layers read the smoothed tensor
    onnx.checker.check_model(smoothed)
    x = data(16, gemm, seed=7)
    ref = OrtRunner(model).infer({"x": x})["y"]
    got = OrtRunner(smoothed).infer({"x": x})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_weights_and_factors_match_a_numpy_reference():
    model = make_block()
    calib = data(64)
    result = smooth_quant(model, calib, progress=False)
    smoothed, report = result.model, result.records
    alpha = next(r.alpha for r in report if r.tensor == "ln")
    # NumPy reference: s_j = max|X_j|^a / max|W_j,:|^(1-a) over the calibration data.
    gamma = np.ones(D, np.float32)
    gamma[list(OUTLIERS)] = 30.0
    mu, var = calib.mean(-1, keepdims=True), calib.var(-1, keepdims=True)
    ln = (calib - mu) / np.sqrt(var + 1e-5) * gamma
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    w = np.concatenate([inits["wa"], inits["wb"]], axis=1)
    s = np.abs(ln).reshape(-1, D).max(0) ** alpha / np.abs(w).max(1) ** (1 - alpha)
    np.testing.assert_allclose(smooth_factors(np.abs(ln).reshape(-1, D).max(0), np.abs(w).max(1), alpha), s,
                               rtol=1e-4)
    new = {i.name: numpy_helper.to_array(i) for i in smoothed.graph.initializer}
    mul = next(n for n in smoothed.graph.node if n.op_type == "Mul" and n.input[0] == "ln")
    np.testing.assert_allclose(new[mul.input[1]], 1 / s, rtol=1e-3)
    fc_a = next(n for n in smoothed.graph.node if n.name == "fc_a")
    np.testing.assert_allclose(new[fc_a.input[1]], inits["wa"] * s[:, None], rtol=1e-3, atol=1e-6)


def test_int8_error_drops_with_smoothing():
    model = make_block()
    calib, held_out = data(128), data(64, seed=9)
    ref = run_all(OrtRunner(model), {"x": held_out})

    def int8_error(fp32):
        table = calibrate(fp32, calib, "minmax", tensors=calibration_tensors(fp32), progress=False)
        out = run_all(OrtRunner(quantize(fp32, table)), {"x": held_out})
        return compare_outputs(ref, out).outputs[0].sqnr_db

    smoothed = smooth_quant(model, calib, progress=False).model
    assert int8_error(smoothed) > int8_error(model) + 3


def test_choose_alpha_leaves_flat_activations_alone():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (512, D))  # no outliers: every channel the same range
    w = rng.normal(0, 0.3, (D, H))
    alpha, before, after, s = choose_alpha(x, w, np.abs(x).max(0))
    assert after >= before
    if alpha is None:
        assert s is None and after == before
    # Outliers: smoothing wins, and the error really is lower for the factors returned.
    x[:, 3] *= 40
    alpha, before, after, s = choose_alpha(x, w, np.abs(x).max(0))
    assert alpha is not None and after > before + 3 and s.shape == (D,)


def test_models_without_linear_layers_come_back_unchanged(cnn_model, cnn_data):
    # The tiny CNN's only linear layer is its Gemm classifier; a conv-only model has none.
    conv_only = onnx.ModelProto()
    conv_only.CopyFrom(cnn_model)
    assert list(linear_groups(conv_only)) == ["flat"]
    nodes = [n for n in conv_only.graph.node if n.op_type not in ("Gemm",)]
    del conv_only.graph.node[:]
    conv_only.graph.node.extend(nodes)
    conv_only.graph.output[0].name = "flat"
    del conv_only.graph.output[0].type.tensor_type.shape.dim[1:]
    result = smooth_quant(conv_only, cnn_data, progress=False)
    out, report = result.model, result.records
    assert report == () and out.graph == conv_only.graph


def test_weight_only_factors_lower_the_int4_error_and_touch_only_the_listed_layers():
    """AWQ-style factors for int4w layers: same function in fp32; lower block-wise INT4 weight
    error (activations in float) on held-out data; layers not listed keep their weights."""
    from trtq.quantize.mixed import apply_plan
    from trtq.quantize.precision import PrecisionPlan

    model, calib, held_out = make_block(), data(64), data(64, seed=7)
    result = smooth_quant(model, calib, progress=False, weight_only=32, nodes=["fc_a", "fc_b"])
    smoothed = result.model
    [group] = result.records
    assert group.kind == "int4w" and group.nodes == ("fc_a", "fc_b") and group.alpha is not None
    assert group.sqnr_after_db > group.sqnr_before_db
    ref = run_all(OrtRunner(model), {"x": held_out})
    assert compare_outputs(ref, run_all(OrtRunner(smoothed), {"x": held_out})).outputs[0].sqnr_db > 100
    w2 = {i.name: i for i in smoothed.graph.initializer}["w2"]  # fc_2 was not listed
    assert np.array_equal(numpy_helper.to_array(w2), {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}["w2"])
    factors = {i.name: numpy_helper.to_array(i) for i in smoothed.graph.initializer}["ln_smooth_scale"]
    assert factors.shape == (D,) and np.all(np.isfinite(factors) & (factors > 0))

    def int4_sqnr(fp32):
        table = calibrate(fp32, calib, "minmax", tensors=calibration_tensors(fp32), progress=False)
        plan = PrecisionPlan.from_flags("fp32", int4w=["fc_a", "fc_b"])
        out = run_all(OrtRunner(apply_plan(fp32, table, plan, int4_block=32).model), {"x": held_out})
        return compare_outputs(ref, out).outputs[0].sqnr_db

    assert int4_sqnr(smoothed) > int4_sqnr(model) + 1


def test_choose_weight_only_alpha_keeps_flat_channels_alone_and_wins_on_outliers():
    from trtq.quantize.smoothquant import choose_weight_only_alpha

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (512, 64)).astype(np.float32)
    w = rng.normal(0, 0.3, (64, H)).astype(np.float32)
    alpha, before, after, s = choose_weight_only_alpha(x, w, np.abs(x).mean(0), np.abs(x).max(0), 32)
    assert after >= before and (alpha is None) == (s is None)
    x[:, [3, 40]] *= 50
    alpha, before, after, s = choose_weight_only_alpha(x, w, np.abs(x).mean(0), np.abs(x).max(0), 32)
    assert alpha is not None and after > before + 1 and s.shape == (64,)
    assert np.max(np.abs(x).max(0) / s) <= np.abs(x).max() * (1 + 1e-6)  # never grows the activations


def test_the_job_scales_int4w_layers_for_int4_and_the_rest_for_int8(tmp_path):
    """A plan with int4w and int8 layers: the int4w group gets weight-only factors, the int8
    layer SmoothQuant's, never both; the report says which."""
    import json

    import trtq
    from trtq.quantize.precision import PrecisionPlan

    onnx.save(make_block(), tmp_path / "block.onnx")
    np.save(tmp_path / "calib.npy", data(64))
    result = trtq.quantize_model(tmp_path / "out", onnx=tmp_path / "block.onnx", calib_data=tmp_path / "calib.npy",
                                 plan=PrecisionPlan.from_flags("int8", int4w=["fc_a", "fc_b"]), progress=False)
    kinds = {r["nodes"][0]: r["kind"] for r in json.loads((tmp_path / "out" / "report.json").read_text())["smoothquant"]}
    assert kinds == {"fc_a": "int4w", "fc_2": "int8"}
    onnx.checker.check_model(onnx.load(result.files["mixed"]), full_check=True)


def test_one_calibration_pass_gives_smoothquant_its_statistics_and_the_smoothed_table():
    """SmoothQuant's statistics gathered as a tap of the calibration run give the factors its
    own pass gives, and the original table plus the derived ``X / s`` ranges is the table a
    calibration of the smoothed model gives."""
    from trtq.quantize.smoothquant import SmoothQuantStatistics, smoothed_ranges, smoothquant_tensors

    model, x = make_block(), data(48)
    own = smooth_quant(model, x, samples=48, batch_size=16, progress=False)
    tap = SmoothQuantStatistics(smoothquant_tensors(model), 48, 16)
    original = calibrate(model, x, "minmax", batch_size=16, progress=False, taps=[tap])
    stats = tap.result()
    shared = smooth_quant(model, None, statistics=stats)
    assert [(r.tensor, r.alpha) for r in shared.records] == [(r.tensor, r.alpha) for r in own.records]
    assert any(r.smoothed for r in shared.records)
    derived = smoothed_ranges(shared.model, shared.records, stats, "minmax", original.samples)
    assert set(derived) == {r.smoothed for r in shared.records if r.alpha is not None}
    table = {**original.ranges, **derived}
    direct = calibrate(shared.model, x, "minmax", batch_size=16, progress=False)
    assert set(direct.ranges) <= set(table)
    for name, r in direct.ranges.items():
        np.testing.assert_allclose([table[name].lo, table[name].hi], [r.lo, r.hi], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_the_job_calibrates_and_smooths_in_one_pass(tmp_path):
    """The default job runs one pass for SmoothQuant and calibration (report.json's stages say
    so), and its calibration.json is a calibration of the model.fp32.onnx it writes."""
    import json

    import trtq
    from trtq.calibration import CalibrationTable

    onnx.save(make_block(), tmp_path / "block.onnx")
    np.save(tmp_path / "calib.npy", data(40))
    trtq.quantize_model(tmp_path / "out", onnx=tmp_path / "block.onnx", calib_data=tmp_path / "calib.npy",
                        progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    stages = [s["stage"] for s in report["time"]["stages"]]
    assert "SmoothQuant + calibration + GPTQ statistics" in stages and "calibration" not in stages
    ranges = CalibrationTable.load(tmp_path / "out" / "calibration.json").ranges
    fp32 = onnx.load(tmp_path / "out" / "model.fp32.onnx")
    assert any(n.op_type == "Mul" and "SmoothQuant" in n.name for n in fp32.graph.node)  # smoothed
    assert set(ranges) == set(calibration_tensors(fp32))
    direct = calibrate(fp32, data(40), "minmax", batch_size=16, tensors=list(ranges), progress=False)
    for name, r in direct.ranges.items():
        np.testing.assert_allclose([ranges[name].lo, ranges[name].hi], [r.lo, r.hi], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("gemm", [False, True])
def test_gptq_statistics_from_the_calibration_run_round_as_gptq_own_pass(tmp_path, gemm):
    """GPTQ's H gathered in the calibration run on the original model (and rescaled for the
    smoothed layers) rounds the weights as GPTQ's own pass over the smoothed model does."""
    import trtq
    from trtq.quantize.rounding import gptq_weights

    onnx.save(make_block(gemm=gemm), tmp_path / "block.onnx")
    np.save(tmp_path / "calib.npy", data(96, gemm))
    result = trtq.quantize_model(tmp_path / "out", onnx=tmp_path / "block.onnx", calib_data=tmp_path / "calib.npy",
                                 progress=False)
    assert result.fp32.smoothed and any(r.alpha is not None for r in result.fp32.smoothed)
    assert result.fp32.gptq is not None  # H came from the calibration run
    own = gptq_weights(onnx.load(tmp_path / "out" / "model.fp32.onnx"), data(96, gemm), samples=64, progress=False)
    assert set(result.rounding.weights) == set(own.weights) and own.weights
    for name, w in own.weights.items():
        np.testing.assert_allclose(result.rounding.weights[name], w, rtol=1e-6, atol=1e-7, err_msg=name)
