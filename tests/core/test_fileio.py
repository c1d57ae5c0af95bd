"""Outputs as one unit: checked before any work, published at once, cleaned up on any stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

from trtq.core import staging_dir
from trtq.core.errors import OutputError


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_publish_replaces_the_set_and_keeps_other_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("old")
    (out / "notes.txt").write_text("the user's")
    with staging_dir(out, ("report.json",)) as stage:
        (stage / "report.json").write_text("new")
        (stage / "model.onnx").write_text("model")
        assert (out / "report.json").read_text() == "old"  # nothing visible until the end
    assert _snapshot(out) == {p: v.encode() for p, v in
                              {"report.json": "new", "model.onnx": "model", "notes.txt": "the user's"}.items()}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old folder left


def test_an_error_leaves_the_folder_byte_for_byte(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("old")
    before = _snapshot(out)
    with pytest.raises(RuntimeError):
        with staging_dir(out) as stage:
            (stage / "report.json").write_text("new")
            raise RuntimeError("fails mid-job")
    assert _snapshot(out) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("case", ["file", "dangling", "folder_in_the_way"])
def test_bad_destinations_fail_before_any_work(tmp_path, case):
    out = tmp_path / "out"
    if case == "file":
        out.write_text("x")
    elif case == "dangling":
        out.symlink_to(tmp_path / "nowhere")
    else:
        (out / "report.json").mkdir(parents=True)
    ran = []
    with pytest.raises(OutputError, match="not a folder|does not exist|is a folder"):
        with staging_dir(out, ("report.json",)):
            ran.append(True)
    assert not ran and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_refuses_a_folder_in_the_way_in_the_first_second(tmp_path, cnn_path):
    from trtq.cli import main

    (tmp_path / "out" / "model.int8.onnx").mkdir(parents=True)
    started = time.monotonic()
    res = CliRunner().invoke(main, ["quantize", "--onnx", str(cnn_path), "--calib-data", str(cnn_path),
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "is a folder" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 5
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.int8.onnx"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_job_removes_the_staging_folder(tmp_path, signum):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("old")
    script = textwrap.dedent(f"""
        import time
        from trtq.core import staging_dir
        with staging_dir({str(out)!r}) as stage:
            (stage / "report.json").write_text("new")
            print("staged", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "staged"
    proc.send_signal(signum)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "report.json").read_text() == "old"


def test_a_killed_runs_staging_folder_is_swept_by_the_next_run(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.staging.{dead.stdout.strip()}.abc123"
    stale.mkdir()
    (stale / "model.onnx").write_text("half")
    live = tmp_path / f".out.staging.{os.getpid()}.xyz789"  # a running job's: left alone
    live.mkdir()
    with staging_dir(tmp_path / "out") as stage:
        (stage / "a.txt").write_text("a")
    assert not stale.exists() and live.exists()


def test_a_failing_write_is_an_output_error_and_leaves_nothing(tmp_path, monkeypatch):
    """A full disk (simulated: the write raises ENOSPC) names the file; no temporary is left."""
    import errno

    from trtq.core import atomic_write_bytes

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fd, mode):
            self.file = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "m.onnx").write_bytes(b"old")
    monkeypatch.setattr(os, "fdopen", FullDisk)
    with pytest.raises(OutputError, match=r"cannot write .*m.onnx .*No space left on device"):
        atomic_write_bytes(tmp_path / "m.onnx", b"new" * 1000)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"] and (tmp_path / "m.onnx").read_bytes() == b"old"
