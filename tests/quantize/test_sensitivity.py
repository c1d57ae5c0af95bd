"""Sensitivity analysis and the precision search, on the tiny CNN."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from trtq.calibration import calibrate
from trtq.deploy.evaluate import FidelityEvaluator, Target
from trtq.quantize.precision import Precision
from trtq.quantize.sensitivity import FP8_RUNGS, RUNGS, analyze, layer_groups, search_precision
from tests.conftest import make_cnn
from trtq.cli import main
from trtq.core.errors import QuantizationError, TrtqError


@pytest.fixture(scope="module")
def setup():
    model = make_cnn()
    rng = np.random.default_rng(5)
    calib, held = (rng.standard_normal((48, 3, 8, 8)).astype(np.float32) for _ in range(2))
    table = calibrate(model, {"input": calib}, "minmax", progress=False)
    return model, table, FidelityEvaluator(model, {"input": held}, batch_size=16)


def test_groups_follow_tensorrt_fusion():
    groups = {g.name: g.nodes for g in layer_groups(make_cnn())}
    assert groups == {"conv1": ("conv1",), "conv2": ("conv2", "residual_add"), "fc": ("fc",)}


def test_analysis_ranks_groups_and_is_deterministic(setup):
    model, table, evaluate = setup
    first = analyze(model, table, evaluate, progress=False)
    again = analyze(model, table, evaluate, progress=False)
    assert first.to_json() == again.to_json()
    losses = [g.loss() for g in first.groups]
    assert losses == sorted(losses, reverse=True)
    for g in first.groups:  # one group in int8 is at least as close to fp32 as all of them
        assert g.only["cosine"] >= first.baseline["cosine"] - 1e-9
        assert set(g.all_but) == {"cosine", "min_cosine", "sqnr_db", "top1"}


def test_search_moves_groups_in_ranking_order_until_the_target_holds(setup):
    model, table, evaluate = setup
    report = analyze(model, table, evaluate, reverse=False, progress=False)
    all_int8 = report.baseline["cosine"]
    # A target just above all-int8: met by taking the most sensitive group(s) out.
    target = Target("cosine", all_int8 + (1 - all_int8) / 3)
    res = search_precision(model, table, evaluate, target.met, ranking=report.ranking(), target=str(target),
                           progress=False)
    assert res.met and res.metrics["cosine"] >= target.threshold
    k = len(res.moved)
    assert 1 <= k and list(res.moved) == [g.name for g in report.ranking()[:k]]
    for step in res.steps:  # every shorter prefix of the ranking was tried and missed
        if step.precision is Precision.FP16 and 0 < step.moved < k:
            assert not target.met(step.metrics)
    assert res.to_json()["moved_groups"] == list(res.moved)
    assert 0 < res.mixed.int8_mac_share < 1


def test_search_stops_when_the_target_is_out_of_reach(setup):
    model, table, evaluate = setup
    res = search_precision(model, table, evaluate, Target("cosine", 1.5).met, target="cosine>=1.5",
                           progress=False)
    assert not res.met
    # all int8, then every group in fp16, then every group in fp32: no pointless scan in between
    assert [(s.moved, s.precision) for s in res.steps][1:] == [(3, Precision.FP16), (3, Precision.FP32)]


@pytest.mark.parametrize("text, metric, value", [("top1>=0.97", "top1", 0.97), (" cosine >= 0.999 ", "cosine", 0.999),
                                                 ("sqnr>=20", "sqnr_db", 20.0)])
def test_targets_parse(text, metric, value):
    assert Target.parse(text) == Target(metric, value)


def test_bad_target_is_a_clear_error():
    with pytest.raises(TrtqError, match="write METRIC>=VALUE"):
        Target.parse("accuracy > 3")


def test_cli_plan_flags_and_sensitivity(tmp_path):
    import onnx

    onnx.save(make_cnn(), tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "c.npy", rng.standard_normal((32, 3, 8, 8)).astype(np.float32))
    np.save(tmp_path / "e.npy", rng.standard_normal((32, 3, 8, 8)).astype(np.float32))
    runner = CliRunner()
    common = ["--onnx", str(tmp_path / "m.onnx"), "--calib-data", str(tmp_path / "c.npy"),
              "--eval-data", str(tmp_path / "e.npy"), "--no-progress"]
    res = runner.invoke(main, ["quantize", *common, "--fp16", "fc", "--fp32", "conv1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    precision = json.loads((tmp_path / "o" / "precision.json").read_text())
    by_node = {n["node"]: n["precision"] for n in precision["nodes"]}
    assert by_node["fc"] == "fp16" and by_node["conv1"] == "fp32" and by_node["conv2"] == "int8"
    assert (tmp_path / "o" / "model.mixed.onnx").exists() and not (tmp_path / "o" / "model.int8.onnx").exists()
    report = (tmp_path / "o" / "report.md").read_text()
    assert "| all int8 " in report and "| all fp16 |" in report and "| mixed |" in report
    assert "| `fc` | Gemm | fp16 | fp16 | `fc` |" in report
    res = runner.invoke(main, ["quantize", *common, "--fp16", "re:(", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "bad regular expression" in res.stderr and not (tmp_path / "bad").exists()
    res = runner.invoke(main, ["sensitivity", str(tmp_path / "m.onnx"), "--calib-data", str(tmp_path / "c.npy"),
                               "--eval-data", str(tmp_path / "e.npy"), "--no-progress", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert [g["group"] for g in data["groups"]] and (tmp_path / "s" / "sensitivity.png").stat().st_size > 1000
    res = runner.invoke(main, ["sensitivity", str(tmp_path / "m.onnx"), "--calib-data", str(tmp_path / "c.npy"),
                               "--eval-data", str(tmp_path / "e.npy"), "--no-gptq", "--no-progress",
                               "--out", str(tmp_path / "s2")])
    assert res.exit_code == 0, res.output
    nearest = json.loads((tmp_path / "s2" / "sensitivity.json").read_text())
    assert nearest["all_int8"] != data["all_int8"]  # the GPTQ-rounded weights change what int8 costs
    assert all("only_fp8" not in g for g in data["groups"])
    res = runner.invoke(main, ["sensitivity", str(tmp_path / "m.onnx"), "--calib-data", str(tmp_path / "c.npy"),
                               "--eval-data", str(tmp_path / "e.npy"), "--gpu", "hopper", "--no-progress",
                               "--out", str(tmp_path / "s3")])
    assert res.exit_code == 0, res.output
    assert "only this fp8" in res.output
    ladder = json.loads((tmp_path / "s3" / "sensitivity.json").read_text())
    for g in ladder["groups"]:  # each group alone in fp8 too: E4M3 rounds differently from int8
        assert g["only_fp8"]["cosine"] != g["only_int8"]["cosine"] and 0.9 < g["only_fp8"]["cosine"] <= 1.0
    assert (tmp_path / "s3" / "sensitivity.png").stat().st_size > (tmp_path / "s" / "sensitivity.png").stat().st_size
    res = runner.invoke(main, ["sensitivity", str(tmp_path / "m.onnx"), "--calib-data", str(tmp_path / "c.npy"),
                               "--eval-data", str(tmp_path / "e.npy"), "--int4w", "--int4-block", "32", "--one-way",
                               "--no-progress", "--out", str(tmp_path / "s4")])
    assert res.exit_code == 0, res.output
    assert "int4w" in res.output
    int4 = {g["group"]: g for g in json.loads((tmp_path / "s4" / "sensitivity.json").read_text())["groups"]}
    # INT4 weights only where they apply (the Gemm), and coarser than int8 there.
    assert [k for k, g in int4.items() if "only_int4w" in g] == ["fc"]
    assert int4["fc"]["only_int4w"]["cosine"] < int4["fc"]["only_int8"]["cosine"]


def test_missing_matplotlib_fails_before_any_work(tmp_path, monkeypatch):
    import onnx

    import trtq.pipeline.run
    from trtq.core.errors import DependencyError

    def missing(module, extra):
        raise DependencyError(f"'{module}' is not installed; install it with: pip install 'trtq[{extra}]'")

    monkeypatch.setattr(trtq.pipeline.run, "require", missing)
    onnx.save(make_cnn(), tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", np.zeros((8, 3, 8, 8), np.float32))
    res = CliRunner().invoke(main, ["quantize", "--onnx", str(tmp_path / "m.onnx"), "--calib-data",
                                    str(tmp_path / "c.npy"), "--target", "cosine>=0.99", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "pip install 'trtq[models]'" in res.stderr
    assert not (tmp_path / "o").exists()


def test_refinement_puts_back_groups_the_target_does_not_need(setup):
    model, table, _ = setup
    groups = {g.name: g for g in layer_groups(model)}

    def evaluate(candidate):  # only the classifier matters: the target holds iff it is out of int8
        producer = {o: n.op_type for n in candidate.graph.node for o in n.output}
        fc = next(n for n in candidate.graph.node if n.name == "fc")
        return {"cosine": 0.9 if producer.get(fc.input[1]) == "DequantizeLinear" else 1.0}

    ranking = [groups["conv1"], groups["conv2"], groups["fc"]]  # a ranking that puts fc last
    target = Target("cosine", 0.95)
    coarse = search_precision(model, table, evaluate, target.met, ranking=ranking, progress=False, refine=False)
    assert coarse.moved == ("conv1", "conv2", "fc")
    fine = search_precision(model, table, evaluate, target.met, ranking=ranking, progress=False)
    assert fine.met and fine.moved == ("fc",)
    assert fine.mixed.int8_mac_share > coarse.mixed.int8_mac_share
    # One try per moved group, each kept if met; the last one alone would be all-int8, measured first.
    assert [s.moved for s in fine.steps[-2:]] == [2, 1]


def _fc_precision(candidate) -> str:
    """What the classifier computes in: its weight's DequantizeLinear input type, or the float type."""
    producer = {o: n for n in candidate.graph.node for o in n.output}
    inits = {i.name: i for i in candidate.graph.initializer}
    fc = next(n for n in candidate.graph.node if n.name == "fc")
    dq = producer.get(fc.input[1])
    if dq is not None and dq.op_type == "DequantizeLinear":
        return "fp8" if inits[dq.input[0]].data_type == onnx.TensorProto.FLOAT8E4M3FN else "int8"
    return "fp16" if inits[fc.input[1]].data_type == onnx.TensorProto.FLOAT16 else "fp32"


