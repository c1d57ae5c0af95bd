"""ONNX Runtime's calibrators as a peer in benchmarks (one place, used by every bench script)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Iterator


def ort_calibrate(model_path: str, op_types: list[str], method: str, batches: Iterator[dict]):
    """Run ONNX Runtime's calibrator ``method`` (MinMax, Percentile, Entropy) over ``batches``.

    Returns ``(seconds, TensorsData)``; the time covers the whole calibration, as trtq's
    ``calibrate`` call does: ``create_calibrator`` (loading and augmenting the model, the
    session), ``collect_data`` and ``compute_data``.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cal = create_calibrator(model_path, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=getattr(CalibrationMethod, method),
                                extra_options={"symmetric": True})
        cal.collect_data(Reader())
        ranges = cal.compute_data()
        return time.perf_counter() - t, ranges
