"""Cross-layer equalization: exact rescaling, pair detection, factor math, and that it pays where ranges differ."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.deploy import OrtRunner
from trtq.quantize.equalize import (_Conv2, conv_pairs, equalization_factors, equalize, input_channel_ranges,
                               pair_error)
from trtq.quantize.qdq import fake_quantize


def make_separable(seed: int = 0, spread: float = 100.0) -> onnx.ModelProto:
    """x (N,4,8,8) -> Conv(8) -> Clip(0,6) -> depthwise Conv(8) -> Relu -> Conv 1x1 (4) -> y.

    conv1's output channels differ in magnitude by up to ``spread``x: what CLE evens out.
    """
    rng = np.random.default_rng(seed)
    f = np.float32
    gains = np.geomspace(1.0, 1.0 / spread, 8)
    w1 = rng.normal(0, 0.5, (8, 4, 3, 3)) * gains[:, None, None, None]
    inits = [numpy_helper.from_array(a.astype(f), n) for a, n in (
        (w1, "w1"), (rng.normal(0, 0.05, 8) * gains, "b1"), (rng.normal(0, 0.5, (8, 1, 3, 3)), "w2"),
        (rng.normal(0, 0.1, 8), "b2"), (rng.normal(0, 0.5, (4, 8, 1, 1)), "w3"),
        (np.array(0.0), "zero"), (np.array(6.0), "six"))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "zero", "six"], ["a1"], name="clip1"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["c2"], ["a2"], name="relu2"),
        helper.make_node("Conv", ["a2", "w3"], ["y"], name="project"),
    ]
    graph = helper.make_graph(nodes, "separable", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def data():
    return np.random.default_rng(1).normal(0, 2, (32, 4, 8, 8)).astype(np.float32)


def test_pairs_found_and_exclusions():
    model = make_separable()
    pairs = conv_pairs(model)
    assert [(p.conv1, p.act, p.conv2, p.depthwise) for p in pairs] == [
        ("conv1", "clip1", "dw", True), ("dw", "relu2", "project", False)]
    # A second reader of the activation: rescaling it would change that reader's input.
    model.graph.output.append(helper.make_tensor_value_info("a1", TensorProto.FLOAT, None))
    assert [p.conv2 for p in conv_pairs(model)] == ["project"]


def test_equalized_model_computes_the_same_function(data):
    model = make_separable()
    result = equalize(model, data, samples=32, progress=False)
    out, report = result.model, result.records
    assert any(r.alpha is not None for r in report)
    ops = [n.op_type for n in out.graph.node]
    assert "Min" in ops and "Clip" not in ops  # Clip(0, 6) became Relu + per-channel Min
    ref = OrtRunner(model).infer({"x": data})["y"]
    got = OrtRunner(out).infer({"x": data})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_factor_formula():
    r, w = np.array([4.0, 1.0, 0.25]), np.array([1.0, 2.0, 0.5])
    s = equalization_factors(r, w, 1.0)
    np.testing.assert_allclose(r / s, [4.0, 4.0, 4.0])  # alpha 1: every channel gets the largest range
    s = equalization_factors(r, w, 0.5)
    raw = np.sqrt(r) / np.sqrt(w)
    np.testing.assert_allclose(s, raw * (r / raw).max() / 4.0)  # normalized: the tensor keeps max range 4
    assert equalization_factors(np.array([1.0, 0.0]), np.ones(2), 1.0)[1] == pytest.approx(1 / 64)  # clamped


def test_input_channel_ranges_dense_and_depthwise():
    w = np.arange(2 * 3 * 1 * 1, dtype=float).reshape(2, 3, 1, 1) - 2  # [[-2,-1,0],[1,2,3]]
    np.testing.assert_allclose(input_channel_ranges(w, False, 3), [2, 2, 3])
    dw = np.arange(4, dtype=float).reshape(4, 1, 1, 1)  # 2 channels, multiplier 2
    np.testing.assert_allclose(input_channel_ranges(dw, True, 2), [1, 3])


def test_pair_error_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(0, 1, (2, 3, 4, 4))).astype(np.float32) * np.array([1, 0.1, 3], np.float32)[None, :, None, None]
    w = rng.normal(0, 1, (5, 3, 1, 1)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c")
    conv = _Conv2(node, None)
    ranges = np.abs(x).max(axis=(0, 2, 3)).astype(np.float64)
    s = np.array([1.0, 0.5, 2.0])
    reference = np.einsum("nchw,oc->nohw", x.astype(np.float64), w[:, :, 0, 0])
    xq = fake_quantize(x / s[None, :, None, None].astype(np.float32), float((ranges / s).max()))
    ws = w * s[None, :, None, None].astype(np.float32)
    wq = fake_quantize(ws, np.abs(ws).reshape(5, -1).max(axis=1).reshape(-1, 1, 1, 1))
    y = np.einsum("nchw,oc->nohw", xq.astype(np.float64), wq[:, :, 0, 0].astype(np.float64))
    expected = ((y - reference) ** 2).mean() / (reference ** 2).mean()
    assert pair_error(conv, x, w, ranges, s, False, reference) == pytest.approx(expected, rel=1e-4)


def test_equalization_pays_where_channel_ranges_differ(data):
    report = equalize(make_separable(spread=1000.0), data, samples=32, progress=False).records
    first = report[0]
    assert first.pair.depthwise and first.alpha is not None
    assert first.sqnr_after_db > first.sqnr_before_db + 10  # small channels were a few int8 levels


def test_models_without_pairs_come_back_unchanged(cnn_model, cnn_data):
    # conv1 -> BN -> Relu: the BN in between (unfolded) is not part of a pair; conv2 reads r1 twice.
    result = equalize(cnn_model, cnn_data, progress=False)
    out, report = result.model, result.records
    assert report == () and out.SerializeToString() == cnn_model.SerializeToString()