@pytest.mark.parametrize("goal, fp8, rungs, moved_to, fp8_runs", [
    (0.95, 0.99, FP8_RUNGS, "fp8", 3),  # fp8 is enough: the ladder stops there (bound, two refinements)
    (0.995, 0.99, FP8_RUNGS, "fp16", 2),  # fp8 is not: fp16, fp8 tried on the way (bound, refinement)
    (0.95, 0.8, FP8_RUNGS, "fp16", 1),  # fp8 worse than int8 everywhere: not tried per group
    (0.95, 0.99, RUNGS, "fp16", 0),  # no FP8 Tensor Cores: no fp8 rung
])
def test_the_ladder_puts_each_group_on_the_cheapest_rung_that_holds(setup, goal, fp8, rungs, moved_to, fp8_runs):
    model, table, _ = setup
    groups = {g.name: g for g in layer_groups(model)}
    seen = []

    def evaluate(candidate):  # only the classifier matters: int8 0.9, fp8 as given, fp16/fp32 1.0
        seen.append(_fc_precision(candidate))
        return {"cosine": {"int8": 0.9, "fp8": fp8}.get(seen[-1], 1.0)}

    ranking = [groups["conv1"], groups["conv2"], groups["fc"]]
    res = search_precision(model, table, evaluate, Target("cosine", goal).met, ranking=ranking, progress=False,
                           rungs=rungs)
    assert res.met and res.moved == ("fc",) and res.to_json()["moved_to"] == {"fc": moved_to}
    assert _fc_precision(res.mixed.model) == moved_to
    assert res.mixed.mac_share(Precision(moved_to)) == pytest.approx(groups["fc"].macs / sum(
        g.macs for g in groups.values()))
    assert seen.count("fp8") == fp8_runs, seen


