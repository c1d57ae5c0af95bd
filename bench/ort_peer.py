"""ONNX Runtime's calibrators as a peer in benchmarks (one place, used by every bench script)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Iterator


def ort_calibrate(model_path: str, op_types: list[str], method: str, batches: Iterator[dict]):
    """Run ONNX Runtime's calibrator ``method`` (MinMax, Percentile, Entropy) over ``batches``.

    Returns ``(seconds for collect_data + compute_data, TensorsData)``.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        cal = create_calibrator(model_path, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=getattr(CalibrationMethod, method),
                                extra_options={"symmetric": True})
        t = time.perf_counter()
        cal.collect_data(Reader())
        ranges = cal.compute_data()
        return time.perf_counter() - t, ranges
