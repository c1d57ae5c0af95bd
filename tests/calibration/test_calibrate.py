import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trtq.calibration import calibrate, float_activations
from trtq.core import model_sha256
from trtq.core.errors import CalibrationError, DataError, ModelError


def _relu_scale_model():
    """y = relu(x) * 2: ranges are easy to compute by hand."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_ranges_match_numpy_and_do_not_depend_on_batch_size():
    model = _relu_scale_model()
    x = np.random.default_rng(0).normal(0, 3, (23, 5)).astype(np.float32)
    t1 = calibrate(model, x, batch_size=1, progress=False)
    t7 = calibrate(model, x, batch_size=7, progress=False)
    assert t1 == t7
    assert (t1["x"].lo, t1["x"].hi) == (float(x.min()), float(x.max()))
    assert (t1["r"].lo, t1["r"].hi) == (0.0, float(x.max()))
    assert t1["y"].hi == pytest.approx(2 * float(x.max()))
    assert t1.samples == 23 and t1.model_sha256 == model_sha256(model)
    assert "two" not in t1


def test_calibrates_every_float_activation(cnn_model, cnn_data):
    table = calibrate(cnn_model, cnn_data, samples=16, progress=False)
    assert set(table.ranges) == set(float_activations(cnn_model))
    assert {"input", "c1", "bn1", "r1", "sum", "logits"} <= set(table.ranges)
    assert table.samples == 16


def test_non_finite_activation_names_tensor_and_sample():
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["l"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("l", TensorProto.FLOAT, ["N", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.ones((6, 2), np.float32)
    x[4, 1] = 0.0  # log(0) = -inf
    with pytest.raises(CalibrationError, match=r"'l' holds Inf.*sample 4"):
        calibrate(model, x, batch_size=3, progress=False)


def test_bad_model_and_data(tmp_path, cnn_data):
    with pytest.raises(ModelError, match="does not exist"):
        calibrate(tmp_path / "nope.onnx", cnn_data, progress=False)
    (tmp_path / "corrupt.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="not a readable ONNX model|not an ONNX model"):
        calibrate(tmp_path / "corrupt.onnx", cnn_data, progress=False)
    with pytest.raises(DataError, match="axis 2 must be 8"):
        calibrate(_cnn(), np.zeros((2, 3, 9, 9), np.float32), progress=False)


def test_external_data_outside_model_folder_is_refused(tmp_path, cnn_model):
    from onnx import external_data_helper

    model = onnx.ModelProto()
    model.CopyFrom(cnn_model)
    tensor = model.graph.initializer[0]
    external_data_helper.set_external_data(tensor, location="../secret.bin")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="outside the model's folder"):
        calibrate(tmp_path / "m" / "model.onnx", np.zeros((1, 3, 8, 8), np.float32), progress=False)


def _cnn():
    from tests.conftest import make_cnn

    return make_cnn()


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse", "auto"])
def test_every_method_is_deterministic_to_the_byte(tmp_path, cnn_model, cnn_data, method):
    a = calibrate(cnn_model, cnn_data, method, batch_size=8, progress=False)
    b = calibrate(cnn_model, cnn_data, method, batch_size=8, progress=False)
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert all(r.amax > 0 for r in a.ranges.values())


def test_minmax_is_exact_even_when_histograms_subsample(cnn_model, cnn_data):
    exact = calibrate(cnn_model, cnn_data, "minmax", max_elements=None, progress=False)
    sampled = calibrate(cnn_model, cnn_data, "minmax", max_elements=64, progress=False)
    assert exact == sampled
    ent_exact = calibrate(cnn_model, cnn_data, "entropy", max_elements=None, progress=False)
    ent_sampled = calibrate(cnn_model, cnn_data, "entropy", max_elements=64, progress=False)
    for name, r in ent_exact.ranges.items():
        assert 0 < ent_sampled[name].amax <= exact[name].amax
        assert r.amax <= exact[name].amax


def _unary_model(op_nodes, out="y"):
    graph = helper.make_graph(op_nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_nan_inside_the_network_names_tensor_and_sample(method):
    model = _unary_model([helper.make_node("Sqrt", ["x"], ["y"])])  # sqrt(-1) = NaN
    x = np.ones((9, 4), np.float32)
    x[7, 2] = -1.0
    with pytest.raises(CalibrationError, match=r"'y' holds NaN.*sample 7"):
        calibrate(model, x, method, batch_size=4, progress=False)


def test_huge_finite_values_are_not_mistaken_for_inf():
    model = _unary_model([helper.make_node("Mul", ["x", "big"], ["y"])])
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1e38, np.float32), "big"))
    x = np.full((4, 4), 3.0, np.float32)  # y = 3e38: finite, but its sum overflows
    table = calibrate(model, x, "minmax", progress=False)
    assert table["y"].hi == pytest.approx(3e38, rel=1e-6)


def test_dataloader_style_items(cnn_model, cnn_data):
    items = [(cnn_data[i:i + 10], np.zeros(10)) for i in range(0, 40, 10)]
    from_pairs = calibrate(cnn_model, iter(items), progress=False)
    from_arrays = calibrate(cnn_model, cnn_data, batch_size=10, progress=False)
    assert from_pairs == from_arrays


def test_torch_dataloader(cnn_model, cnn_data):
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(cnn_data)), batch_size=16)
    table = calibrate(cnn_model, loader, progress=False)
    assert table.samples == 40


class _RecordingTap:
    """A tap that keeps what it is handed: the runs' sizes and the concatenated values."""

    until = None

    def __init__(self, tensors):
        self.tensors, self.counts, self.firsts, self.values = tuple(tensors), [], [], {t: [] for t in tensors}

    def update(self, first, count, values):
        self.counts.append(count)
        self.firsts.append(first)
        for t in self.tensors:
            self.values[t].append(np.array(values[t]))


def test_taps_get_every_sample_once_and_a_tight_budget_changes_nothing_but_the_runs(cnn_model, cnn_data):
    """A tap sees each sample exactly once, in stream order, whole; under a budget that allows
    one sample per run it gets one-sample runs and the same values, and the table is the same."""
    from trtq.core.budget import memory_budget

    tensors = float_activations(cnn_model)[-2:]
    wide, tight = _RecordingTap(tensors), _RecordingTap(tensors)
    with memory_budget(1 << 40):
        table = calibrate(cnn_model, cnn_data, batch_size=8, progress=False, taps=[wide])
    with memory_budget("16MB") as b:
        b.limit = 1  # below what the parser accepts: one sample per run
        tight_table = calibrate(cnn_model, cnn_data, batch_size=8, progress=False, taps=[tight])
    n = len(cnn_data)
    assert sum(wide.counts) == sum(tight.counts) == n and set(tight.counts) == {1} and max(wide.counts) == 8
    assert tight.firsts == list(range(n))
    for t in tensors:
        np.testing.assert_array_equal(np.concatenate(wide.values[t]), np.concatenate(tight.values[t]))
    assert {k: (r.lo, r.hi) for k, r in table.ranges.items()} == {k: (r.lo, r.hi) for k, r in tight_table.ranges.items()}