def test_the_ladder_refuses_unknown_rungs(setup):
    model, table, _ = setup
    with pytest.raises(QuantizationError, match="rungs must be"):
        search_precision(model, table, lambda m: {"cosine": 0.0}, Target("cosine", 0.9).met, ranking=[],
                         progress=False, rungs=(Precision.INT8,))


def test_share_targets_demand_the_lower_confidence_bound():
    from trtq.deploy.evaluate import Target, wilson_lower_bound

    t = Target.parse("top1>=0.97")
    # 63 of 64 is 98.4% > 97%, but on 64 samples that is not evidence of 97%: the bound says no.
    assert t.met({"top1": 63 / 64}) and not t.met_with_margin({"top1": 63 / 64}, 64)
    assert t.met_with_margin({"top1": 1.0}, 64) and t.met_with_margin({"top1": 63 / 64}, 64, z=0)
    # More samples, tighter bound: 98.4% on 1024 samples is enough.
    assert t.met_with_margin({"top1": 1008 / 1024}, 1024)
    # Not a share: the plain comparison.
    assert Target.parse("cosine>=0.99").met_with_margin({"cosine": 0.991}, 8)
    # The bound: below the share, above 0, and at z=0 the share itself.
    for share, n in ((0.9, 50), (1.0, 10), (0.0, 10)):
        low = wilson_lower_bound(share, n, 1.0)
        assert 0.0 <= low <= share and wilson_lower_bound(share, n, 0.0) == pytest.approx(share)


