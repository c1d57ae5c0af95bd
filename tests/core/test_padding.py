"""Padded token data: statistics passes run samples longest first and cut each batch after its
longest sample (trtq.core.readers.Padding), so padding never reaches calibration or SmoothQuant."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.calibration import calibrate
from trtq.core.errors import CalibrationError
from trtq.core.onnx_model import InputSpec, input_specs
from trtq.core.readers import Padding, by_length, length_batches

PAD = 0


def _token_model(seq="T", nan_token: int | None = None) -> onnx.ModelProto:
    """ids, mask (N, T) -> embedding (the padding token's row is 50: an outlier only padding
    has) -> MatMul -> masked output (N, T, 4)."""
    rng = np.random.default_rng(0)
    table = rng.normal(0, 1, (16, 8)).astype(np.float32)
    table[PAD] = 50.0
    if nan_token is not None:
        table[nan_token] = np.nan
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("MatMul", ["emb", "w"], ["proj"], name="proj"),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "axis"], ["mask3"]),
             helper.make_node("Mul", ["proj", "mask3"], ["y"])]
    graph = helper.make_graph(
        nodes, "tokens",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", seq]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", seq])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", seq, 4])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(rng.normal(0, 1, (8, 4)).astype(np.float32), "w"),
         numpy_helper.from_array(np.array([-1], np.int64), "axis")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _tokens(lengths, t=12, seed=1):
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), t), PAD, np.int64)
    mask = np.zeros((len(lengths), t), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1, 15, n)  # 15: kept for the NaN test
        mask[i, :n] = 1
    return {"ids": ids, "attention_mask": mask}


def test_padding_is_found_only_on_an_open_sequence_axis():
    specs = [InputSpec("ids", np.dtype(np.int64), ("N", "T")), InputSpec("attention_mask", np.dtype(np.int64), ("N", "T")),
             InputSpec("pixels", np.dtype(np.float32), ("N", 3, 8, 8))]
    padding = Padding.of(specs)
    assert padding == Padding("attention_mask", ("ids", "attention_mask"))
    fixed = [InputSpec("ids", np.dtype(np.int64), ("N", 12)), InputSpec("attention_mask", np.dtype(np.int64), ("N", 12))]
    assert Padding.of(fixed) is None  # the model wants all 12 positions
    assert Padding.of(specs[:1]) is None  # no mask: nothing says what is padding
    unlinked = [InputSpec("ids", np.dtype(np.int64), ("N", "s0")), InputSpec("attention_mask", np.dtype(np.int64), ("N", "s1"))]
    assert Padding.of(unlinked).inputs == ("ids", "attention_mask")  # two symbols for one axis: both cut


def test_lengths_order_and_trim_cut_trailing_padding_only():
    data = _tokens([3, 7, 0, 5])
    padding = Padding.of(input_specs(_token_model()))
    assert padding.lengths(data).tolist() == [3, 7, 0, 5]
    assert padding.order(data).tolist() == [1, 3, 0, 2]
    cut = padding.trim({k: v[[0, 3]] for k, v in data.items()})
    assert cut["ids"].shape == cut["attention_mask"].shape == (2, 5)
    left = {k: v[:, ::-1].copy() for k, v in data.items()}  # left padding: the tokens end the row
    assert padding.trim(left)["ids"].shape == (4, 12)
    reordered, _, index = by_length(data, input_specs(_token_model()))
    assert index.tolist() == [1, 3, 0, 2]
    assert np.array_equal(reordered["ids"], data["ids"][index])


def test_length_batches_run_longest_first_and_keep_every_sample():
    data = _tokens([2, 9, 4, 9, 1, 6, 3])
    batches, index = length_batches(data, input_specs(_token_model()), batch_size=3)
    got = list(batches)
    assert [start for start, _ in got] == [0, 3, 6]
    assert [b["ids"].shape[1] for _, b in got] == [9, 4, 1]
    assert sorted(index.tolist()) == list(range(7))
    assert length_batches(data, input_specs(_token_model(seq=12)), batch_size=3) is None  # fixed length


def test_calibration_runs_equal_lengths_together_and_cuts_their_padding():
    model = _token_model()
    lengths = [3, 7, 5, 3, 7, 5]  # longest first, in pairs: every batch of 2 has one length
    data = _tokens(lengths)
    table = calibrate(model, data, batch_size=2, progress=False)
    # Each sample alone, at its own length: the ranges of the tokens and nothing else.
    alone = [calibrate(model, {k: v[i:i + 1, :n] for k, v in data.items()}, progress=False)
             for i, n in enumerate(lengths)]
    for name in ("emb", "proj", "y"):
        assert table[name].hi == max(t[name].hi for t in alone)
        assert table[name].lo == min(t[name].lo for t in alone)
    assert table["emb"].hi < 50  # the padding token's outlier row is not calibrated for
    assert table.samples == 6
    # In data order, batches mix lengths and keep the shorter samples' padding; a
    # fixed-length model gets every position.
    assert calibrate(_token_model(seq=12), data, batch_size=2, progress=False)["emb"].hi == 50


def test_a_non_finite_activation_names_the_sample_in_the_data_order():
    model = _token_model(nan_token=15)
    data = _tokens([2, 9, 4, 5])
    data["ids"][2, 1] = 15  # sample 2 (the third longest, run third) reads the NaN row
    with pytest.raises(CalibrationError, match=r"'emb' holds NaN.*sample 2\b"):
        calibrate(model, data, batch_size=1, progress=False)


def test_smoothquant_statistics_run_on_cut_batches():
    from trtq.quantize.smoothquant import _statistics

    model = _token_model()
    lengths = [3, 7, 5, 3, 7, 5]
    data = _tokens(lengths)
    feed, padding, _ = by_length(data, input_specs(model))
    stats = _statistics(model, ["emb"], feed, 2, 64, False, padding)["emb"]
    table = numpy_helper.to_array(model.graph.initializer[0])
    tokens = table[data["ids"][data["attention_mask"] == 1]]
    assert np.allclose(stats.ch_max, np.abs(tokens).max(axis=0))
    assert np.allclose(stats.ch_mean, np.abs(tokens).mean(axis=0))
    whole = _statistics(model, ["emb"], data, 2, 64, False)["emb"]
    assert whole.ch_max.max() == 50


def _pooled_model(out_dim=4) -> onnx.ModelProto:
    """The token model, its masked output summed over the sequence: (N, 4), no sequence axis."""
    model = _token_model()
    g = model.graph
    g.node.append(helper.make_node("ReduceSum", ["y", "seq_axis"], ["pooled"], keepdims=0))
    g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "seq_axis"))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", out_dim]))
    return model


def test_runs_to_pooled_outputs_cut_padding_and_keep_the_data_order(monkeypatch):
    from trtq.deploy import OrtRunner, run_all
    from trtq.deploy.evaluate import FidelityEvaluator

    data = _tokens([2, 12, 4, 9, 1, 6, 3, 5, 7])
    assert Padding.of_outputs(_pooled_model()) is not None
    assert Padding.of_outputs(_pooled_model("C")) is None  # an open output dim: run as given
    assert Padding.of_outputs(_token_model()) is None  # a per-token output keeps its length
    whole = run_all(OrtRunner(_pooled_model("C")), data, batch_size=3)["pooled"]
    runner = OrtRunner(_pooled_model())
    seen = []
    run = runner._session.run
    monkeypatch.setattr(runner._session, "run", lambda names, feed: seen.append(feed["ids"].shape[1]) or run(names, feed))
    cut = run_all(runner, data, batch_size=3)["pooled"]
    assert seen == [12, 6, 3]  # longest first, each batch cut after its longest sample
    np.testing.assert_allclose(cut, whole, rtol=1e-6)
    evaluator = FidelityEvaluator(_pooled_model(), data, batch_size=3)
    assert evaluator.order.tolist() == [1, 3, 8, 5, 7, 2, 6, 0, 4]
    np.testing.assert_allclose(evaluator.outputs(_pooled_model())["pooled"], whole, rtol=1e-6)
    assert evaluator.head(4).order.tolist() == [1, 3, 2, 0]
    assert evaluator(_pooled_model())["cosine"] == pytest.approx(1.0)
