"""Quantize: export to ONNX, fold BatchNorm, and insert TensorRT-style Q/DQ pairs.

Public API::

    from trtq.quantize import export, quantize
    int8_model = quantize("model.fp32.onnx", table)   # -> onnx.ModelProto
    mixed = apply_plan("model.fp32.onnx", table, PrecisionPlan.from_flags("int8", fp16=["Gemm"]))
    weights = gptq_weights("model.fp32.onnx", "calib.npz").weights   # GPTQ-rounded int8 weights
    # For ONNX Runtime on CPU; the table must cover calibration_tensors(model, "ort-cpu").
    cpu_int8 = quantize("model.fp32.onnx", cpu_table, target="ort-cpu")
"""

from trtq.quantize.export import ExportParity, export, load_checkpoint
from trtq.quantize.fold import fold_batchnorm
from trtq.quantize.fp16 import convert_fp16
from trtq.quantize.mixed import MixedModel, apply_plan
from trtq.quantize.precision import NodePrecision, Precision, PrecisionPlan, PrecisionRule
from trtq.quantize.passes import FoldBatchNormPass, RemoveUnusedInitializersPass, apply_passes, upcast_float16
from trtq.quantize.qdq import QuantParams, activation_params, calibration_tensors, quantize, weight_params
from trtq.quantize.results import ClippedTable, RoundedWeights, Transformed
from trtq.quantize.rounding import gptq_weights, substitute_weights
from trtq.quantize.rules import QDQ_RULES, InputQuant
from trtq.quantize.targets import QuantTarget, TargetRuntime

__all__ = ["upcast_float16", "QDQ_RULES", "ClippedTable", "ExportParity", "FoldBatchNormPass", "InputQuant", "MixedModel", "NodePrecision",
           "Precision", "PrecisionPlan", "PrecisionRule", "QuantParams", "QuantTarget", "RemoveUnusedInitializersPass",
           "RoundedWeights", "TargetRuntime", "Transformed", "activation_params", "apply_passes", "apply_plan",
           "calibration_tensors", "convert_fp16", "export", "fold_batchnorm", "gptq_weights", "load_checkpoint",
           "quantize", "substitute_weights", "weight_params"]
