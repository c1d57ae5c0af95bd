"""ONNX Runtime sessions: large weights handed over as arrays compute what the serialized model does."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtq.core.runtime import EXTERNAL_BYTES, _without_weights, ort_session


def _model(weight_as_input: bool = False, subgraph: bool = False) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """y = x @ W + b (W: 256x128 float32, 128 KB, over the threshold; b small); ``subgraph``: the
    MatMul sits in both branches of an If that reads W from the outer graph."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(256, 128)).astype(np.float32)
    b = rng.normal(size=128).astype(np.float32)
    assert w.nbytes >= EXTERNAL_BYTES > b.nbytes
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 128])
    body = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    if subgraph:
        inits.append(numpy_helper.from_array(np.array(True), "cond"))
        branches = [helper.make_graph([helper.make_node("MatMul", ["x", "W"], [f"xw_{k}"]),
                                       helper.make_node("Add", [f"xw_{k}", "b"], [f"y_{k}"])], k, [],
                                      [helper.make_tensor_value_info(f"y_{k}", TensorProto.FLOAT, None)])
                    for k in ("then", "else")]
        body = [helper.make_node("If", ["cond"], ["y"], then_branch=branches[0], else_branch=branches[1])]
    inputs = [x] + ([helper.make_tensor_value_info("W", TensorProto.FLOAT, [256, 128])] if weight_as_input else [])
    model = helper.make_model(helper.make_graph(body, "g", inputs, [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, w, b


def test_large_weights_go_as_arrays_and_the_model_is_left_alone():
    model, w, _ = _model()
    before = model.SerializeToString()
    light, weights = _without_weights(model)
    assert [name for name, _ in weights] == ["W"]  # b is small: it stays in the model
    np.testing.assert_array_equal(weights[0][1], w)
    stub = {t.name: t for t in light.graph.initializer}["W"]
    assert stub.data_location == TensorProto.EXTERNAL and not stub.raw_data and list(stub.dims) == [256, 128]
    assert model.SerializeToString() == before  # the caller's model is not touched


def test_sessions_compute_what_the_weights_say():
    x = np.random.default_rng(1).normal(size=(4, 256)).astype(np.float32)
    for kwargs in ({}, {"subgraph": True}, {"weight_as_input": True}):
        model, w, b = _model(**kwargs)
        got = ort_session(model).run(["y"], {"x": x})[0]
        np.testing.assert_allclose(got, x @ w + b, rtol=1e-4, atol=1e-4, err_msg=str(kwargs))
