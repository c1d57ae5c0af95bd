"""trtq as a user installs and imports it: beside their own packages, and from a built wheel."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import make_cnn

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("quantize", "calibrate", "sensitivity", "compare", "build", "inspect", "bench", "serve",
               "export-triton", "models")


def _tiny_inputs(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(make_cnn(), folder / "tiny.onnx")
    np.save(folder / "calib.npy", np.random.default_rng(0).normal(0, 1, (24, 3, 8, 8)).astype(np.float32))
    return folder / "tiny.onnx", folder / "calib.npy"


def _user_project(root: Path) -> Path:
    """A project whose own packages are named like trtq's folders, each defining something else."""
    for name in ("models", "quantize", "calibration", "deploy"):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"WHO = 'the user\\'s {name}'\n")
    return root


def test_user_packages_named_like_ours_do_not_clash(tmp_path):
    project = _user_project(tmp_path / "project")
    model, calib = _tiny_inputs(project)
    env = {**os.environ, "PYTHONPATH": str(project)}
    cli = subprocess.run([sys.executable, "-m", "trtq.cli", "quantize", "--onnx", str(model), "--calib-data",
                          str(calib), "--out", "out-cli", "--no-progress", "--eval-samples", "16"],
                         cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    assert (project / "out-cli" / "model.int8.onnx").is_file()
    script = project / "use_api.py"
    script.write_text(
        "import models, quantize, calibration, deploy\n"
        "import trtq\n"
        "result = trtq.quantize_model(onnx='tiny.onnx', calib_data='calib.npy', out_dir='out-api', progress=False,\n"
        "                             eval_samples=16)\n"
        "import sys\n"
        "print(models.WHO, quantize.WHO, calibration.WHO, deploy.WHO, sep='|')\n"
        "print(sys.modules['models'].__file__)\n"
        "print(result.report.outputs[0].cosine)\n")
    api = subprocess.run([sys.executable, str(script)], cwd=project, env=env, capture_output=True, text=True,
                         timeout=600)
    assert api.returncode == 0, api.stderr
    who, models_file, cosine = api.stdout.strip().splitlines()[-3:]
    assert who == "the user's models|the user's quantize|the user's calibration|the user's deploy"
    assert Path(models_file).parent == project / "models"
    assert float(cosine) > 0.9
    assert (project / "out-api" / "model.int8.onnx").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    """The regular (non-editable) install: build the wheel, install it into a fresh virtual
    environment, and use it from a folder outside the checkout."""
    # Built from a copy: an in-tree build would leave build/ in the checkout, and setuptools
    # never deletes stale files there (a removed module would ship again).
    source, dist = tmp_path / "source", tmp_path / "dist"
    for name in ("setup.py", "pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for folder in ("trtq", "calibration", "quantize", "deploy", "models"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = dist.glob("trtq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"trtq", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                                                 + ".dist-info"}
    for package in ("core", "calibration", "quantize", "deploy", "deploy/serving", "models", "pipeline"):
        assert f"trtq/{package}/__init__.py" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[cpu,serve]"],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-2000:]
    work = tmp_path / "elsewhere"
    model, calib = _tiny_inputs(work)
    trtq = str(venv / "bin" / "trtq")

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([trtq, *args], cwd=work, capture_output=True, text=True, timeout=600,
                              env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)})
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
        return done

    assert "quantize" in run("--help").stdout
    for command in SUBCOMMANDS:
        assert "Usage" in run(command, "--help").stdout
    run("quantize", "--onnx", "tiny.onnx", "--calib-data", "calib.npy", "--out", "out", "--no-progress",
        "--eval-samples", "16")
    assert json.loads((work / "out" / "report.json").read_text())["fidelity"]["outputs"][0]["cosine"] > 0.9
    run("export-triton", "out/model.int8.onnx", "--repo", "repo")
    assert (work / "repo" / "model" / "config.pbtxt").is_file()

    port = _free_port()
    server = subprocess.Popen([trtq, "serve", "out/model.int8.onnx", "--port", str(port)], cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "trtq serve did not become ready in 60 s"
                time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(timeout=30)
