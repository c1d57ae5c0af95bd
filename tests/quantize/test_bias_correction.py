"""Empirical bias correction against a NumPy reference on one int8 layer, and on the tiny CNN."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.calibration import calibrate
from trtq.deploy import OrtRunner
from trtq.deploy.evaluate import FidelityEvaluator
from trtq.quantize import quantize
from trtq.quantize.bias_correction import correct_bias
from tests.conftest import make_cnn
from trtq.core.errors import QuantizationError


def _gemm(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[0]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_one_layer_matches_the_numpy_shift():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (6, 16)).astype(np.float32)
    model = _gemm(w, np.zeros(6, np.float32))
    x = (rng.uniform(0, 1, (256, 16)) + 0.5).astype(np.float32)  # positive inputs: weight errors don't cancel
    q = quantize(model, calibrate(model, {"x": x}, "minmax", progress=False))
    before = OrtRunner(q).infer({"x": x})["y"] - x @ w.T
    result = correct_bias(model, q, {"x": x}, samples=256, min_t=0.0, progress=False)
    fixed, shifts = result.model, result.records
    expected = -before.mean(axis=0)  # the bias that cancels the mean shift on these samples
    got = numpy_helper.to_array(next(i for i in fixed.graph.initializer if i.name == "b"))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    after = OrtRunner(fixed).infer({"x": x})["y"] - x @ w.T
    assert np.abs(after.mean(axis=0)).max() < 1e-5 < np.abs(before.mean(axis=0)).max()
    assert shifts[0].node == "fc" and shifts[0].corrected == 6
    assert not numpy_helper.to_array(next(i for i in q.graph.initializer if i.name == "b")).any()  # q untouched


def test_noise_is_not_corrected():
    """With t large, no shift is 'clear of the noise': the biases stay as they were."""
    model = make_cnn()
    x = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    q = quantize(model, calibrate(model, {"input": x}, "minmax", progress=False))
    result = correct_bias(model, q, {"input": x}, samples=16, min_t=1e9, progress=False)
    fixed, shifts = result.model, result.records
    assert shifts and all(s.corrected == 0 for s in shifts)
    assert [i.raw_data for i in fixed.graph.initializer] == [i.raw_data for i in q.graph.initializer]


def test_tiny_cnn_gets_closer_to_fp32():
    model = make_cnn()
    rng = np.random.default_rng(2)
    calib, held = (rng.standard_normal((128, 3, 8, 8)).astype(np.float32) + 0.3 for _ in range(2))
    q = quantize(model, calibrate(model, {"input": calib}, "minmax", progress=False))
    result = correct_bias(model, q, {"input": calib}, samples=128, progress=False)
    fixed, shifts = result.model, result.records
    evaluate = FidelityEvaluator(model, {"input": held})
    assert {s.node for s in shifts} == {"conv1", "fc"}  # conv2 has no bias: left alone
    assert evaluate(fixed)["sqnr_db"] >= evaluate(q)["sqnr_db"] - 0.1


def test_too_few_samples_is_an_error():
    model = make_cnn()
    x = np.zeros((4, 3, 8, 8), np.float32)
    q = quantize(model, calibrate(model, {"input": x + 1}, "minmax", progress=False))
    with pytest.raises(QuantizationError, match="at least 8 samples"):
        correct_bias(model, q, {"input": x}, progress=False)
