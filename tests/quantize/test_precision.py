"""Precision plans, fp16 regions and the mixed-precision model they make."""

from __future__ import annotations

import gc
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtq.calibration import CalibrationTable, calibrate
from trtq.core.onnx_model import infer_types
from trtq.deploy import OrtRunner
from trtq.quantize.fp16 import cast_pairs, convert_fp16, fp16_nodes
from trtq.quantize.mixed import apply_plan, node_macs
from trtq.quantize.precision import Precision, PrecisionPlan, PrecisionRule
from tests.conftest import make_cnn
from trtq.core.errors import QuantizationError


@pytest.fixture(scope="module")
def cnn():
    return make_cnn()


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(3).standard_normal((32, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def table(cnn, data) -> CalibrationTable:
    return calibrate(cnn, {"input": data}, "minmax", progress=False)


def _precisions(plan: PrecisionPlan, model) -> dict[str, str]:
    return {n: a.precision.value for n, a in plan.resolve(model).items()}


def test_precedence_name_beats_pattern_beats_op_type_beats_default(cnn):
    plan = PrecisionPlan(Precision.FP16, (
        PrecisionRule("op:Conv", Precision.INT8),
        PrecisionRule("conv*", Precision.FP32),   # glob beats the op type
        PrecisionRule("conv2", Precision.INT8),    # an exact name beats the glob
        PrecisionRule("Gemm", Precision.FP32),     # bare op type
    ))
    got = _precisions(plan, cnn)
    assert got["conv1"] == "fp32" and got["conv2"] == "int8" and got["fc"] == "fp32"
    assert got["relu1"] == "fp16"  # the default


def test_equal_strength_rules_pick_the_safer_precision_in_any_order(cnn):
    rules = [PrecisionRule("re:^conv", Precision.INT8), PrecisionRule("conv?", Precision.FP16)]
    for order in (rules, rules[::-1]):
        assert _precisions(PrecisionPlan(Precision.INT8, tuple(order)), cnn)["conv1"] == "fp16"


def test_int8_applies_only_where_a_qdq_rule_does(cnn):
    resolved = PrecisionPlan().resolve(cnn)
    assert resolved["relu1"].precision is Precision.FP32 and "no int8 rule" in resolved["relu1"].reason
    assert resolved["conv1"].precision is Precision.INT8


def test_flags_and_files_make_the_same_plan(tmp_path, cnn):
    flags = PrecisionPlan.from_flags("int8", fp16=["fc,relu2"], fp32=["op:Conv"])
    assert [r.pattern for r in flags.overrides] == ["fc", "relu2", "op:Conv"]
    flags.save(tmp_path / "plan.json")
    assert PrecisionPlan.load(tmp_path / "plan.json") == flags
    (tmp_path / "plan.yaml").write_text("default: int8\noverrides:\n  fc: fp16\n  relu2: fp16\n  'op:Conv': fp32\n")
    yaml = pytest.importorskip("yaml")
    assert yaml and PrecisionPlan.load(tmp_path / "plan.yaml") == flags


@pytest.mark.parametrize("text, match", [
    ('{"default": "int4"}', "unknown precision 'int4'"),
    ('{"overrides": [{"pattern": "x"}]}', "needs 'pattern' and 'precision'"),
    ('{"overrides": [{"pattern": "re:(", "precision": "fp16"}]}', "bad regular expression"),
    ("not json", "not valid JSON"),
])
def test_bad_plans_are_clear_errors(tmp_path, text, match):
    (tmp_path / "p.json").write_text(text)
    with pytest.raises(QuantizationError, match=match):
        PrecisionPlan.load(tmp_path / "p.json")


def _softmax_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32), "w")
    big = numpy_helper.from_array(np.array([[1e5, 0, 0, 0]] * 4, np.float32), "big")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
         helper.make_node("Softmax", ["h"], ["p"], name="softmax", axis=-1),
         helper.make_node("MatMul", ["p", "big"], ["y"], name="huge")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w, big])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sensitive_ops_stay_fp32_unless_named_and_fp16_range_is_enforced():
    model = _softmax_model()
    resolved = PrecisionPlan(Precision.FP16).resolve(model)
    assert resolved["softmax"].precision is Precision.FP32 and "sensitive" in resolved["softmax"].reason
    assert resolved["huge"].precision is Precision.FP32 and "weight 'big' reaches 1e+05" in resolved["huge"].reason
    assert resolved["mm"].precision is Precision.FP16
    named = PrecisionPlan(Precision.FP16, (PrecisionRule("softmax", Precision.FP16),)).resolve(model)
    assert named["softmax"].precision is Precision.FP16
    with pytest.raises(QuantizationError, match=r"'huge' \(weight 'big' reaches 1e\+05\)"):
        PrecisionPlan(Precision.FP32, (PrecisionRule("name:huge", Precision.FP16),)).resolve(model)


