"""``trtq calibrate`` as one call: a model's calibration table, saved (and as a TensorRT cache)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq.calibration import CalibrationTable, calibrate, save_trt_cache
from trtq.core import PreprocessSpec, check_output_file, load_model, open_data
from trtq.pipeline.job import DEFAULT_BATCH_SIZE
from trtq.quantize import calibration_tensors, upcast_float16

__all__ = ["CalibrationRun", "run_calibration"]


@dataclass(frozen=True)
class CalibrationRun:
    table: CalibrationTable
    files: tuple[Path, ...]


def run_calibration(model: Any, data: Any, *, method: str = "minmax", batch_size: int = DEFAULT_BATCH_SIZE,
                    samples: int | None = None, all_tensors: bool = False, out: str | Path = "calibration.json",
                    trt_cache: str | Path | None = None, progress: bool = True,
                    preprocess: PreprocessSpec | None = None) -> CalibrationRun:
    """Calibrate ``model`` on ``data``; save the table to ``out`` (and a TensorRT 10.x cache).

    By default only the tensors ``trtq quantize`` quantizes are calibrated; ``all_tensors``
    calibrates every float activation. ``preprocess``: how an image folder becomes inputs (its
    open size and layout come from the model). Output folders are checked before any work, and
    each file is written atomically.
    """
    targets = [check_output_file(out)] + ([check_output_file(trt_cache)] if trt_cache is not None else [])
    proto, _ = upcast_float16(load_model(model))  # as trtq quantize computes a float16 model
    tensors = None if all_tensors else calibration_tensors(proto)
    table = calibrate(proto, open_data(data, "calibration data", preprocess), method, batch_size=batch_size, samples=samples, tensors=tensors,
                      progress=progress)
    table.save(targets[0])
    if trt_cache is not None:
        save_trt_cache(table, targets[1])
    return CalibrationRun(table, tuple(targets))
