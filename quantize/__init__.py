"""Quantize: export to ONNX, fold BatchNorm, and insert TensorRT-style Q/DQ pairs.

Public API::

    from quantize import export, quantize
    int8_model = quantize("model.fp32.onnx", table)   # -> onnx.ModelProto
"""

from quantize.export import ExportParity, export, load_checkpoint
from quantize.fold import fold_batchnorm
from quantize.qdq import QuantParams, activation_params, calibration_tensors, quantize, weight_params
from quantize.rules import QDQ_RULES, InputQuant

__all__ = ["QDQ_RULES", "ExportParity", "InputQuant", "QuantParams", "activation_params", "calibration_tensors", "export",
           "fold_batchnorm", "load_checkpoint", "quantize", "weight_params"]
