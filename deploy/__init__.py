"""Deploy: build TensorRT engines, run models (ONNX Runtime, TensorRT engines) and compare them.

Public API::

    from trtq.deploy import OrtRunner, QdqMode, compare
    report = compare("model.fp32.onnx", "model.int8.onnx", "eval.npz")
"""

from trtq.deploy.compare import ComparisonReport, OutputMetrics, Thresholds, compare, compare_outputs
from trtq.deploy.benchmark import BenchmarkReport, benchmark
from trtq.deploy.build import BuildOptions, build_engine, save_engine
from trtq.deploy.engine import Engine
from trtq.deploy.runner import OrtRunner, QdqMode, Runner, open_runner, run_all

__all__ = ["BenchmarkReport", "BuildOptions", "benchmark", "ComparisonReport", "Engine", "OrtRunner", "build_engine", "save_engine", "OutputMetrics", "QdqMode", "Runner", "Thresholds",
           "compare", "compare_outputs", "open_runner", "run_all"]
