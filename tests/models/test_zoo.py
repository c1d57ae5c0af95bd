"""The model zoo through the default job: every model quantizes from the CLI and from Python,
the result passes the full ONNX check, runs in ONNX Runtime with its task metric reported,
and (where TensorRT-RTX is installed) builds into an engine."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from trtq.cli import main
from trtq.deploy import OrtRunner, run_all
from trtq.models import synthetic
from trtq.models.zoo import ZOO, write_zoo

SAMPLES = 32
TASKS = {"top1": "classifier", "sequence": "sequence", "mask_iou": "map"}
#: Lower bounds of the task metric on 32 evaluation samples (bench/zoo.py measures more).
FLOORS = {"top1": 0.9, "sequence": 0.9, "mask_iou": 0.95}


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    return write_zoo(tmp_path_factory.mktemp("zoo"), samples=SAMPLES)


def _has_trt() -> bool:
    from tests.conftest import has_module

    return any(has_module(m) for m in ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings"))


def _check_output(model_path, eval_path, spec, report) -> None:
    onnx.checker.check_model(onnx.load(model_path), full_check=True)
    with np.load(eval_path, allow_pickle=False) as z:
        feed = {k: z[k] for k in z.files}
    with OrtRunner(model_path) as runner:
        out = run_all(runner, feed, batch_size=1 if spec.name == "cnn_b1" else 8)
    assert all(np.isfinite(v).all() for v in out.values())
    first = report["fidelity"]["outputs"][0]
    assert first["task"] == TASKS[spec.metric]
    assert first[spec.metric] >= FLOORS[spec.metric], first


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_through_the_cli(zoo, tmp_path, name):
    spec, files = ZOO[name], zoo[name]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["quantize", "--onnx", str(files["onnx"]), "--calib-data", str(files["calib"]),
                                       "--eval-data", str(files["eval"]), "--samples", str(SAMPLES),
                                       "--eval-samples", str(SAMPLES), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    _check_output(out / "model.int8.onnx", files["eval"], spec, report)
    declared = [i.type.tensor_type.shape for i in onnx.load(files["onnx"]).graph.input]
    written = [i.type.tensor_type.shape for i in onnx.load(out / "model.int8.onnx").graph.input]
    assert written == declared  # the user's input shapes (static batch, dynamic H x W) are kept


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_through_the_python_api(zoo, tmp_path, name):
    import trtq

    spec, files = ZOO[name], zoo[name]
    result = trtq.quantize_model(tmp_path / "out", onnx=files["onnx"], calib_data=files["calib"],
                                 eval_data=files["eval"], samples=SAMPLES, eval_samples=SAMPLES, progress=False)
    assert result.out_dir == tmp_path / "out"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    _check_output(tmp_path / "out" / "model.int8.onnx", files["eval"], spec, report)
    if _has_trt():  # TensorRT parses every zoo model's int8 form and builds it
        from trtq.deploy.build import BuildOptions, build_engine

        shapes = {"image": ((1, 3, 32, 32), (2, 3, 96, 128), (4, 3, 128, 128))} if name == "segmenter" else {}
        built = build_engine(tmp_path / "out" / "model.int8.onnx", BuildOptions(shapes=shapes, max_batch=4,
                                                                                 progress=False))
        assert len(built.engine) > 1000 and "int8" in set(built.info.precision.values())


def test_zoo_weights_are_trained_not_random(zoo):
    """The zoo's models do their tasks (better than chance by far), so their activations are a
    trained net's: confident softmaxes, saturating sigmoids."""
    from trtq.deploy.compare import _ctc_greedy

    with OrtRunner(zoo["cnn_opset11"]["onnx"]) as r:
        logits = r.infer(ZOO["cnn_opset11"].data(64, 1))["logits"]
    assert (logits.argmax(1) == synthetic.shapes(64, 1)[1]).mean() > 0.8
    images, labels = synthetic.text_lines(64, 1)
    with OrtRunner(zoo["recognizer"]["onnx"]) as r:
        probs = r.infer({"line": images})["probs"]
    assert probs.shape == (64, 32, 1000) and probs.max(2).mean() > 0.9
    assert np.mean([tuple(a) == b for a, b in zip(labels, _ctc_greedy(probs.argmax(2)))]) > 0.6
    images, masks = synthetic.scenes(16, 1, 96, 128)
    with OrtRunner(zoo["segmenter"]["onnx"]) as r:
        prob = r.infer({"image": images})["prob"]
    pred, truth = prob > 0.5, masks > 0.5
    assert (pred & truth).sum() / (pred | truth).sum() > 0.6
    assert ((prob < 0.02) | (prob > 0.98)).mean() > 0.5  # saturated, as a trained sigmoid map is


def test_zoo_exports_are_what_other_tools_write(zoo):
    ops = {name: {n.op_type for n in onnx.load(f["onnx"]).graph.node} for name, f in zoo.items()}
    opset = {name: onnx.load(f["onnx"]).opset_import[0].version for name, f in zoo.items()}
    assert opset["cnn_opset11"] == 11 and {"Clip", "Div", "Add", "Mul"} <= ops["cnn_opset11"]
    assert "Constant" in ops["cnn_constants"] and not onnx.load(zoo["cnn_constants"]["onnx"]).graph.initializer
    assert {"ConvTranspose", "Resize", "Concat", "Sigmoid"} <= ops["segmenter"]
    assert {"ReduceMean", "Sub", "Pow", "Sqrt", "Div", "MatMul", "Softmax"} <= ops["recognizer"]
    assert {"If", "Loop"} <= ops["subgraphs"]
    batch = onnx.load(zoo["cnn_b1"]["onnx"]).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_value == 1
    two = onnx.load(zoo["two_io"]["onnx"]).graph
    assert len(two.input) == 2 and len(two.output) == 2
