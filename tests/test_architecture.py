"""The package structure: one namespace, layers that run one way (import-linter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import has_module

ROOT = Path(__file__).resolve().parents[1]
#: The repository's folders and the packages they install as (setup.py).
FOLDERS = {"trtq": "trtq", "calibration": "trtq/calibration", "quantize": "trtq/quantize",
           "deploy": "trtq/deploy", "models": "trtq/models"}

needs_linter = pytest.mark.skipif(not has_module("importlinter"), reason="needs the test extra (import-linter)")


def _installed_layout(dest: Path) -> Path:
    """A copy of the sources laid out as installed (trtq/calibration/...). import-linter reads a
    package's files from its folder, and in the repository the subpackages live beside trtq/."""
    for folder, target in FOLDERS.items():
        shutil.copytree(ROOT / folder, dest / target, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _lint(tree: Path) -> subprocess.CompletedProcess:
    linter = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(linter), str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)


@needs_linter
def test_layers_contract_holds_and_catches_a_violation(tmp_path):
    tree = _installed_layout(tmp_path / "src")
    kept = _lint(tree)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "Contracts: 2 kept, 0 broken" in kept.stdout
    # A lower layer importing a higher one breaks the contract.
    (tree / "trtq/calibration/_violation.py").write_text("import trtq.quantize.qdq\n")
    broken = _lint(tree)
    assert broken.returncode == 1
    assert "trtq.calibration._violation -> trtq.quantize.qdq" in broken.stdout


def test_no_generic_top_level_names():
    """trtq's modules import each other as trtq.*; a bare `import models` would pick up a user's package."""
    bad = []
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            for line in path.read_text().splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] in ("from", "import") and words[1].split(".")[0] in (
                        "calibration", "quantize", "deploy", "models"):
                    bad.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not bad, bad


def test_cli_and_pipeline_functions_stay_short():
    """cli.py parses and prints; the job lives in typed stages: no function over 60 lines."""
    import ast

    long = []
    for path in [ROOT / "trtq" / "cli.py", *sorted((ROOT / "trtq" / "pipeline").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_shared_defaults_agree_between_the_cli_and_the_library():
    from trtq import cli
    from trtq.deploy.build import DEFAULT_MAX_BATCH, BuildOptions
    from trtq.deploy.serving.triton import DEFAULT_MAX_DELAY_MS
    from trtq.pipeline import DEFAULT_BATCH_SIZE, QuantizeJob

    assert cli.BATCH_SIZE == DEFAULT_BATCH_SIZE == QuantizeJob().batch_size
    assert cli.MAX_BATCH == DEFAULT_MAX_BATCH == BuildOptions().max_batch
    assert cli.MAX_DELAY_MS == DEFAULT_MAX_DELAY_MS
    defaults = {cmd: {p.name: p.default for p in cli.main.commands[cmd].params}
                for cmd in ("quantize", "calibrate", "compare", "build", "serve", "export-triton")}
    assert {defaults[c]["batch_size"] for c in ("quantize", "calibrate", "compare")} == {DEFAULT_BATCH_SIZE}
    assert defaults["build"]["max_batch"] == DEFAULT_MAX_BATCH
    assert defaults["serve"]["max_delay_ms"] * 1000 == defaults["export-triton"]["max_queue_delay_us"]


def test_public_modules_declare_all():
    import importlib

    for name in ("trtq", "trtq.core", "trtq.calibration", "trtq.quantize", "trtq.deploy", "trtq.deploy.serving",
                 "trtq.models", "trtq.pipeline"):
        module = importlib.import_module(name)
        assert module.__all__, name
        for attr in module.__all__:
            assert getattr(module, attr) is not None, (name, attr)
    import trtq

    shadowing = set(trtq.__all__) & {"core", "calibration", "quantize", "deploy", "models", "pipeline", "cli"}
    assert not shadowing
