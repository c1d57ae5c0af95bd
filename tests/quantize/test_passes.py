"""Graph passes and every transform on models with subgraphs (If branches, a Loop body) that
read outer initializers: nothing a subgraph reads is dropped, nodes inside subgraphs stay
float on purpose, and the outputs stay those of the fp32 model within int8 tolerance."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from trtq.calibration import calibrate
from trtq.deploy import OrtRunner
from trtq.quantize import apply_plan, fold_batchnorm, gptq_weights, quantize
from trtq.quantize.bias_correction import correct_bias
from trtq.quantize.clipping import refine_clipping
from trtq.quantize.equalize import equalize
from trtq.quantize.graph import GraphIndex, remove_unused_initializers
from trtq.quantize.passes import FoldBatchNormPass, RemoveUnusedInitializersPass, apply_passes
from trtq.quantize.precision import PrecisionPlan
from trtq.quantize.smoothquant import smooth_quant

BRANCH_ONLY = ("branch_w", "shift_else", "loop_bias")  # initializers only subgraphs read


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def make_subgraph_model(seed: int = 0) -> onnx.ModelProto:
    """x -> Conv+BN -> Relu -> If(mean > 0: Conv(branch_w)+Relu | Add(shift_else)) -> Conv -> Relu -> GAP
    -> Flatten -> Gemm -> Loop(2 x Add(loop_bias)) -> logits. Branches and the loop body read outer
    initializers that no main-graph node reads."""
    rng = np.random.default_rng(seed)
    f = np.float32
    then_branch = helper.make_graph(
        [helper.make_node("Conv", ["r1", "branch_w"], ["bc"], name="branch_conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["bc"], ["then_out"], name="branch_relu")],
        "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph(
        [helper.make_node("Add", ["r1", "shift_else"], ["else_out"], name="branch_add")],
        "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
         helper.make_node("Add", ["v_in", "loop_bias"], ["v_out"], name="body_add")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_g", "bn_b", "bn_m", "bn_v"], ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("ReduceMean", ["r1"], ["mean"], name="mean", keepdims=0),
        helper.make_node("Greater", ["mean", "zero"], ["cond"], name="positive"),
        helper.make_node("If", ["cond"], ["branched"], name="branch", then_branch=then_branch,
                         else_branch=else_branch),
        helper.make_node("Conv", ["branched", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], name="fc", transB=1),
        helper.make_node("Loop", ["trips", "true"], ["logits"], name="loop", body=body),
    ]
    nodes[-1].input.append("fc")
    inits = [
        _init("w1", rng.normal(0, 0.3, (8, 3, 3, 3)).astype(f)), _init("b1", rng.normal(0, 0.1, 8).astype(f)),
        _init("bn_g", rng.uniform(0.5, 1.5, 8).astype(f)), _init("bn_b", rng.normal(0.2, 0.1, 8).astype(f)),
        _init("bn_m", rng.normal(0, 0.1, 8).astype(f)), _init("bn_v", rng.uniform(0.5, 2, 8).astype(f)),
        _init("zero", np.float32(0)), _init("branch_w", rng.normal(0, 0.2, (8, 8, 3, 3)).astype(f)),
        _init("shift_else", np.float32(0.5)), _init("w2", rng.normal(0, 0.2, (8, 8, 3, 3)).astype(f)),
        _init("fc_w", rng.normal(0, 0.3, (4, 8)).astype(f)), _init("fc_b", rng.normal(0, 0.1, 4).astype(f)),
        _init("trips", np.int64(2)), _init("true", np.bool_(True)), _init("loop_bias", rng.normal(0, 0.1, 4).astype(f)),
    ]
    graph = helper.make_graph(nodes, "subgraphs", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                   ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def model():
    return make_subgraph_model()


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(3).normal(0, 1, (48, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(model, data):
    with OrtRunner(model) as runner:
        return runner.infer({"input": data})["logits"]


def _check(candidate: onnx.ModelProto, data: np.ndarray, reference: np.ndarray, min_cosine: float) -> None:
    onnx.checker.check_model(candidate, full_check=True)
    names = {t.name for t in candidate.graph.initializer}
    assert set(BRANCH_ONLY) <= names  # what only the subgraphs read survived
    with OrtRunner(candidate) as runner:
        out = runner.infer({"input": data})["logits"]
    cos = np.sum(out * reference, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1))
    assert cos.mean() >= min_cosine, cos.mean()


def test_the_old_protobuf_cleanup_would_have_dropped_branch_initializers(model):
    """What the issue reported: uses collected from graph.node alone miss the branches' reads."""
    naive = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    assert set(BRANCH_ONLY) - naive == set(BRANCH_ONLY)
    cleaned = onnx.ModelProto()
    cleaned.CopyFrom(model)
    remove_unused_initializers(cleaned.graph)  # subgraph-aware now
    assert set(BRANCH_ONLY) <= {t.name for t in cleaned.graph.initializer}


