"""Deploy: run models (ONNX Runtime now, TensorRT engines next) and compare them.

Public API::

    from deploy import OrtRunner, QdqMode, compare
    report = compare("model.fp32.onnx", "model.int8.onnx", "eval.npz")
"""

from deploy.compare import ComparisonReport, OutputMetrics, Thresholds, compare, compare_outputs
from deploy.runner import OrtRunner, QdqMode, Runner, open_runner, run_all

__all__ = ["ComparisonReport", "OrtRunner", "OutputMetrics", "QdqMode", "Runner", "Thresholds",
           "compare", "compare_outputs", "open_runner", "run_all"]
