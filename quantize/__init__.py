"""Quantize: export to ONNX, fold BatchNorm, and insert TensorRT-style Q/DQ pairs.

Public API::

    from quantize import export, quantize
    int8_model = quantize("model.fp32.onnx", table)   # -> onnx.ModelProto
    mixed = apply_plan("model.fp32.onnx", table, PrecisionPlan.from_flags("int8", fp16=["Gemm"]))
"""

from quantize.export import ExportParity, export, load_checkpoint
from quantize.fold import fold_batchnorm
from quantize.fp16 import convert_fp16
from quantize.mixed import MixedModel, apply_plan
from quantize.precision import NodePrecision, Precision, PrecisionPlan, PrecisionRule
from quantize.qdq import QuantParams, activation_params, calibration_tensors, quantize, weight_params
from quantize.rules import QDQ_RULES, InputQuant

__all__ = ["QDQ_RULES", "ExportParity", "InputQuant", "MixedModel", "NodePrecision", "Precision", "PrecisionPlan",
           "PrecisionRule", "QuantParams", "activation_params", "apply_plan", "calibration_tensors", "convert_fp16",
           "export", "fold_batchnorm", "load_checkpoint", "quantize", "weight_params"]
