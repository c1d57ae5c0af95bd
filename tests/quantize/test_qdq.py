import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trtq.calibration import CalibrationTable, TensorRange, calibrate
from trtq.deploy import OrtRunner, compare_outputs
from trtq.quantize import activation_params, quantize, weight_params
from trtq.quantize.qdq import MAX_ACTIVATION_AMAX
from tests.conftest import make_cnn, make_matmul
from trtq.core.errors import QuantizationError


def _quantized(model, data):
    table = calibrate(model, data, progress=False)
    return quantize(model, table), table


def _index(model):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    return inits, producer


def test_every_conv_and_gemm_input_is_dequantized(cnn_model, cnn_data):
    q, _ = _quantized(cnn_model, cnn_data)
    inits, producer = _index(q)
    for node in q.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            for i in (0, 1):
                assert producer[node.input[i]].op_type == "DequantizeLinear", (node.name, i)
            if len(node.input) > 2:
                assert node.input[2] in inits and inits[node.input[2]].dtype == np.float32  # float bias
    for node in q.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[node.input[2]]
            assert zp.dtype == np.int8 and not zp.any()
            assert (inits[node.input[1]] > 0).all()


def test_weights_per_output_channel_match_numpy(cnn_model, cnn_data):
    q, _ = _quantized(cnn_model, cnn_data)
    inits, producer = _index(q)
    folded_w = None
    for node in q.graph.node:
        if node.name == "conv2":
            dq = producer[node.input[1]]
            assert onnx.helper.get_attribute_value(dq.attribute[0]) == 0
            qw, scale = inits[dq.input[0]], inits[dq.input[1]]
            folded_w = _index(cnn_model)[0]["w2"]  # conv2 has no BN: its weights are unchanged
        if node.name == "fc":
            fc_dq = producer[node.input[1]]
            assert inits[fc_dq.input[1]].shape == (4,)  # transB=1: output channels on axis 0
    expected = np.abs(folded_w).reshape(8, -1).max(axis=1) / 127
    np.testing.assert_allclose(scale, expected, rtol=1e-6)
    assert qw.dtype == np.int8
    np.testing.assert_array_equal(qw, np.clip(np.rint(folded_w / expected[:, None, None, None]), -127, 127))


def test_residual_add_quantizes_only_the_skip_input(cnn_model, cnn_data):
    q, table = _quantized(cnn_model, cnn_data)
    _, producer = _index(q)
    add = next(n for n in q.graph.node if n.name == "residual_add")
    assert add.input[0] == "c2"  # straight from conv2: TensorRT fuses conv + add
    assert producer[add.input[1]].op_type == "DequantizeLinear"
    scale = next(t for t in q.graph.initializer if t.name == "r1_scale")
    assert numpy_helper.to_array(scale) == pytest.approx(table["r1"].amax / 127)
    # r1 feeds conv2 and the add: one shared Q/DQ pair
    assert sum(1 for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r1") == 1


def test_quantized_model_runs_and_stays_close(cnn_model, cnn_data):
    q, _ = _quantized(cnn_model, cnn_data)
    ref = OrtRunner(cnn_model).infer({"input": cnn_data})
    got = OrtRunner(q).infer({"input": cnn_data})
    report = compare_outputs(ref, got)
    assert 0.98 < report.outputs[0].cosine < 1.0  # quantized (not identical) and faithful
    assert report


def test_matmul_weight_axis_is_output_columns():
    model = make_matmul()
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    q, _ = _quantized(model, x)
    inits, producer = _index(q)
    mm = next(n for n in q.graph.node if n.op_type == "MatMul")
    dq = producer[mm.input[1]]
    assert onnx.helper.get_attribute_value(dq.attribute[0]) == 1
    w = _index(model)[0]["W"]
    np.testing.assert_allclose(inits[dq.input[1]], np.abs(w).max(axis=0) / 127, rtol=1e-6)


def test_table_for_another_model_is_refused(cnn_model, cnn_data):
    table = calibrate(make_cnn(seed=5), cnn_data, progress=False)
    with pytest.raises(QuantizationError, match="another model"):
        quantize(cnn_model, table)
    assert quantize(cnn_model, table, force=True).graph.node  # same tensor names: allowed when forced


def test_missing_range_is_a_clear_error(cnn_model):
    table = CalibrationTable({}, "minmax", "x" * 64)
    with pytest.raises(QuantizationError, match="no calibrated range for tensor 'input'"):
        quantize(cnn_model, table, force=True)


def test_absurd_range_leaves_node_in_float(cnn_model, cnn_data):
    table = calibrate(cnn_model, cnn_data, progress=False)
    ranges = dict(table.ranges)
    ranges["r1"] = TensorRange("r1", 0.0, MAX_ACTIVATION_AMAX * 10, "minmax", 1)
    q = quantize(cnn_model, CalibrationTable(ranges, table.method, table.model_sha256, table.samples))
    _, producer = _index(q)
    conv2 = next(n for n in q.graph.node if n.name == "conv2")
    assert conv2.input[0] == "r1" and conv2.input[1] == "w2"
    conv1 = next(n for n in q.graph.node if n.name == "conv1")
    assert producer[conv1.input[0]].op_type == "DequantizeLinear"


def test_old_opset_is_upgraded(cnn_data):
    model = make_cnn(opset=11)
    q, _ = _quantized(model, cnn_data)
    assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 13


def test_scale_math():
    p = activation_params(6.0)
    assert p.scale == np.float32(6.0 / 127) and p.zero_point == 0
    assert activation_params(0.0).scale > 0
    w = np.array([[0.0, 0.0], [1.27, -2.54]], np.float32)
    wp = weight_params(w, 0)
    np.testing.assert_allclose(wp.scale, [1.0, 0.02])
    assert weight_params(w, None).scale.shape == ()


def test_already_quantized_model_is_refused(cnn_model, cnn_data):
    table = calibrate(cnn_model, cnn_data, progress=False)
    q = quantize(cnn_model, table)
    with pytest.raises(QuantizationError, match="already holds .* pass the fp32 model"):
        quantize(q, table, force=True)
