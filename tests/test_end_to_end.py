"""The main job on the embedded default: EfficientNet-Lite0 on the sample photos (~1 minute)."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import needs_models, needs_torch

pytestmark = [needs_torch, needs_models, pytest.mark.slow]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from trtq.pipeline import QuantizeJob, run_quantize

    return run_quantize(QuantizeJob(out_dir=tmp_path_factory.mktemp("e2e") / "out", progress=False))


def test_int8_model_is_tensorrt_style(result):
    model = onnx.load(result.files["int8"])
    onnx.checker.check_model(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    linear = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(linear) == 50  # 49 convolutions + the classifier
    for node in linear:
        act, weight = producer[node.input[0]], producer[node.input[1]]
        assert act.op_type == weight.op_type == "DequantizeLinear", node.name
        out_channels = inits[weight.input[0]].shape[0]
        assert inits[weight.input[1]].shape == (out_channels,), node.name  # per output channel
        assert inits[weight.input[0]].dtype == np.int8
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert not inits[node.input[2]].any()
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}


def test_fidelity_on_held_out_crops(result):
    m = result.report.outputs[0]
    assert result.report.samples == 256
    assert m.top1 >= 0.75 and m.cosine >= 0.97, m
    assert m.top1 < 1.0  # really quantized
    report = json.loads(result.files["report"].read_text())
    assert report["fidelity"]["outputs"][0]["top1"] == m.top1


def test_int8_runs_in_onnx_runtime(result):
    from trtq.deploy import OrtRunner
    from trtq.models import get_model_spec

    x = get_model_spec("efficientnet_lite0").evaluation_data(2)
    with OrtRunner(result.files["int8"]) as runner:
        logits = runner.infer({"images": x})["logits"]
    assert logits.shape == (2, 1000) and np.isfinite(logits).all()


def test_int8_engine_builds_with_tensorrt_rtx(result, tmp_path):
    from tests.conftest import has_module

    if not (has_module("tensorrt") or has_module("tensorrt_rtx") or has_module("tensorrt_rtx_bindings")):
        pytest.skip("needs TensorRT or TensorRT-RTX: pip install 'trtq[rtx]'")
    from click.testing import CliRunner

    from trtq.cli import main

    res = CliRunner().invoke(main, ["build", str(result.files["int8"]), "--out", str(tmp_path / "e.engine"),
                                    "--no-progress"])
    assert res.exit_code == 0, res.stderr
    meta = json.loads((tmp_path / "e.engine.json").read_text())
    assert list(meta["precision"].values()).count("int8") == 50
    assert meta["inputs"][0]["profile"]["min"][0] == 1 and meta["inputs"][0]["profile"]["max"][0] == 32


def test_report_html_holds_the_fidelity_table_and_charts(result):
    from html.parser import HTMLParser

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.cells, self.tables = [], [], 0

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img":
                self.images.append(attrs.get("src", ""))
            self.tables += tag == "table"

        def handle_data(self, data):
            self.cells.append(data.strip())

    page = Page()
    page.feed(result.files["report_html"].read_text())
    embedded = [src for src in page.images if src.startswith("data:image/png;base64,") and len(src) > 1000]
    assert len(embedded) >= 2 and page.tables >= 2
    top1 = result.report.outputs[0].top1
    assert "top-1" in page.cells and f"{top1:.1%}" in page.cells  # the fidelity table, with the measured value
    assert any(c.startswith("GPTQ:") for c in page.cells)
