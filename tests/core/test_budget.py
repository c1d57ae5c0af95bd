"""The memory budget (--max-memory): sizing from the data's shape, and passes that give the
same result whatever the budget (one tensor per run, one sample per run)."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import make_cnn, make_matmul
from trtq.calibration import calibrate
from trtq.core.budget import MemoryBudget, current_budget, memory_budget, parse_memory, run_sliced
from trtq.core.errors import DataError
from trtq.deploy.runner import OrtRunner
from trtq.quantize.rounding import DEPTHWISE_POSITIONS, _patches, _positions, gptq_weights

TINY = MemoryBudget(limit=1)  # every run one sample, every tensor fetched on its own
HUGE = MemoryBudget(limit=1 << 40)


@pytest.mark.parametrize("text, value", [("2GB", 2 << 30), ("512MB", 512 << 20), ("1.5 GiB", 3 << 29),
                                         ("64m", 64 << 20), (100 << 20, 100 << 20)])
def test_memory_sizes_parse(text, value):
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["two gigs", "3XB", "-1GB", "1KB"])
def test_bad_memory_sizes_are_refused(text):
    with pytest.raises(DataError):
        parse_memory(text)


def _fully_convolutional() -> onnx.ModelProto:
    """x (N, 3, H, W) -> Conv 3->16 -> Relu -> depthwise 5x5 stride 2 -> Conv 16->8: dynamic H x W."""
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("w1", TensorProto.FLOAT, [16, 3, 3, 3], rng.normal(0, .3, 432).astype(np.float32)),
             helper.make_tensor("w2", TensorProto.FLOAT, [16, 1, 5, 5], rng.normal(0, .3, 400).astype(np.float32)),
             helper.make_tensor("w3", TensorProto.FLOAT, [8, 16, 1, 1], rng.normal(0, .3, 128).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="dw", group=16, strides=[2, 2], pads=[2, 2, 2, 2]),
             helper.make_node("Conv", ["c2", "w3"], ["y"], name="pw")]
    graph = helper.make_graph(nodes, "fcn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, None, None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_sizes_follow_the_datas_shape():
    model = _fully_convolutional()
    small = MemoryBudget().tensor_bytes(model, {"x": (3, 64, 64)})
    large = MemoryBudget().tensor_bytes(model, {"x": (3, 128, 128)})
    assert small["c1"] == 16 * 64 * 64 * 4 and small["c2"] == 16 * 32 * 32 * 4
    assert all(large[k] == 4 * small[k] for k in small)
    budget = MemoryBudget(limit=32 << 20)
    assert budget.rows(budget.ort_bytes(large), 64) < budget.rows(budget.ort_bytes(small), 64)
    feed = {"x": np.zeros((64, 3, 128, 128), np.float32)}
    assert budget.rows_for(model, feed) == budget.rows(budget.ort_bytes(large), 64)
    assert budget.rows_for(model, feed, ["c1"]) < budget.rows_for(model, feed)


def test_rows_and_groups():
    budget = MemoryBudget(limit=1000)
    assert budget.rows(300, 8) == 3 and budget.rows(5000, 8) == 1 and budget.rows(1, 8) == 8
    assert budget.groups({"a": 200, "b": 200, "c": 400, "d": 50, "e": 60}) == [["a", "b"], ["c", "d"], ["e"]]
    assert TINY.groups({"a": 1, "b": 1}) == [["a"], ["b"]]


def test_the_budget_is_scoped():
    default = current_budget().limit
    with memory_budget("64MB") as b:
        assert current_budget() is b and b.limit == 64 << 20
    assert current_budget().limit == default


def test_sliced_runs_join_or_fall_back():
    feed = {"x": np.arange(10, dtype=np.float32)[:, None]}
    calls = []

    def per_sample(f):
        calls.append(len(f["x"]))
        return [f["x"] * 2]

    np.testing.assert_array_equal(run_sliced(per_sample, feed, 3)[0], feed["x"] * 2)
    assert calls == [3, 3, 3, 1]
    # An output without the batch axis cannot be joined: the whole feed runs at once.
    assert run_sliced(lambda f: [np.float32(f["x"].sum())], feed, 3)[0] == 45


def test_patches_match_a_direct_im2col():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 9, 7)).astype(np.float32)
    geometry = ((3, 2), [2, 1], [1, 0, 2, 1], [1, 2])  # kernel, strides, pads (t, l, b, r), dilations
    idx = _positions(x.shape, geometry, rng, most=10)
    got = _patches(x, geometry, idx)  # [C, kk, N * M]
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = geometry
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ow = (7 + pl + pr - dw * (kw - 1) - 1) // sw + 1
    want = np.empty_like(got)
    for n in range(2):
        for j, p in enumerate(idx):
            oy, ox = p // ow * sh, p % ow * sw
            window = xp[n, :, oy:oy + dh * (kh - 1) + 1:dh, ox:ox + dw * (kw - 1) + 1:dw]
            want[:, :, n * len(idx) + j] = window.reshape(3, kh * kw)
    np.testing.assert_array_equal(got, want)


def test_calibration_table_is_the_same_under_any_budget():
    model, data = _fully_convolutional(), np.random.default_rng(1).normal(size=(12, 3, 24, 24)).astype(np.float32)
    for method in ("minmax", "entropy"):
        tables = [calibrate(model, data, method, batch_size=8, progress=False, max_elements=None, budget=b)
                  for b in (TINY, HUGE)]
        assert tables[0].ranges == tables[1].ranges, method


def test_a_static_batch_runs_whole_batches_under_any_budget():
    model = make_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4  # exported with batch 4
    data = np.random.default_rng(1).normal(size=(12, 3, 8, 8)).astype(np.float32)
    assert TINY.rows_for(model, {"input": data[:4]}) == 4
    tables = [calibrate(model, data, "minmax", batch_size=4, progress=False, budget=b) for b in (TINY, HUGE)]
    assert tables[0].ranges == tables[1].ranges


@pytest.mark.parametrize("make", [_fully_convolutional, make_cnn, make_matmul])
def test_gptq_statistics_do_not_depend_on_the_budget(make):
    model = make()
    shape = {"fcn": (3, 20, 20), "tiny_cnn": (3, 8, 8), "tiny_matmul": (6,)}[model.graph.name]
    data = np.random.default_rng(2).normal(size=(24, *shape)).astype(np.float32)
    tiny, huge = (gptq_weights(model, data, samples=24, progress=False, budget=b) for b in (TINY, HUGE))
    assert tiny.weights.keys() == huge.weights.keys()
    for a, b in zip(tiny.layers, huge.layers):
        assert (a.node, a.rows) == (b.node, b.rows)
        assert a.sqnr_db == pytest.approx(b.sqnr_db, abs=1e-3)
    for k in tiny.weights:
        assert np.mean(tiny.weights[k] == huge.weights[k]) > 0.99


def test_depthwise_layers_sample_fewer_positions():
    model = _fully_convolutional()
    data = np.random.default_rng(2).normal(size=(8, 3, 64, 64)).astype(np.float32)
    rows = {r.node: r.rows for r in gptq_weights(model, data, samples=8, progress=False).layers}
    assert rows.get("dw", 8 * DEPTHWISE_POSITIONS) == 8 * DEPTHWISE_POSITIONS


def test_runner_outputs_are_the_same_in_slices():
    model = _fully_convolutional()
    data = np.random.default_rng(3).normal(size=(6, 3, 16, 16)).astype(np.float32)
    runner = OrtRunner(model)
    with memory_budget(1 << 40):
        whole = runner.infer({"x": data})["y"]
    with memory_budget("16MB") as b:
        b.limit = 1  # below what the parser accepts: one sample per run
        sliced = runner.infer({"x": data})["y"]
    np.testing.assert_allclose(sliced, whole, rtol=1e-5, atol=1e-6)


def test_quantize_reports_time_and_memory_per_stage(tmp_path, cnn_path, cnn_data):
    from trtq.pipeline import quantize_model

    np.save(tmp_path / "calib.npy", cnn_data)
    result = quantize_model(tmp_path / "out", onnx=cnn_path, calib_data=tmp_path / "calib.npy", progress=False,
                            max_memory="64MB")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    stages = [s["stage"] for s in report["time"]["stages"]]
    # The CNN's classifier is a linear layer: SmoothQuant's and GPTQ's statistics come from the calibration run.
    assert stages[:3] == ["source (export, data)", "SmoothQuant + calibration + GPTQ statistics", "GPTQ"]
    assert "fidelity evaluation" in stages and all(s["peak_rss_mb"] > 0 for s in report["time"]["stages"])
    assert [s.name for s in result.stages][-1] == "writing"
    with pytest.raises(DataError):
        quantize_model(tmp_path / "bad", onnx=cnn_path, calib_data=tmp_path / "calib.npy", max_memory="lots")
    assert not (tmp_path / "bad").exists()
