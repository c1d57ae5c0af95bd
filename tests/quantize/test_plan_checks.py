"""Plans are checked: unknown keys, patterns that match nothing, trtq's own precision.json."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from trtq.cli import main
from trtq.core.errors import QuantizationError
from trtq.quantize.precision import PrecisionPlan


def test_unknown_keys_are_named():
    with pytest.raises(QuantizationError, match="unknown key 'overides'"):
        PrecisionPlan.from_json({"default": "int8", "overides": [{"pattern": "Gemm", "precision": "fp16"}]})
    with pytest.raises(QuantizationError, match="override 1 has unknown key 'precison'"):
        PrecisionPlan.from_json({"overrides": [{"pattern": "Gemm", "precison": "fp16"}]})


def _run(tmp_path, *args):
    return CliRunner().invoke(main, ["quantize", "--onnx", str(tmp_path / "m.onnx"), "--calib-data",
                                     str(tmp_path / "c.npy"), "--no-progress", *args])


@pytest.fixture
def files(tmp_path, cnn_model, cnn_data):
    onnx.save(cnn_model, tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", cnn_data)
    return tmp_path


def test_precision_json_as_plan_reproduces_the_model(files):
    first = _run(files, "--fp16", "fc,relu2", "--out", str(files / "a"))
    assert first.exit_code == 0, first.stderr
    again = _run(files, "--plan", str(files / "a" / "precision.json"), "--out", str(files / "b"))
    assert again.exit_code == 0, again.stderr
    a, b = (json.loads((files / d / "precision.json").read_text()) for d in "ab")
    assert a["nodes"] == b["nodes"] and a["summary"]["fp16"] >= 1
    assert onnx.load(files / "a" / "model.mixed.onnx") == onnx.load(files / "b" / "model.mixed.onnx")


def test_a_pattern_matching_nothing_warns_or_with_strict_fails(files):
    res = _run(files, "--fp16", "no_such_node", "--out", str(files / "w"))
    assert res.exit_code == 0 and "warning: precision pattern 'no_such_node' match no node" in res.stderr
    res = _run(files, "--fp16", "no_such_node", "--strict", "--out", str(files / "s"))
    assert res.exit_code == 2 and "'no_such_node'" in res.stderr and "--strict" in res.stderr
    assert not (files / "s").exists()


def test_a_target_met_mostly_outside_int8_says_so(files):
    res = _run(files, "--target", "sqnr>=60", "--out", str(files / "t"))
    assert res.exit_code == 0, res.stderr
    share = json.loads((files / "t" / "precision.json").read_text())["int8_mac_share"]
    assert share < 0.5  # 60 dB is out of int8's reach on this model: the search moves most MACs out
    assert f"only {share:.1%} of the MACs in int8" in res.stderr


def test_table_alone_needs_no_calibration_data_and_says_what_would(files):
    from trtq.calibration import calibrate

    calibrate(str(files / "m.onnx"), str(files / "c.npy"), progress=False).save(files / "t.json")
    base = ["quantize", "--onnx", str(files / "m.onnx"), "--table", str(files / "t.json"), "--no-progress"]
    res = CliRunner().invoke(main, [*base, "--out", str(files / "x")])
    assert res.exit_code == 2 and "GPTQ weight rounding (turn it off with --no-gptq)" in res.stderr
    assert "--eval-data" in res.stderr and not (files / "x").exists()
    res = CliRunner().invoke(main, [*base, "--no-gptq", "--eval-data", str(files / "c.npy"), "--out", str(files / "y")])
    assert res.exit_code == 0, res.stderr
    assert (files / "y" / "model.int8.onnx").is_file()


def test_a_factory_beside_the_user_imports_from_the_working_directory(tmp_path, monkeypatch):
    import sys

    from trtq.models import resolve_factory

    (tmp_path / "mynet_module.py").write_text("def build():\n    return 'built here'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert resolve_factory("mynet_module:build")() == "built here"
    assert str(tmp_path) not in sys.path  # put back as it was


def test_a_target_search_without_eval_data_is_checked_on_samples_it_never_saw(files):
    res = _run(files, "--target", "cosine>=0.99", "--out", str(files / "t"))
    assert res.exit_code == 0, res.stderr
    report = json.loads((files / "t" / "report.json").read_text())
    # 40 samples: 20 calibrate, 10 choose the plan, 10 are held out for the reported fidelity
    assert "split 20/10/10" in report["evaluated_on"] and report["fidelity"]["samples"] == 10
    assert report["calibration"]["samples"] == 20
    search = json.loads((files / "t" / "precision.json").read_text())["search"]
    assert search["met"] and search["metrics"]["cosine"] >= 0.99  # on the 10 search samples
