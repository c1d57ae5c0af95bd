"""TensorRT 10.x calibration cache text format, for users still on implicit-int8 TensorRT.

::

    TRT-101401-EntropyCalibration2
    images: 3c010204
    conv1_out: 3d4ccccd

The first line is ``TRT-<version>-<algorithm>``; each other line is ``name: <hex>``, the
big-endian IEEE-754 float32 bit pattern of the scale ``amax / 127`` (no ``0x``).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np

from trtq.calibration.table import CalibrationTable, TensorRange
from trtq.core.errors import CalibrationError
from trtq.core.fileio import atomic_write_text

#: The TensorRT algorithm name written for each trtq method (TensorRT 10 knows these four).
ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}
DEFAULT_ALGORITHM = "EntropyCalibration2"
DEFAULT_VERSION = 101401
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{1,8})$")


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text.rjust(8, "0")))[0]


def to_trt_cache(table: CalibrationTable, version: int = DEFAULT_VERSION, algorithm: str | None = None) -> str:
    """The table as TensorRT 10.x calibration cache text (scale = amax / 127 per tensor)."""
    algo = algorithm or ALGORITHMS.get(table.method, DEFAULT_ALGORITHM)
    lines = [f"TRT-{version}-{algo}"]
    for name, r in sorted(table.ranges.items()):
        lines.append(f"{name}: {scale_to_hex(r.amax / 127.0)}")
    return "\n".join(lines) + "\n"


def save_trt_cache(table: CalibrationTable, path: str | os.PathLike, **kwargs) -> Path:
    return atomic_write_text(path, to_trt_cache(table, **kwargs))


_SMALLEST_SCALE = float(np.finfo(np.float32).tiny)


def from_trt_cache(text: str, model_sha256: str = "") -> CalibrationTable:
    """Parse a TensorRT calibration cache into a symmetric table (``lo = -amax``, ``hi = amax``).

    The cache records no model hash: ``model_sha256`` is empty unless given, so quantizing
    with it needs ``force=True`` (tensor names must still match the model).
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or not (header := _HEADER.match(lines[0])):
        first = lines[0][:60] if lines else "(empty)"
        raise CalibrationError(f"not a TensorRT calibration cache: the first line is {first!r}, "
                               "expected 'TRT-<version>-<algorithm>'")
    method = f"trt-cache:{header.group(2)}"
    ranges = {}
    for number, line in enumerate(lines[1:], start=2):
        m = _LINE.match(line)
        if not m:
            raise CalibrationError(f"TensorRT calibration cache line {number} is malformed: {line[:80]!r}")
        name, scale = m.group(1), hex_to_scale(m.group(2))
        if not (scale >= _SMALLEST_SCALE and scale < float("inf")):
            # A zero or denormal scale would quantize the tensor to nothing (trtq would otherwise
            # fall back to amax 1.0, silently); NaN/inf/negative are corrupt.
            raise CalibrationError(f"TensorRT calibration cache line {number}: scale {scale:g} of '{name}' "
                                   "is not a positive, normal float32 (zero, denormal, negative, NaN or inf); "
                                   "recalibrate that model with `trtq calibrate`, or fix the cache")
        amax = scale * 127.0
        ranges[name] = TensorRange(name, -amax, amax, method, 0)
    return CalibrationTable(ranges, method, model_sha256, 0)


def load_trt_cache(path: str | os.PathLike, model_sha256: str = "") -> CalibrationTable:
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise CalibrationError(f"calibration cache {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"calibration cache {path} cannot be read as text: {exc}") from exc
    return from_trt_cache(text, model_sha256)


def load_table(path: str | os.PathLike, model=None, *, force: bool = False) -> CalibrationTable:
    """Load a trtq JSON table or a TensorRT calibration cache (detected from its first line).

    With ``model`` (a path or ModelProto), the table must belong to it: a JSON table's
    SHA-256 must match, and every tensor of a TensorRT cache (which records no hash) must
    exist in the model. ``force=True`` skips both checks.
    """
    from trtq.core.onnx_model import load_model, model_sha256

    path = Path(path)
    try:
        head = path.read_bytes()[:4]
    except FileNotFoundError:
        raise CalibrationError(f"calibration table {path} does not exist") from None
    except OSError as exc:
        raise CalibrationError(f"calibration table {path} cannot be read: {exc}") from exc
    is_cache = head.startswith(b"TRT-")
    table = load_trt_cache(path) if is_cache else CalibrationTable.load(path)
    if model is None:
        return table
    proto = load_model(model)
    sha = model_sha256(proto)
    if is_cache:
        known = {i.name for i in proto.graph.input} | {o for n in proto.graph.node for o in n.output}
        unknown = sorted(set(table.ranges) - known)
        if unknown and not force:
            raise CalibrationError(f"calibration cache {path} names {len(unknown)} tensors the model does not "
                                   f"have (e.g. {unknown[:3]}); it was written for another model")
        return CalibrationTable(table.ranges, table.method, sha, table.samples)
    if table.model_sha256 != sha and not force:
        raise CalibrationError(f"calibration table {path} was computed for another model (SHA-256 "
                               f"{table.model_sha256[:12]}..., this model {sha[:12]}...): recalibrate this model "
                               "(trtq calibrate MODEL --data DATA), or, in Python, load_table(..., force=True) if only "
                               "its weights changed and every tensor name is the same")
    return table
