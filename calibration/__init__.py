"""Calibration: run representative data through a model and record activation ranges.

Public API::

    from calibration import calibrate, CalibrationTable
    table = calibrate("model.onnx", "calib.npz", method="minmax")
    table.save("calibration.json")
"""

from calibration.collect import calibrate, float_activations
from calibration.observers import OBSERVERS, MinMaxObserver, Observer
from calibration.onnx_model import InputSpec, input_specs, load_model, model_sha256
from calibration.readers import ImageFolderReader, PreprocessSpec, iter_batches, load_arrays
from calibration.table import CalibrationTable, TensorRange

__all__ = [
    "OBSERVERS", "CalibrationTable", "ImageFolderReader", "InputSpec", "MinMaxObserver",
    "Observer", "PreprocessSpec", "TensorRange", "calibrate", "float_activations",
    "input_specs", "iter_batches", "load_arrays", "load_model", "model_sha256",
]
