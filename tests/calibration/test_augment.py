import numpy as np
import onnx
from onnx import TensorProto, helper

from trtq.calibration import calibrate
from trtq.calibration.augment import augment, row_step


def test_row_step():
    assert row_step((None, 3, 100, 100), 8, None) == 1
    assert row_step((None, 3, 100, 100), 8, 10**9) == 1
    assert row_step((None, 3, 100, 100), 8, 24_000) == 10  # 240000 values per batch / 24000
    assert row_step((None, 3, 4, 100), 8, 10) == 4  # never more than the rows there are
    assert row_step((None, 100), 8, 10) == 1  # 2-D tensors are never subsampled
    assert row_step((None, None, 100), 8, 10) == 1  # unknown dims: keep everything


def test_augmented_graph_outputs_only_statistics(cnn_model):
    graph, probes = augment(cnn_model, ["input", "r1"], values=True, batch_size=8, max_elements=64)
    onnx.checker.check_model(graph)
    outputs = {o.name for o in graph.graph.output}
    assert "logits" not in outputs
    for p in probes:
        assert {p.lo, p.hi, p.total, p.values} <= outputs
    assert probes[1].row_step == 8 and probes[1].values != "r1"
    stats_only, probes = augment(cnn_model, ["r1"], values=False, batch_size=8, max_elements=64)
    assert {o.name for o in stats_only.graph.output} == {probes[0].lo, probes[0].hi, probes[0].total}


def test_float16_tensors_are_calibrated_in_float32():
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 3, 40, 40])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 3, 40, 40])],
                              [onnx.numpy_helper.from_array(np.array(1000, np.float16), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).uniform(-30, 30, (16, 3, 40, 40)).astype(np.float16)
    for method in ("minmax", "entropy"):
        table = calibrate(model, x, method, progress=False, max_elements=500)
        # values reach 30000: their fp16 sum would overflow, the float32 one does not
        assert 25_000 < table["y"].amax <= 30_000.0