def test_calibrated_activation_beyond_fp16_range_keeps_the_node_fp32(cnn, table):
    from trtq.calibration.table import TensorRange

    ranges = dict(table.ranges)
    ranges["r1"] = TensorRange("r1", -1.0, 1e6, "minmax", table.samples)
    hot = CalibrationTable(ranges, table.method, table.model_sha256, table.samples)
    resolved = PrecisionPlan(Precision.FP16).resolve(cnn, hot)
    assert resolved["relu1"].precision is Precision.FP32 and "output 'r1' reaches 1e+06" in resolved["relu1"].reason
    assert resolved["conv2"].precision is Precision.FP32 and "input 'r1'" in resolved["conv2"].reason


def _elem_types(model) -> dict[str, int]:
    return {name: t.tensor_type.elem_type for name, t in infer_types(model).items()}


@pytest.mark.parametrize("fp16", [{"conv1", "relu1", "conv2"}, {"fc"}, {"relu2", "gap", "flatten", "fc"},
                                  {"conv1", "relu1", "conv2", "residual_add", "relu2", "gap", "flatten", "fc"}])
def test_fp16_regions_cast_only_at_borders_and_keep_io_types(cnn, data, fp16):
    out = convert_fp16(cnn, fp16)
    assert cast_pairs(out) == []
    assert set(fp16_nodes(out)) == fp16
    assert [i.type.tensor_type.elem_type for i in out.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in out.graph.output] == [TensorProto.FLOAT]
    casts = [n for n in out.graph.node if n.op_type == "Cast"]
    # One Cast per tensor crossing a border, never two for the same tensor and direction.
    assert len({(c.input[0], c.attribute[0].i) for c in casts}) == len(casts)
    ref = OrtRunner(cnn).infer({"input": data})["logits"]
    got = OrtRunner(out).infer({"input": data})["logits"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-2)


def test_mixed_model_combines_qdq_and_fp16_and_counts_macs(cnn, table, data):
    plan = PrecisionPlan.from_flags("int8", fp16=["fc"])
    mixed = apply_plan(cnn, table, plan)
    ops = [n.op_type for n in mixed.model.graph.node]
    assert ops.count("QuantizeLinear") == 2 and "Cast" in ops  # conv1 and the residual in int8, fc in fp16
    assert fp16_nodes(mixed.model) == ["fc"] and cast_pairs(mixed.model) == []
    macs = node_macs(cnn)
    assert macs["conv1"] == 8 * 8 * 8 * 3 * 3 * 3 and macs["fc"] == 4 * 8
    assert mixed.int8_mac_share == pytest.approx((macs["conv1"] + macs["conv2"]) / sum(macs.values()))
    y = OrtRunner(mixed.model).infer({"input": data})["logits"]
    assert np.isfinite(y).all()
    assert json.loads(json.dumps(plan.to_json()))["overrides"] == [{"pattern": "fc", "precision": "fp16"}]


def test_apply_plan_keeps_its_input_and_leaves_no_cyclic_garbage(data):
    """A search applies a plan per candidate: the caller's model must stay as it is (weights are
    substituted in apply_plan's own copy), and nothing may wait for Python's cyclic collector
    (an onnx-ir round trip's node/value cycles held copies of the weights: +0.7 GB on MiniLM)."""
    model = make_cnn(with_bn=False)
    before = model.SerializeToString()
    table = calibrate(model, {"input": data}, "minmax", progress=False)
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    plan = PrecisionPlan.from_flags("int8", fp16=["fc"])
    plain = apply_plan(model, table, plan).model
    gc.collect()
    mixed = apply_plan(model, table, plan, weights={"conv1": w * 0.5}, check=False)
    assert gc.collect() == 0
    assert model.SerializeToString() == before
    assert mixed.model.SerializeToString() != plain.SerializeToString()  # the given weight went in
    y = OrtRunner(mixed.model).infer({"input": data})["logits"]
    assert np.isfinite(y).all()


def test_mixed_model_builds_with_tensorrt(cnn, table):
    from tests.conftest import has_module

    if not (has_module("tensorrt") or has_module("tensorrt_rtx")):
        pytest.skip("needs TensorRT or TensorRT-RTX (pip install 'trtq[rtx]')")
    from trtq.deploy.build import BuildOptions, build_engine

    mixed = apply_plan(cnn, table, PrecisionPlan.from_flags("int8", fp16=["fc", "relu2", "gap", "flatten"]))
    built = build_engine(mixed.model, BuildOptions(max_batch=4, progress=False))
    meta = built.info.to_json()
    assert built.engine and meta["precision"]
