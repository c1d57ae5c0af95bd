"""Atomic file output: a crash or bad input never leaves a half-written file behind.

Files are written to a temporary name in the destination folder and renamed into place,
so an existing good file is replaced only by a complete new one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from trtq.core.errors import OutputError


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


@contextlib.contextmanager
def staging_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a private folder next to ``out_dir``; on success move its files into ``out_dir``.

    The folder is created before any work starts, so an unwritable destination fails
    early. On any error the staging folder is removed and ``out_dir`` is left as it was.
    """
    out = Path(out_dir)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging.", dir=parent))
    except OSError as exc:
        raise OutputError(
            f"cannot write to output folder {out}: {exc.strerror or exc}; choose another --out"
        ) from exc
    if out.exists() and not out.is_dir():
        shutil.rmtree(stage, ignore_errors=True)
        raise OutputError(f"output path {out} exists and is not a folder; choose another --out")
    try:
        yield stage
        out.mkdir(exist_ok=True)
        for item in sorted(stage.iterdir()):
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
