"""ONNX Runtime's calibrators as a peer in benchmarks (one place, used by every bench script)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Iterator

import onnx


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


def ort_quantize_static(model: onnx.ModelProto, calib: dict, *, for_cpu: bool = False,
                        reduce_range: bool = False) -> onnx.ModelProto:
    """ONNX Runtime's quantize_static as people use it for TensorRT (symmetric int8), or with
    ``for_cpu`` as its documentation recommends for its own CPU kernels (uint8 activations
    with zero points, int8 weights, ``reduce_range`` on CPUs without VNNI): its default op
    types, MinMax, per-channel weights, QDQ format."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(calib.values())))
            self.batches = iter([{k: v[i:i + 16] for k, v in calib.items()} for i in range(0, n, 16)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8 if for_cpu else QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": not for_cpu, "WeightSymmetric": True})
        return onnx.load(dst)
