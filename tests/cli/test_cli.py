import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.conftest import make_cnn, needs_torch
from trtq.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def workdir(tmp_path):
    onnx.save(make_cnn(), tmp_path / "cnn.onnx")
    x = np.random.default_rng(0).normal(size=(24, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    np.savez(tmp_path / "calib.npz", input=x)
    return tmp_path


def _assert_clean_failure(result, match, workdir, out):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    assert match in err, err
    assert not out.exists(), "a failed run must not create the output folder"
    assert not [p for p in workdir.iterdir() if ".staging." in p.name], "staging folder left behind"


def test_quantize_onnx_writes_all_outputs(workdir):
    out = workdir / "out"
    result = run("quantize", "--onnx", workdir / "cnn.onnx", "--calib-data", workdir / "calib.npz",
                 "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output + result.stderr
    assert {p.name for p in out.iterdir()} == {"model.fp32.onnx", "model.int8.onnx", "calibration.json",
                                                "report.json", "report.md", "report.html"}
    report = json.loads((out / "report.json").read_text())
    assert report["evaluated_on"].startswith("the calibration data")
    assert report["fidelity"]["outputs"][0]["cosine"] > 0.95
    assert "top-1 agreement" in result.output
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(out / "model.fp32.onnx").graph.node}
    # SmoothQuant scored the one linear-layer group (the classifier); smoothed or not, it is recorded.
    assert [g["nodes"] for g in report["smoothquant"]] == [["fc"]]


@pytest.mark.parametrize("case", ["missing", "corrupt", "shape", "name", "nan", "dtype"])
def test_quantize_bad_input_fails_cleanly(workdir, case):
    out = workdir / "out"
    model, data = workdir / "cnn.onnx", workdir / "calib.npy"
    expect = {"missing": "does not exist", "corrupt": "not a readable ONNX model",
              "shape": "axis 2 must be 8", "name": "missing ['input']", "nan": "NaN or Inf at sample 3",
              "dtype": "dtype int64"}[case]
    if case == "missing":
        model = workdir / "nope.onnx"
    elif case == "corrupt":
        model = workdir / "corrupt.onnx"
        model.write_bytes(b"\x08\x07garbage" * 20)
    elif case == "shape":
        np.save(data, np.zeros((4, 3, 9, 9), np.float32))
    elif case == "name":
        data = workdir / "wrong.npz"
        np.savez(data, pixels=np.zeros((4, 3, 8, 8), np.float32))
    elif case == "nan":
        x = np.zeros((8, 3, 8, 8), np.float32)
        x[3, 1, 2, 2] = np.nan
        np.save(data, x)
    elif case == "dtype":
        np.save(data, np.zeros((4, 3, 8, 8), np.int64))
    result = run("quantize", "--onnx", model, "--calib-data", data, "--out", out, "--no-progress")
    _assert_clean_failure(result, expect, workdir, out)


def test_unwritable_output_and_unknown_model(workdir):
    blocker = workdir / "file.txt"
    blocker.write_text("x")
    result = run("quantize", "--onnx", workdir / "cnn.onnx", "--calib-data", workdir / "calib.npy",
                 "--out", blocker / "out", "--no-progress")
    assert result.exit_code == 2 and "cannot write to output folder" in result.stderr
    result = run("quantize", "--model", "resnet9000", "--out", workdir / "o2", "--no-progress")
    _assert_clean_failure(result, "unknown model 'resnet9000'", workdir, workdir / "o2")
    result = run("quantize", "--checkpoint", workdir / "x.pt", "--out", workdir / "o3")
    _assert_clean_failure(result, "--checkpoint needs --model", workdir, workdir / "o3")


def test_failed_run_keeps_previous_good_outputs(workdir):
    out = workdir / "out"
    ok = run("quantize", "--onnx", workdir / "cnn.onnx", "--calib-data", workdir / "calib.npy",
             "--out", out, "--no-progress")
    assert ok.exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    np.save(workdir / "bad.npy", np.full((4, 3, 8, 8), np.inf, np.float32))
    bad = run("quantize", "--onnx", workdir / "cnn.onnx", "--calib-data", workdir / "bad.npy",
              "--out", out, "--no-progress")
    assert bad.exit_code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_verbose_shows_traceback(workdir):
    result = run("-v", "quantize", "--onnx", workdir / "nope.onnx", "--calib-data", workdir / "calib.npy",
                 "--out", workdir / "o")
    assert result.exit_code != 0 and result.exception is not None


def test_calibrate_and_compare_commands(workdir):
    res = run("calibrate", workdir / "cnn.onnx", "--data", workdir / "calib.npy", "--out",
              workdir / "t.json", "--no-progress")
    assert res.exit_code == 0, res.stderr
    assert json.loads((workdir / "t.json").read_text())["samples"] == 24
    from trtq.calibration import CalibrationTable
    from trtq.quantize import quantize

    onnx.save(quantize(workdir / "cnn.onnx", CalibrationTable.load(workdir / "t.json")), workdir / "int8.onnx")
    res = run("compare", workdir / "cnn.onnx", workdir / "int8.onnx", "--data", workdir / "calib.npy")
    assert res.exit_code == 0 and "PASS" in res.output, res.output + res.stderr
    res = run("compare", workdir / "cnn.onnx", workdir / "int8.onnx", "--data", workdir / "calib.npy",
              "--min-cosine", "1.0", "--json")
    assert res.exit_code == 1 and json.loads(res.output)["passed"] is False
    res = run("compare", workdir / "cnn.onnx", workdir / "int8.onnx", "--data", workdir / "nope.npy")
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_help_and_models():
    assert "quantize" in run("--help").output
    assert "efficientnet_lite0" in run("models").output


@needs_torch
def test_quantize_checkpoint_with_registered_architecture(tmp_path):
    import torch

    from trtq.models.digits import TRAIN_SAMPLES, digits_arrays, digits_cnn

    torch.save(digits_cnn().state_dict(), tmp_path / "digits.pt")
    x, _ = digits_arrays()
    np.save(tmp_path / "calib.npy", x[:200])
    np.save(tmp_path / "eval.npy", x[TRAIN_SAMPLES:])
    result = run("quantize", "--checkpoint", tmp_path / "digits.pt", "--model", "digits_cnn",
                 "--calib-data", tmp_path / "calib.npy", "--eval-data", tmp_path / "eval.npy",
                 "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["export_parity"]["max_abs"] < 1e-4
    assert report["fidelity"]["outputs"][0]["top1"] > 0.95
    assert report["evaluated_on"] == "held-out evaluation data"


def test_unknown_method_fails_before_any_work(workdir):
    result = run("quantize", "--onnx", workdir / "cnn.onnx", "--calib-data", workdir / "calib.npy",
                 "--method", "kl", "--out", workdir / "out")
    assert result.exit_code == 2 and "Invalid value for '--method'" in result.stderr
    assert "entropy" in result.stderr and not (workdir / "out").exists()


def test_calibrate_writes_trt_cache_and_quantize_reuses_tables(workdir):
    res = run("calibrate", workdir / "cnn.onnx", "--data", workdir / "calib.npy", "--method", "entropy",
              "--out", workdir / "t.json", "--trt-cache", workdir / "t.cache", "--no-progress")
    assert res.exit_code == 0, res.stderr
    assert (workdir / "t.cache").read_text().startswith("TRT-101401-EntropyCalibration2\n")
    # calibrate's tensors are exactly those quantize needs, and quantize accepts the table back
    for table in ("t.json", "t.cache"):
        out = workdir / f"out-{table}"
        res = run("quantize", "--onnx", workdir / "cnn.onnx", "--calib-data", workdir / "calib.npy",
                  "--table", workdir / table, "--out", out, "--no-progress")
        assert res.exit_code == 0, res.stderr
        assert json.loads((out / "calibration.json").read_text())["method"].startswith(
            "entropy" if table == "t.json" else "trt-cache")
        assert json.loads((out / "report.json").read_text())["smoothquant"] == []  # the table fixes the tensors


def test_quantize_refuses_another_models_table(workdir):
    onnx.save(make_cnn(seed=7), workdir / "other.onnx")
    assert run("calibrate", workdir / "other.onnx", "--data", workdir / "calib.npy", "--out",
               workdir / "other.json", "--no-progress").exit_code == 0
    res = run("quantize", "--onnx", workdir / "cnn.onnx", "--calib-data", workdir / "calib.npy",
              "--table", workdir / "other.json", "--out", workdir / "out")
    _assert_clean_failure(res, "computed for another model", workdir, workdir / "out")


def test_calibrate_bad_input_writes_nothing(workdir):
    x = np.zeros((8, 3, 8, 8), np.float32)
    x[5, 0, 1, 1] = np.inf
    np.save(workdir / "bad.npy", x)
    res = run("calibrate", workdir / "cnn.onnx", "--data", workdir / "bad.npy", "--out", workdir / "t.json",
              "--trt-cache", workdir / "t.cache", "--no-progress")
    assert res.exit_code == 2 and "sample 5" in res.stderr and "\n" not in res.stderr.strip()
    np.save(workdir / "empty.npy", np.zeros((0, 3, 8, 8), np.float32))
    res = run("calibrate", workdir / "cnn.onnx", "--data", workdir / "empty.npy", "--out", workdir / "t.json")
    assert res.exit_code == 2 and "empty" in res.stderr
    assert not (workdir / "t.json").exists() and not (workdir / "t.cache").exists()


def test_bench_command(workdir):
    res = run("bench", workdir / "cnn.onnx", "--batch", "4", "--iterations", "5", "--warmup", "1", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.output)
    assert report["batch"] == 4 and report["iterations"] == 5 and report["samples_per_s"] > 0
    assert report["latency_ms"]["min"] <= report["latency_ms"]["p50"] <= report["latency_ms"]["max"]
    res = run("bench", workdir / "cnn.onnx", "--shape", "input:bad")
    assert res.exit_code == 2 and "NAME:DIMS" in res.stderr


def test_quantize_layer_clipping_is_recorded(workdir):
    out = workdir / "out"
    result = run("quantize", "--onnx", workdir / "cnn.onnx", "--calib-data", workdir / "calib.npz",
                 "--layer-clipping", "--no-smoothquant", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["smoothquant"] == [] and "layer clipping:" in result.output
    choices = {c["tensor"]: c for c in report["layer_clipping"]}
    assert "input" in choices and all(0.4 <= c["fraction"] <= 1.0 for c in choices.values())


def test_quantize_for_onnx_runtime_cpu(workdir):
    out = workdir / "out"
    result = run("quantize", "--onnx", workdir / "cnn.onnx", "--calib-data", workdir / "calib.npz",
                 "--target-runtime", "ort-cpu", "--no-reduce-range", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["target_runtime"]["runtime"] == "ort-cpu" and report["target_runtime"]["reduce_range"] is False
    assert "written for: ort-cpu" in result.output
    zero_points = [t for t in onnx.load(out / "model.int8.onnx").graph.initializer
                   if t.name.endswith("_zero_point") and t.data_type == onnx.TensorProto.UINT8]
    assert zero_points  # uint8 activations
    kernels, simulated = report["ort_integer_kernels"]["outputs"][0], report["fidelity"]["outputs"][0]
    assert abs(kernels["cosine"] - simulated["cosine"]) < 0.01


@pytest.mark.parametrize("extra, match", [(["--engine"], "--engine builds a TensorRT engine"),
                                          (["--fp16", "Gemm"], "int8 and fp32 only"),
                                          (["--target", "cosine>=0.9"], "choose --fp32 layers by hand")])
def test_ort_cpu_refuses_what_it_cannot_honour(workdir, extra, match):
    out = workdir / "out"
    result = run("quantize", "--onnx", workdir / "cnn.onnx", "--calib-data", workdir / "calib.npz",
                 "--target-runtime", "ort-cpu", *extra, "--out", out, "--no-progress")
    _assert_clean_failure(result, match, workdir, out)


def test_quantize_equalize_is_recorded(tmp_path):
    from tests.quantize.test_equalize import make_separable

    onnx.save(make_separable(spread=1000.0), tmp_path / "sep.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(0, 2, (16, 4, 8, 8)).astype(np.float32))
    out = tmp_path / "out"
    result = run("quantize", "--onnx", tmp_path / "sep.onnx", "--calib-data", tmp_path / "calib.npy",
                 "--equalize", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert [e["conv2"] for e in report["equalization"]] == ["dw", "project"]
    assert "cross-layer equalization:" in result.output
    res = run("quantize", "--onnx", tmp_path / "sep.onnx", "--calib-data", tmp_path / "calib.npy",
              "--equalize", "--target-runtime", "ort-cpu", "--out", tmp_path / "out2", "--no-progress")
    assert res.exit_code == 2 and "it is for --target-runtime tensorrt" in res.stderr


def test_an_unexpected_error_is_one_line_exit_3_and_writes_nothing(tmp_path, cnn_path, cnn_data, monkeypatch):
    """An internal error (here injected into GPTQ) gives one `error:` line naming the exception
    and where its traceback went, exit code 3, and no output folder."""
    import trtq.pipeline.stages

    def broken(*args, **kwargs):
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(trtq.pipeline.stages, "gptq_weights", broken)
    monkeypatch.setattr(trtq.pipeline.stages, "gptq_from_statistics", broken)  # H from the calibration run
    np.save(tmp_path / "calib.npy", cnn_data)
    res = CliRunner().invoke(main, ["quantize", "--onnx", str(cnn_path), "--calib-data", str(tmp_path / "calib.npy"),
                                    "--out", str(tmp_path / "out"), "--no-progress"])
    assert res.exit_code == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: internal error: ZeroDivisionError: injected"), res.stderr
    saved = Path(lines[0].split("the traceback is in ")[1].split(";")[0])
    assert "ZeroDivisionError" in saved.read_text()
    saved.unlink()
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.staging.*"))


def test_usage_errors_share_trtqs_error_style_and_every_command_takes_verbose(tmp_path, cnn_path):
    runner = CliRunner()
    res = runner.invoke(main, ["quantize", "--no-such-option"])
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: No such option")
    assert "quantize --help)" in res.stderr
    from trtq.cli import main as group

    for name, command in group.commands.items():
        assert "--verbose" in {o for p in command.params for o in p.opts}, name
    res = runner.invoke(main, ["inspect", str(tmp_path / "missing.engine"), "-v"])
    assert res.exit_code != 0 and isinstance(res.exception, Exception)  # -v: the exception, not one line


def test_inspect_describes_an_onnx_model(tmp_path, cnn_path, cnn_data):
    from trtq.calibration import calibrate
    from trtq.quantize import quantize

    int8 = quantize(onnx.load(cnn_path), calibrate(str(cnn_path), cnn_data, progress=False))
    onnx.save(int8, tmp_path / "q.onnx")
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "q.onnx"), "--json"])
    assert res.exit_code == 0, res.stderr
    described = json.loads(res.output)
    assert described["qdq"]["QuantizeLinear int8"] >= 3 and set(described["precision"].values()) == {"int8"}
    assert described["opsets"]["ai.onnx"] >= 13


def test_trtexec_style_shapes():
    from trtq.core.errors import BuildError
    from trtq.deploy.build import trtexec_shapes

    got = trtexec_shapes(["images:1x3x8x8,mask:1x1"], ["images:4x3x8x8", "mask:4x1"], ["images:8x3x8x8,mask:8x1"])
    assert got == {"images": ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8)), "mask": ((1, 1), (4, 1), (8, 1))}
    with pytest.raises(BuildError, match="missing: --min-shapes mask, --opt-shapes mask"):
        trtexec_shapes(["images:1x3x8x8"], ["images:4x3x8x8"], ["images:8x3x8x8,mask:8x1"])
