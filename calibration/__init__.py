"""Calibration: run representative data through a model and record activation ranges.

Public API::

    from calibration import calibrate, load_table, save_trt_cache
    table = calibrate("model.onnx", "calib.npz", method="entropy")
    table.save("calibration.json")                  # versioned JSON
    save_trt_cache(table, "calibration.cache")      # TensorRT 10.x cache text
    table = load_table("calibration.json", model="model.onnx")   # refuses another model's table

Methods (``OBSERVERS``): minmax, percentile, entropy, mse, auto.
"""

from calibration.collect import calibrate, float_activations
from calibration.observers import (OBSERVERS, AutoObserver, EntropyObserver, MinMaxObserver, MSEObserver,
                                   Observer, PercentileObserver)
from calibration.onnx_model import InputSpec, input_specs, load_model, model_sha256
from calibration.readers import ImageFolderReader, PreprocessSpec, iter_batches, load_arrays
from calibration.table import CalibrationTable, TensorRange
from calibration.trt_cache import from_trt_cache, load_table, load_trt_cache, save_trt_cache, to_trt_cache

__all__ = [
    "OBSERVERS", "AutoObserver", "CalibrationTable", "EntropyObserver", "ImageFolderReader", "InputSpec",
    "MSEObserver", "MinMaxObserver", "Observer", "PercentileObserver", "PreprocessSpec", "TensorRange",
    "calibrate", "float_activations", "from_trt_cache", "input_specs", "iter_batches", "load_arrays",
    "load_model", "load_table", "load_trt_cache", "model_sha256", "save_trt_cache", "to_trt_cache",
]
