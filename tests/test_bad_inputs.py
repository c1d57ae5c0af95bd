"""Bad inputs, as a careless user gives them: each is one `error:` line, exit code 2, and the
output folder exactly as it was (byte for byte)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from tests.conftest import has_module, make_cnn
from trtq.cli import main
from trtq.core.errors import TrtqError


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def workspace(tmp_path):
    onnx.save(make_cnn(), tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(0, 1, (16, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"from": "an earlier run"}')
    (out / "keep.txt").write_text("the user's")
    return tmp_path


def _opset99(ws):
    m = make_cnn()
    m.opset_import[0].version = 99
    onnx.save(m, ws / "bad.onnx", )
    return ["quantize", "--onnx", str(ws / "bad.onnx"), "--calib-data", str(ws / "calib.npy")], "opset 99"


def _custom_op(ws):
    m = make_cnn()
    m.graph.node.insert(0, helper.make_node("Foo", ["input"], ["foo_out"], domain="com.x", name="foo"))
    m.graph.node[1].input[0] = "foo_out"
    m.opset_import.append(helper.make_opsetid("com.x", 1))
    onnx.save(m, ws / "custom.onnx")
    return ["quantize", "--onnx", str(ws / "custom.onnx"), "--calib-data", str(ws / "calib.npy"),
            "--no-smoothquant"], "custom op com.x:Foo"


def _npy_bomb(ws):
    from numpy.lib import format as npy

    with open(ws / "huge.npy", "wb") as f:
        npy.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**11, 3, 8, 8)})
        f.write(b"\0" * 64)
    return ["quantize", "--onnx", str(ws / "m.onnx"), "--calib-data", str(ws / "huge.npy")], "truncated or corrupt"


def _image_bomb(ws):
    from PIL import Image

    folder = ws / "images"
    folder.mkdir()
    Image.new("RGB", (9000, 9000)).save(folder / "big.png")  # 81 MP, over the 64 MP limit
    return ["quantize", "--onnx", str(ws / "m.onnx"), "--calib-data", str(folder)], "megapixels"


def _zero_scale_cache(ws):
    (ws / "zero.cache").write_text("TRT-100900-EntropyCalibration2\ninput: 00000000\n")
    return ["quantize", "--onnx", str(ws / "m.onnx"), "--table", str(ws / "zero.cache"), "--calib-data",
            str(ws / "calib.npy")], "scale 0 of 'input'"


def _folder_in_the_way(ws):
    (ws / "out" / "model.int8.onnx").mkdir()
    return ["quantize", "--onnx", str(ws / "m.onnx"), "--calib-data", str(ws / "calib.npy")], "is a folder"


def _calibrate_cache_into_missing_folder(ws):
    return ["calibrate", str(ws / "m.onnx"), "--data", str(ws / "calib.npy"), "--out", str(ws / "out" / "t.json"),
            "--trt-cache", str(ws / "nodir" / "x.cache")], "does not exist"


def _calibrate_out_is_a_folder(ws):
    return ["calibrate", str(ws / "m.onnx"), "--data", str(ws / "calib.npy"), "--out", str(ws / "out")], "is a folder"


def _dangling_out(ws):
    (ws / "link").symlink_to(ws / "nowhere")
    return ["quantize", "--onnx", str(ws / "m.onnx"), "--calib-data", str(ws / "calib.npy"), "--out",
            str(ws / "link")], "does not exist"


def _unknown_method(ws):
    return ["quantize", "--onnx", str(ws / "m.onnx"), "--calib-data", str(ws / "calib.npy"), "--target",
            "nonsense"], "cannot read the target"


def _fp8_on_ampere(ws):
    return ["quantize", "--onnx", str(ws / "m.onnx"), "--calib-data", str(ws / "calib.npy"), "--fp8", "Conv",
            "--gpu", "ampere"], "no FP8 Tensor Cores"


CASES = {f.__name__[1:]: f for f in (_fp8_on_ampere, _opset99, _custom_op, _npy_bomb, _image_bomb, _zero_scale_cache,
                                     _folder_in_the_way, _calibrate_cache_into_missing_folder,
                                     _calibrate_out_is_a_folder, _dangling_out, _unknown_method)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(workspace, case):
    args, expected = CASES[case](workspace)
    if args[0] == "quantize" and "--out" not in args:
        args += ["--out", str(workspace / "out")]
    before = _snapshot(workspace / "out")
    res = CliRunner().invoke(main, [*args, "--no-progress"])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, (res.exit_code, res.stderr, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr
    assert _snapshot(workspace / "out") == before
    assert not list(workspace.glob(".*staging*"))


def test_inspect_verifies_the_engine_file_not_only_its_sidecar(tmp_path):
    if not (has_module("tensorrt") or has_module("tensorrt_rtx")):
        pytest.skip("needs TensorRT or TensorRT-RTX (pip install 'trtq[rtx]')")
    from trtq.calibration import calibrate
    from trtq.deploy import BuildOptions, build_engine
    from trtq.quantize import quantize

    model = make_cnn()
    table = calibrate(model, np.random.default_rng(0).normal(0, 1, (8, 3, 8, 8)).astype(np.float32), progress=False)
    path, _ = build_engine(quantize(model, table), BuildOptions(max_batch=2, progress=False)).save(
        tmp_path / "m.engine")
    assert CliRunner().invoke(main, ["inspect", str(path)]).exit_code == 0
    for damage in (lambda b: b[: len(b) // 2], lambda b: np.random.default_rng(0).bytes(len(b))):
        path.write_bytes(damage(path.read_bytes()))
        res = CliRunner().invoke(main, ["inspect", str(path)])
        assert res.exit_code == 2 and "rebuild it" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("call, expected", [
    (lambda m, d: __import__("trtq").calibrate(m, d, samples=-5), "samples must be >= 1, got -5"),
    (lambda m, d: __import__("trtq").calibrate(m, d, max_elements=0), "max_elements must be >= 1, got 0"),
    (lambda m, d: __import__("trtq").calibrate(m, d, batch_size="8"), "batch_size must be an integer"),
    (lambda m, d: __import__("trtq").calibrate(m, d, tensors="nope"), "tensors ['nope'] are not float"),
    (lambda m, d: __import__("trtq.quantize").quantize.quantize(m, None), "table must be a CalibrationTable"),
    (lambda m, d: __import__("trtq.quantize").quantize.quantize(m, "missing.json"), "does not exist"),
])
def test_python_api_arguments_are_checked(call, expected):
    data = np.random.default_rng(0).normal(0, 1, (8, 3, 8, 8)).astype(np.float32)
    with pytest.raises(TrtqError) as info:
        call(make_cnn(), data)
    assert expected in str(info.value)


def test_a_string_names_one_tensor_not_its_letters():
    import trtq

    data = np.random.default_rng(0).normal(0, 1, (8, 3, 8, 8)).astype(np.float32)
    table = trtq.calibrate(make_cnn(), data, tensors="r1", progress=False)
    assert list(table.ranges) == ["r1"]


def test_metric_naming_an_output_the_model_lacks_fails_before_any_work(tmp_path):
    import onnx
    from click.testing import CliRunner

    from tests.conftest import make_cnn
    from trtq.cli import main

    onnx.save(make_cnn(), tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(0, 1, (16, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["quantize", "--onnx", str(tmp_path / "m.onnx"), "--calib-data",
                                       str(tmp_path / "calib.npy"), "--out", str(out), "--metric", "box=cosine",
                                       "--no-progress"])
    assert result.exit_code == 2 and "error: --metric names output(s) ['box']" in result.output
    assert "outputs are ['logits']" in result.output and not out.exists()