def test_index_counts_subgraph_reads_as_consumers(model):
    g = GraphIndex(model.graph)
    assert [n.name for n in g.consumers["r1"]] == ["mean", "branch"]  # the If reads r1 inside its branches
    assert [n.name for n in g.consumers["loop_bias"]] == ["loop"]
    assert "branch_conv" in g.names and "bc" in g.names  # new names avoid subgraph names too


def test_passes_say_what_they_changed(model, data, reference):
    folding = FoldBatchNormPass()
    folded, changed = apply_passes(model, folding, RemoveUnusedInitializersPass())
    assert changed and [(f.conv, f.batchnorm) for f in folding.folded] == [("conv1", "bn1")]
    assert "BatchNormalization" not in {n.op_type for n in folded.graph.node}
    assert not {"bn_g", "bn_b", "bn_m", "bn_v", "w1", "b1"} & {t.name for t in folded.graph.initializer}
    _check(folded, data, reference, 0.99999)
    again, changed = apply_passes(folded, FoldBatchNormPass(), RemoveUnusedInitializersPass())
    assert not changed


def test_a_conv_output_a_branch_reads_is_not_folded_away(model):
    """conv1's output read inside a branch as well as by the BN: folding would rename it away."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    branch = next(n for n in edited.graph.node if n.op_type == "If")
    else_graph = next(a.g for a in branch.attribute if a.name == "else_branch")
    else_graph.node[0].input[0] = "c1"
    out = fold_batchnorm(edited)
    assert "BatchNormalization" in {n.op_type for n in out.graph.node}
    onnx.checker.check_model(out, full_check=True)


def test_every_transform_keeps_subgraphs_intact(model, data, reference):
    fp32 = fold_batchnorm(model)
    _check(fp32, data, reference, 0.99999)
    smoothed = smooth_quant(fp32, data, samples=32, progress=False).model
    _check(smoothed, data, reference, 0.99999)
    equalized = equalize(fp32, data, samples=32, progress=False).model
    _check(equalized, data, reference, 0.99999)
    table = calibrate(fp32, data, "minmax", progress=False)
    int8 = quantize(fp32, table)
    _check(int8, data, reference, 0.99)
    branch = next(n for n in int8.graph.node if n.op_type == "If")
    inside = [n.op_type for a in branch.attribute for n in a.g.node]
    assert "QuantizeLinear" not in inside and "Conv" in inside  # left in float, on purpose
    assert sum(n.op_type == "QuantizeLinear" for n in int8.graph.node) >= 3  # the main graph is quantized
    weights = gptq_weights(fp32, data, samples=32, progress=False).weights
    _check(apply_plan(fp32, table, PrecisionPlan(), weights=weights).model, data, reference, 0.99)
    _check(apply_plan(fp32, table, PrecisionPlan.from_flags("fp16")).model, data, reference, 0.999)
    corrected = correct_bias(fp32, int8, data, samples=32, progress=False).model
    _check(corrected, data, reference, 0.99)
    clipped = refine_clipping(fp32, table, data, progress=False).table
    _check(quantize(fp32, clipped), data, reference, 0.99)


def test_trtq_quantize_on_a_model_with_subgraphs(tmp_path, model, data, reference):
    from trtq.cli import main

    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", data)
    res = CliRunner().invoke(main, ["quantize", "--onnx", str(tmp_path / "m.onnx"), "--calib-data",
                                    str(tmp_path / "calib.npy"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert res.exit_code == 0, res.output + res.stderr
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        _check(onnx.load(tmp_path / "out" / name), data, reference, 0.99)


def _run(proto: onnx.ModelProto, feed: dict) -> list:
    import onnxruntime as ort

    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def _to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every float32 tensor of ``model`` (subgraphs included) as float16, as fp16 converters write it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16

    def walk(g):
        for init in g.initializer:
            if init.data_type == f32:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
        for vi in (*g.input, *g.output, *g.value_info):
            if vi.type.tensor_type.elem_type == f32:
                vi.type.tensor_type.elem_type = f16
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == f32:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
                elif a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        walk(sub)
                elif a.name == "to" and node.op_type == "Cast" and a.i == f32:
                    a.i = f16
    walk(out.graph)
    return out


def _float16_cnn() -> onnx.ModelProto:
    """make_cnn as an fp16 exporter writes it: float16 weights, inputs and outputs, a float16
    Constant and a Cast to float16 inside."""
    from tests.conftest import make_cnn

    proto = _to_float16(make_cnn())
    nodes = list(proto.graph.node)
    relu = next(i for i, n in enumerate(nodes) if n.name == "relu2")
    nodes[relu].input[0] = "sum_scaled"
    extra = [helper.make_node("Constant", [], ["half"], name="half",
                              value=numpy_helper.from_array(np.array(0.5, np.float16))),
             helper.make_node("Cast", ["sum"], ["sum_cast"], name="to_half", to=TensorProto.FLOAT16),
             helper.make_node("Mul", ["sum_cast", "half"], ["sum_scaled"], name="scale")]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes[:relu] + extra + nodes[relu:])
    onnx.checker.check_model(proto, full_check=True)
    return proto


def test_a_float16_model_is_computed_in_float32_with_its_inputs_and_outputs_kept():
    from trtq.quantize import upcast_float16

    proto = _float16_cnn()
    out, count = upcast_float16(proto)
    onnx.checker.check_model(out, full_check=True)
    assert count > 0 and upcast_float16(out)[1] == 0  # nothing float16 is left inside
    f16 = onnx.TensorProto.FLOAT16
    assert [v.type.tensor_type.elem_type for v in (*out.graph.input, *out.graph.output)] == [f16, f16]
    assert [v.name for v in (*out.graph.input, *out.graph.output)] == ["input", "logits"]
    assert all(i.data_type == onnx.TensorProto.FLOAT for i in out.graph.initializer)
    casts = {n.name: n.attribute[0].i for n in out.graph.node if n.op_type == "Cast"}
    assert casts == {"input_to_fp32": 1, "to_half": 1, "logits_to_fp16": f16}
    x = np.random.default_rng(0).normal(0, 1, (4, 3, 8, 8)).astype(np.float16)
    want = _run(proto, {"input": x})[0].astype(np.float32)
    got = _run(out, {"input": x})[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-2, atol=1e-2)


def test_trtq_quantize_takes_a_float16_model(tmp_path):
    from trtq.pipeline import QuantizeJob, run_quantize

    proto = _float16_cnn()
    onnx.save(proto, tmp_path / "half.onnx")
    rng = np.random.default_rng(1)
    calib, held = (rng.normal(0, 1, (n, 3, 8, 8)).astype(np.float16) for n in (64, 32))
    result = run_quantize(QuantizeJob(onnx=tmp_path / "half.onnx", calib_data=calib, eval_data=held,
                                      out_dir=tmp_path / "out", progress=False))
    out = onnx.load(tmp_path / "out" / "model.int8.onnx")
    onnx.checker.check_model(out, full_check=True)
    f16 = onnx.TensorProto.FLOAT16
    assert [v.type.tensor_type.elem_type for v in (*out.graph.input, *out.graph.output)] == [f16, f16]
    assert sum(n.op_type == "QuantizeLinear" for n in out.graph.node) >= 3  # quantized like its fp32 twin
    assert result.report.outputs[0].cosine > 0.99
    assert any(w.startswith("float16 model: computed in float32") for w in result.warnings)
    got = _run(out, {"input": held[:8]})[0]
    want = _run(proto, {"input": held[:8]})[0]
    assert got.dtype == np.float16 and np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_a_float16_model_with_branches_and_a_loop_is_upcast_inside_them_too(model, data):
    from trtq.quantize import upcast_float16

    half = _to_float16(model)
    out, count = upcast_float16(half)
    onnx.checker.check_model(out, full_check=True)  # Loop-carried values and branch outputs agree on float32
    assert count > 0 and upcast_float16(out)[1] == 0
    x = data[:8].astype(np.float16)
    want, got = _run(half, {"input": x})[0], _run(out, {"input": x})[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-2, atol=2e-2)
