"""Per-layer clipping: the fraction chosen is the one a NumPy brute force finds best."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.calibration import calibrate
from trtq.quantize.clipping import DEFAULT_FRACTIONS, refine_clipping


def _gemm_model(w: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"], name="relu"),
         helper.make_node("Gemm", ["h", "w"], ["y"], name="fc", transB=1)], "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[0]])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _fq(x, amax, axis=None):
    s = amax / 127
    return np.clip(np.rint(x / s), -127, 127) * s


def test_choice_matches_numpy_brute_force():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.2, (6, 32)).astype(np.float32)
    x = np.maximum(rng.standard_t(2, (256, 32)), 0).astype(np.float32)  # a heavy tail: clipping pays a little
    model = _gemm_model(w)
    table = calibrate(model, x, "minmax", progress=False)
    result = refine_clipping(model, table, x, samples=256, progress=False)
    refined, choices = result.table, result.records
    [choice] = choices
    assert choice.tensor == "h" and choice.nodes == ("fc",)
    # Brute force in NumPy: int8 weights per output channel, int8 input, relative output error.
    wq = _fq(w, np.abs(w).max(axis=1, keepdims=True))
    ref = x @ w.T
    errors = [((_fq(x, table["h"].amax * f) @ wq.T - ref) ** 2).mean() / (ref ** 2).mean() for f in DEFAULT_FRACTIONS]
    assert choice.fraction == DEFAULT_FRACTIONS[int(np.argmin(errors))] < 1.0
    assert abs(refined["h"].amax - table["h"].amax * choice.fraction) < 1e-5
    assert choice.sqnr_after_db > choice.sqnr_before_db
    assert refined["h"].method.endswith("+layer-clip") and refined.model_sha256 == table.model_sha256


def test_tensors_read_by_a_residual_add_keep_their_range(cnn_model, cnn_data):
    from trtq.quantize import fold_batchnorm

    model = fold_batchnorm(cnn_model)
    table = calibrate(model, cnn_data, "minmax", progress=False)
    result = refine_clipping(model, table, cnn_data, progress=False)
    refined, choices = result.table, result.records
    chosen = {c.tensor for c in choices}
    assert "r1" not in chosen  # also the residual input of the Add: its Q/DQ pair is shared
    assert {"input", "flat"} <= chosen
    assert refined["r1"] == table["r1"]
