"""--target-runtime ort-cpu: uint8 activations, 7-bit weights without VNNI, every Conv fused by ORT."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.calibration import calibrate
from trtq.deploy import OrtRunner, QdqMode, compare_outputs
from trtq.quantize import calibration_tensors, quantize
from trtq.quantize.graph import GraphIndex
from trtq.quantize.qdq import asymmetric_params
from trtq.quantize.rules import spatial_mean_rule
from trtq.quantize.targets import QuantTarget, TargetRuntime, cpu_flags, needs_reduce_range
from trtq.core.errors import BuildError, QuantizationError

ORT_CPU = QuantTarget(TargetRuntime.ORT_CPU, reduce_range=False)
ORT_CPU_7BIT = QuantTarget(TargetRuntime.ORT_CPU, reduce_range=True)


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _ort_cpu(model, data, target=ORT_CPU):
    table = calibrate(model, data, tensors=calibration_tensors(model, target), progress=False)
    return quantize(model, table, target=target), table


def test_asymmetric_params_match_the_formula():
    p = asymmetric_params(-1.0, 3.0)
    assert float(p.scale) == pytest.approx(4 / 255)
    assert p.zero_point.dtype == np.uint8 and int(p.zero_point) == 64  # round(1 / (4/255))
    relu = asymmetric_params(0.5, 2.0)  # widened to [0, 2]: zero stays exact
    assert int(relu.zero_point) == 0 and float(relu.scale) == pytest.approx(2 / 255)
    negative = asymmetric_params(-2.0, -1.0)  # widened to [-2, 0]
    assert int(negative.zero_point) == 255
    assert float(asymmetric_params(0.0, 0.0).scale) > 0


def test_activations_are_uint8_and_weights_symmetric_int8(cnn_model, cnn_data):
    q, table = _ort_cpu(cnn_model, cnn_data)
    inits = _inits(q)
    producer = {o: n for n in q.graph.node for o in n.output}
    for node in q.graph.node:
        if node.op_type == "QuantizeLinear":
            r = table[node.input[0]]
            scale, zp = inits[node.input[1]], inits[node.input[2]]
            assert zp.dtype == np.uint8
            lo, hi = min(r.lo, 0), max(r.hi, 0)
            assert scale == pytest.approx((hi - lo) / 255, rel=1e-6)
            assert int(zp) == int(np.clip(np.rint(-lo / scale), 0, 255))
        if node.op_type == "Conv":
            w_dq = producer[node.input[1]]
            assert inits[w_dq.input[0]].dtype == np.int8 and not inits[w_dq.input[2]].any()
    relu_zp = inits["r1_zero_point"]
    assert int(relu_zp) == 0  # a ReLU output uses all 256 levels
    # Both inputs of the residual Add and the pooling input are quantized (ORT fuses them).
    add = next(n for n in q.graph.node if n.name == "residual_add")
    assert all(producer[i].op_type == "DequantizeLinear" for i in add.input)
    gap = next(n for n in q.graph.node if n.name == "gap")
    assert producer[gap.input[0]].op_type == "DequantizeLinear"
    assert "ort-cpu" in {p.key: p.value for p in q.metadata_props}["trtq.quantization"]
    # The classifier writes the logits, which nothing quantizes: ORT would not fuse it, so it stays float.
    fc = next(n for n in q.graph.node if n.name == "fc")
    assert fc.input[:2] == ["flat", "fc_w"]


def test_reduced_range_weights_stay_within_63(cnn_model, cnn_data):
    q, _ = _ort_cpu(cnn_model, cnn_data, ORT_CPU_7BIT)
    weights = [v for k, v in _inits(q).items() if v.dtype == np.int8 and v.ndim >= 2]
    assert weights and all(np.abs(w).max() == 63 for w in weights)  # each per-channel max maps to 63
    full, _ = _ort_cpu(cnn_model, cnn_data)
    assert all(np.abs(w).max() == 127 for k, w in _inits(full).items() if w.dtype == np.int8 and w.ndim >= 2)


def test_onnx_runtime_fuses_every_conv_and_add(cnn_model, cnn_data, tmp_path):
    import onnxruntime as ort

    q, _ = _ort_cpu(cnn_model, cnn_data)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(q.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
    assert ops.count("QLinearConv") == 2 and "QLinearAdd" in ops
    assert not {"Conv", "FusedConv"} & set(ops)


def test_fused_kernels_agree_with_float_simulation(cnn_model, cnn_data):
    q, _ = _ort_cpu(cnn_model, cnn_data)
    ref = OrtRunner(cnn_model).infer({"input": cnn_data})
    simulated = OrtRunner(q, mode=QdqMode.FLOAT).infer({"input": cnn_data})
    fused = OrtRunner(q, mode=QdqMode.ORT_INT8).infer({"input": cnn_data})
    assert compare_outputs(ref, simulated).outputs[0].cosine > 0.98
    assert compare_outputs(simulated, fused).outputs[0].cosine > 0.999


def test_reduce_range_is_detected_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") is None
    assert needs_reduce_range("x86_64", frozenset({"avx2"}))
    assert not needs_reduce_range("x86_64", frozenset({"avx2", "avx512_vnni"}))
    assert not needs_reduce_range("AMD64", frozenset({"avx_vnni"}))
    assert not needs_reduce_range("aarch64", frozenset())
    assert QuantTarget.parse("ort-cpu", reduce_range=True).weight_qmax == 63
    assert QuantTarget.parse(None) == QuantTarget()


def test_bad_targets_are_refused():
    with pytest.raises(QuantizationError, match="unknown target runtime 'tpu'"):
        QuantTarget.parse("tpu")
    with pytest.raises(QuantizationError, match="reduce_range is for"):
        QuantTarget(TargetRuntime.TENSORRT, reduce_range=True)


@pytest.mark.parametrize("axes, quantized", [([-2, -1], True), ([2, 3], True), ([-1], False), ([1], False)])
def test_only_spatial_means_are_quantized(axes, quantized):
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(axes, np.int64), "axes")])
    assert bool(spatial_mean_rule(node, GraphIndex(graph))) is quantized


def test_tensorrt_build_refuses_an_ort_cpu_model(cnn_model, cnn_data):
    from trtq.deploy.build import build_engine

    q, _ = _ort_cpu(cnn_model, cnn_data)
    with pytest.raises(BuildError, match="--target-runtime ort-cpu"):
        build_engine(q)


def test_a_tensorrt_table_misses_ranges_ort_cpu_needs(cnn_model, cnn_data):
    table = calibrate(cnn_model, cnn_data, tensors=calibration_tensors(cnn_model), progress=False)
    with pytest.raises(QuantizationError, match="calibration_tensors\\(model, 'ort-cpu'\\)"):
        quantize(cnn_model, table, target=ORT_CPU)


def test_transformer_residual_stays_float_and_matmul_fuses(tmp_path):
    """x -> MatMul(W) -> Add(bias) -> Add(x): the residual Add is not a CNN skip connection
    (no Conv input), so it stays float; the MatMul keeps int8 and ORT runs it as
    MatMulIntegerToFloat although its output is not quantized."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(16, 16)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=16).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["h"], name="bias"),
             helper.make_node("Add", ["h", "x"], ["y"], name="residual")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 8, 16]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "t", io[:1], io[1:], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.normal(size=(32, 8, 16)).astype(np.float32)
    q, _ = _ort_cpu(model, x)
    residual = next(n for n in q.graph.node if n.name == "residual")
    assert list(residual.input) == ["h", "x"]  # float inputs, as in the fp32 model
    matmul = next(n for n in q.graph.node if n.name == "mm")
    assert all(i.endswith("_dequantized") for i in matmul.input)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(q.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    assert "MatMulIntegerToFloat" in [n.op_type for n in onnx.load(tmp_path / "optimized.onnx").graph.node]