def test_ranking_by_a_metric_the_outputs_lack_is_an_error(setup):
    from trtq.core.errors import QuantizationError

    model, table, evaluator = setup
    with pytest.raises(QuantizationError, match="ranking metric 'sequence' is not measured .* top1"):
        analyze(model, table, evaluator, metric="sequence", reverse=False, progress=False)


def _fp16_convs(candidate) -> int:
    """How many of the CNN's layers run out of int8 (their weight is not a DequantizeLinear output)."""
    producer = {o: n.op_type for n in candidate.graph.node for o in n.output}
    return sum(producer.get(n.input[1]) != "DequantizeLinear" for n in candidate.graph.node
               if n.name in ("conv1", "conv2", "fc"))


def test_search_bisects_the_prefix_and_ranks_only_when_all_int8_misses(setup):
    model, table, _ = setup
    groups = {g.name: g for g in layer_groups(model)}
    ranking = [groups["conv1"], groups["conv2"], groups["fc"]]
    target = Target("cosine", 0.95)
    ranked = []

    def rank():
        ranked.append(True)
        return ranking

    def evaluate(candidate):  # met once two layers are out of int8
        return {"cosine": 1.0 if _fp16_convs(candidate) >= 2 else 0.9}

    res = search_precision(model, table, evaluate, target.met, ranking=rank, progress=False, refine=False)
    assert res.met and res.moved == ("conv1", "conv2") and ranked == [True]
    # all int8, the fp16 bound, then halves of the prefix: 1 group misses, 2 meet
    assert [s.moved for s in res.steps] == [0, 3, 1, 2]
    ranked.clear()
    easy = search_precision(model, table, lambda m: {"cosine": 1.0}, target.met, ranking=rank, progress=False)
    assert easy.met and easy.moved == () and not ranked and len(easy.steps) == 1


def test_evaluator_gives_up_only_when_the_rest_cannot_save_the_model(setup):
    from trtq.deploy.compare import compare_outputs
    from trtq.deploy.evaluate import best_case, report_metrics

    model, _, evaluator = setup  # 48 samples in batches of 16
    assert best_case({"top1": 0.5, "min_cosine": 0.9, "sqnr_db": 10.0}, 16, 48) == \
        {"top1": pytest.approx(5 / 6), "min_cosine": 0.9, "sqnr_db": 1e9}
    full = evaluator(model)
    assert evaluator(model, hopeless=lambda best: False) == full
    seen = []

    def hopeless(best):
        seen.append(best)
        return True

    first = evaluator(model, hopeless=hopeless)
    assert len(seen) == 1  # stopped after the first batch
    out = evaluator.outputs(model)
    expected = report_metrics(compare_outputs({k: v[:16] for k, v in evaluator.reference.items()},
                                              {k: v[:16] for k, v in out.items()}))
    assert first == expected


def test_a_missed_target_is_explained_with_what_was_compared():
    from trtq.deploy.evaluate import Target, wilson_lower_bound

    t = Target.parse("top1>=0.97")
    # 0.9766 is above 0.97, but the share's lower bound on 256 samples is what the search compares.
    bound = wilson_lower_bound(0.9766, 256, 1.0)
    assert t.shortfall({"top1": 0.9766}, 256) == f"top1 0.9766, lower bound {bound:.4g} < 0.97 on 256 samples"
    assert not t.met_with_margin({"top1": 0.9766}, 256)
    assert t.shortfall({"top1": 0.9766}, 256, z=0) == "top1 0.9766 >= 0.97"
    assert Target.parse("cosine>=0.99").shortfall({"cosine": 0.985}, 256) == "cosine 0.985 < 0.99"
    # Never a value that reads as met: 0.999987 is not "1" against 0.99999.
    assert Target.parse("cosine>=0.99999").shortfall({"cosine": 0.999987}, 256) == "cosine 0.999987 < 0.99999"
    # An evaluation stopped early says on how many samples, and why it stopped.
    assert t.shortfall({"top1": 0.875}, 32, of=256) == ("top1 0.875 on the first 32 of 256 samples, which no result "
                                                       "on the rest could lift to top1>=0.97")
