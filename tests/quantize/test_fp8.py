"""FP8 (E4M3) as a precision: Q/DQ types, scales, the opset bump, ONNX Runtime's execution
against a NumPy reference, plans mixing int8 and fp8, and TensorRT-RTX builds."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from tests.conftest import has_module, make_cnn, make_matmul
from trtq.calibration import calibrate
from trtq.core.errors import BuildError, QuantizationError
from trtq.deploy import OrtRunner, run_all
from trtq.deploy.plan import precision_plan
from trtq.quantize import apply_plan, quantize
from trtq.quantize.precision import Precision, PrecisionPlan
from trtq.quantize.qdq import FP8_MAX, fake_quantize_fp8, quantize_fp8

FP8 = onnx.TensorProto.FLOAT8E4M3FN
needs_trt = pytest.mark.skipif(not (has_module("tensorrt") or has_module("tensorrt_rtx")),
                               reason="needs TensorRT or TensorRT-RTX: pip install 'trtq[rtx]'")


def _cnn_and_data():
    x = np.random.default_rng(1).normal(0, 1, (40, 3, 8, 8)).astype(np.float32)
    model = make_cnn(opset=17)
    return model, x, calibrate(model, x, "minmax", progress=False)


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_fp8_qdq_types_scales_and_opset():
    model, x, table = _cnn_and_data()
    out = apply_plan(model, table, PrecisionPlan(Precision.FP8)).model
    onnx.checker.check_model(out, full_check=True)
    assert out.opset_import[0].version >= 19 and out.ir_version >= 9
    inits = {i.name: i for i in out.graph.initializer}
    qdq = [n for n in out.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(inits[n.input[2]].data_type == FP8 for n in qdq)
    values = _inits(out)
    # Activations: per tensor, amax / 448.
    q_input = next(n for n in qdq if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    assert values[q_input.input[1]] == pytest.approx(table["input"].amax / FP8_MAX, rel=1e-6)
    # Weights: stored in fp8, per output channel, amax / 448 each; dequantized they are the
    # weights rounded to E4M3's 3-bit mantissa.
    dq_w = next(n for n in qdq if n.op_type == "DequantizeLinear" and "conv1" in n.input[0])
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    stored, scale = values[dq_w.input[0]], values[dq_w.input[1]]
    assert inits[dq_w.input[0]].data_type == FP8 and scale.shape == (w.shape[0],)
    folded_amax = np.abs(stored.astype(np.float32) * scale[:, None, None, None]).reshape(len(scale), -1).max(1)
    np.testing.assert_allclose(folded_amax / scale, FP8_MAX, rtol=1e-6)  # each channel's largest weight hits 448
    assert precision_plan(out) == {"conv1": "fp8", "conv2": "fp8", "fc": "fp8"}


def test_ort_runs_fp8_exactly_as_the_numpy_reference():
    model = make_matmul()
    x = np.random.default_rng(2).normal(0, 2, (64, 6)).astype(np.float32)
    table = calibrate(model, x, "minmax", progress=False)
    out = apply_plan(model, table, PrecisionPlan(Precision.FP8)).model
    got = run_all(OrtRunner(out), x)["y"]
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "W"))
    bias = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "bias"))
    w_scale = np.abs(w).max(0) / FP8_MAX  # MatMul [in, out]: per output column
    w_q = quantize_fp8(w, w_scale[None, :]).astype(np.float32) * w_scale[None, :]
    want = fake_quantize_fp8(x, table["x"].amax) @ w_q + bias
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # E4M3 keeps ~3 significant bits: the error is real but bounded (2^-4 relative per element).
    assert np.abs(fake_quantize_fp8(x, table["x"].amax) - x).max() <= np.abs(x).max() * 2 ** -4


def test_the_numpy_reference_saturates_and_rounds_to_nearest_even():
    s = np.float32(1.0)
    q = quantize_fp8(np.array([500.0, -1e6, 1.0625, 1.1875], np.float32), s).astype(np.float32)
    # ±448 saturates; 1.0625 is halfway between 1.0 and 1.125: to the even mantissa (1.0).
    np.testing.assert_array_equal(q, [448.0, -448.0, 1.0, 1.25])


def test_a_plan_mixes_int8_and_fp8():
    model, x, table = _cnn_and_data()
    mixed = apply_plan(model, table, PrecisionPlan.from_flags("int8", fp8=["conv2"]))
    assert mixed.summary()["fp8"] == 1 and mixed.summary()["int8"] == 3  # conv1, the residual Add, fc
    assert precision_plan(mixed.model) == {"conv1": "int8", "conv2": "fp8", "fc": "int8"}
    # r1 feeds conv2 (fp8) and the residual Add (int8 Q/DQ beside conv2's output): one pair each.
    kinds = {onnx.TensorProto.INT8, FP8}
    zps = {i.data_type for i in mixed.model.graph.initializer if "zero_point" in i.name}
    assert zps == kinds
    ref, got = run_all(OrtRunner(model), x), run_all(OrtRunner(mixed.model), x)
    cos = float((ref["logits"] * got["logits"]).sum() / np.linalg.norm(ref["logits"]) / np.linalg.norm(got["logits"]))
    assert cos > 0.999


def test_onnx_runtime_rewrites_that_break_fp8_are_off_in_float_mode():
    """ONNX Runtime 1.32 drops a Relu in front of a float8 QuantizeLinear (ReluQuantRewrite),
    letting negatives through; the runner leaves that rewrite out."""
    model, x, table = _cnn_and_data()
    fp8 = apply_plan(model, table, PrecisionPlan(Precision.FP8)).model
    ref, got = run_all(OrtRunner(model), x)["logits"], run_all(OrtRunner(fp8), x)["logits"]
    cos = float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cos > 0.999  # 0.80 with the rewrite


def test_fp8_is_refused_for_onnx_runtime_cpu_kernels():
    model, x, table = _cnn_and_data()
    with pytest.raises(QuantizationError, match="fp8 is for TensorRT"):
        quantize(model, table, fp8=["conv1"], target="ort-cpu")
    from trtq.pipeline import QuantizeJob

    with pytest.raises(QuantizationError, match="no fp8 kernels"):
        QuantizeJob(onnx="m.onnx", plan=PrecisionPlan(Precision.FP8), runtime="ort-cpu")


def test_cli_fp8_default_precision(tmp_path):
    from trtq.cli import main

    model, x, _ = _cnn_and_data()
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x)
    result = CliRunner().invoke(main, ["quantize", "--onnx", str(tmp_path / "m.onnx"), "--calib-data",
                                       str(tmp_path / "x.npy"), "--default-precision", "fp8", "--out",
                                       str(tmp_path / "out"), "--no-progress", "--no-gptq"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "precision.json").read_text())
    assert report["summary"]["fp8"] == 4 and report["plan"]["default"] == "fp8"  # 2 convs, the Add, the Gemm
    out = onnx.load(tmp_path / "out" / "model.mixed.onnx")
    assert set(precision_plan(out).values()) == {"fp8"}


@needs_trt
def test_tensorrt_rtx_builds_fp8_for_ada_and_newer_and_says_why_not_for_older():
    from trtq.deploy.build import BuildOptions, build_engine

    model, x, table = _cnn_and_data()
    fp8 = apply_plan(model, table, PrecisionPlan.from_flags("int8", fp8=["conv2"])).model
    built = build_engine(fp8, BuildOptions(max_batch=8, progress=False))
    assert len(built.engine) > 1000 and built.info.precision["conv2"] == "fp8"
    if built.info.backend == "tensorrt_rtx":
        assert "SM89" in built.info.compute_capabilities and "SM86" not in built.info.compute_capabilities
        with pytest.raises(BuildError, match="SM86 has none"):
            build_engine(fp8, BuildOptions(max_batch=8, progress=False, compute_capabilities=("SM86", "SM89")))


def test_an_fp8_model_with_relu6_loads_in_both_runner_modes():
    """ONNX Runtime's ClipQuantRewrite cannot read a float8 zero point (it fails to load the
    model); the runner leaves it out for fp8 models, in the integer-kernel mode too."""
    from onnx import TensorProto, helper

    from trtq.deploy import QdqMode

    model = make_cnn(opset=17)
    for node in model.graph.node:
        if node.op_type == "Relu":  # ReLU6, as EfficientNet-Lite0 has
            node.op_type = "Clip"
            node.input.extend(["zero6", "six"])
    model.graph.initializer.extend([helper.make_tensor("zero6", TensorProto.FLOAT, [], [0.0]),
                                    helper.make_tensor("six", TensorProto.FLOAT, [], [6.0])])
    x = np.random.default_rng(1).normal(0, 1, (16, 3, 8, 8)).astype(np.float32)
    fp8 = apply_plan(model, calibrate(model, x, "minmax", progress=False), PrecisionPlan(Precision.FP8)).model
    outs = [run_all(OrtRunner(fp8, mode=mode), x)["logits"] for mode in (QdqMode.FLOAT, QdqMode.ORT_INT8)]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
