"""Calibration: run representative data through a model and record activation ranges.

Public API::

    from trtq.calibration import calibrate, load_table, save_trt_cache
    table = calibrate("model.onnx", "calib.npz", method="entropy")
    table.save("calibration.json")                  # versioned JSON
    save_trt_cache(table, "calibration.cache")      # TensorRT 10.x cache text
    table = load_table("calibration.json", model="model.onnx")   # refuses another model's table

Methods (``OBSERVERS``): minmax, percentile, entropy, mse, auto. Model loading and data
readers live in :mod:`trtq.core`.
"""

from trtq.calibration.collect import Tap, calibrate, float_activations
from trtq.calibration.observers import (OBSERVERS, AutoObserver, EntropyObserver, MinMaxObserver, MSEObserver,
                                        Observer, PercentileObserver)
from trtq.calibration.table import CalibrationTable, TensorRange
from trtq.calibration.trt_cache import from_trt_cache, load_table, load_trt_cache, save_trt_cache, to_trt_cache

__all__ = [
    "OBSERVERS", "AutoObserver", "CalibrationTable", "EntropyObserver", "MSEObserver", "MinMaxObserver", "Observer",
    "PercentileObserver", "Tap", "TensorRange", "calibrate", "float_activations", "from_trt_cache", "load_table",
    "load_trt_cache", "save_trt_cache", "to_trt_cache",
]
