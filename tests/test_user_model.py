"""A user's own PyTorch module (``--model module:callable``, importable from the working
directory) is exported in a child process: it must still import from there, and its failures
must still be one clear ``error:`` line with nothing written."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from tests.conftest import needs_torch
from trtq.cli import main

USER_MODULE = '''
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def build():
    return Net()


def broken():
    raise ValueError("the user's factory is broken")
'''


def _setup(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text(USER_MODULE)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(0, 1, (16, 3, 8, 8)).astype(np.float32))
    monkeypatch.chdir(tmp_path)  # the module is importable only from here


@needs_torch
def test_a_users_module_from_the_working_directory_exports_in_the_child(tmp_path, monkeypatch):
    _setup(tmp_path, monkeypatch)
    result = CliRunner().invoke(main, ["quantize", "--model", "usernet:build", "--calib-data", "calib.npy",
                                       "--out", "out", "--no-progress", "--eval-samples", "8"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.int8.onnx").is_file()
    assert "export: PyTorch vs ONNX max abs error" in result.output


@needs_torch
def test_a_failing_users_module_is_one_error_line_and_writes_nothing(tmp_path, monkeypatch):
    _setup(tmp_path, monkeypatch)
    result = CliRunner().invoke(main, ["quantize", "--model", "usernet:broken", "--calib-data", "calib.npy",
                                       "--out", "out", "--no-progress"])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    assert "ValueError: the user's factory is broken" in err
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(main, ["quantize", "--model", "nosuchmodule:build", "--calib-data", "calib.npy",
                                       "--out", "out", "--no-progress"])
    assert result.exit_code == 2 and "cannot import model factory 'nosuchmodule:build'" in result.stderr, result.output
    assert not (tmp_path / "out").exists()
