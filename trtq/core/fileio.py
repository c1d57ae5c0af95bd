"""Atomic file output: a crash or bad input never leaves a half-written file behind.

Files are written to a temporary name in the destination folder and renamed into place,
so an existing good file is replaced only by a complete new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from trtq.core.errors import OutputError

log = logging.getLogger(__name__)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except OSError as exc:  # a full disk (ENOSPC), a file too large (EFBIG), no permission (EACCES)...
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"cannot write {path} ({len(data) / 1e6:.3g} MB): {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_STAGING = ".{name}.staging.{pid}."


def _sweep_stale_stages(out: Path) -> list[Path]:
    """Remove staging folders left next to ``out`` by runs that were killed (SIGKILL, power loss):
    their process id is in the name and that process no longer exists."""
    removed = []
    prefix = f".{out.name}.staging."
    for path in out.parent.glob(prefix + "*"):
        pid_text = path.name[len(prefix):].split(".", 1)[0]
        if not pid_text.isdigit() or not path.is_dir():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # still running (another job writing the same folder)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def check_output_folder(out_dir: str | os.PathLike, files: tuple[str, ...] = ()) -> Path:
    """Refuse an output folder that cannot receive the outputs, before any work: a file or a
    dangling symlink where the folder goes, an unwritable parent, or a folder in the way of one
    of ``files``. Returns the folder (symlinks resolved)."""
    out = Path(out_dir)
    if out.is_symlink() and not out.exists():
        raise OutputError(f"output folder {out} is a symlink to {os.readlink(out)}, which does not exist")
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {out_dir} exists and is not a folder; choose another --out")
    for name in files:
        if (out / name).is_dir():
            raise OutputError(f"{out_dir}/{name} is a folder; the output file {name} cannot replace it: "
                              "move it away or choose another --out")
    return out


def check_output_file(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output file path that cannot be written: a folder, a
    dangling symlink, or a parent folder that does not exist."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise OutputError(f"output {path} is a symlink to {os.readlink(path)}, which does not exist")
    if path.is_dir():
        raise OutputError(f"output {path} is a folder; give a file path")
    if not path.resolve().parent.is_dir():
        raise OutputError(f"cannot write {path}: the folder {path.parent} does not exist")
    if not os.access(path.resolve().parent, os.W_OK):
        raise OutputError(f"cannot write {path}: the folder {path.parent} is not writable")
    return path


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """While staging (main thread only): SIGTERM, as `kill`, Docker and CI send it, unwinds like
    Ctrl-C does, so the staging folder is removed and the output folder left as it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def staging_dir(out_dir: str | os.PathLike, files: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a private folder next to ``out_dir``; on success publish it as ``out_dir``'s new
    contents in one step.

    Before any work: the destination is checked (:func:`check_output_folder`, with the
    ``files`` the job will write) and staging folders of killed runs are swept. Publishing:
    files already in ``out_dir`` that the job does not write are hard-linked (or copied) into
    the staged folder, then the staged folder replaces ``out_dir`` by renames, so a reader sees
    either the old set or the new one, never a mix. On any error, SIGINT or SIGTERM the staging
    folder is removed and ``out_dir`` is left as it was.
    """
    out = check_output_folder(out_dir, files)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for stale in _sweep_stale_stages(out):
            log.warning("removed %s, left by an earlier run that was killed", stale)
        stage = Path(tempfile.mkdtemp(prefix=_STAGING.format(name=out.name, pid=os.getpid()), dir=parent))
    except OSError as exc:
        raise OutputError(
            f"cannot write to output folder {out_dir}: {exc.strerror or exc}; choose another --out"
        ) from exc
    try:
        with _terminate_as_exit():
            yield stage
            _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, out: Path) -> None:
    if out.is_dir():
        for item in out.iterdir():
            target = stage / item.name
            if target.exists():
                if item.is_dir() and not target.is_dir():
                    raise OutputError(f"{item} is a folder; the output file {item.name} cannot replace it")
                continue  # the new file replaces it
            if item.is_dir():
                shutil.copytree(item, target, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(item, target)
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / "previous")
        try:
            os.replace(stage, out)
        except BaseException:
            os.replace(old / "previous", out)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, out)
    os.chmod(out, 0o777 & ~_umask())  # mkdtemp made it 0700


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)
