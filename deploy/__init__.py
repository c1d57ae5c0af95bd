"""Deploy: build TensorRT engines, run models (ONNX Runtime, TensorRT engines) and compare them.

Public API::

    from trtq.deploy import BuildOptions, OrtRunner, build_engine, compare
    report = compare("model.fp32.onnx", "model.int8.onnx", "eval.npz")   # -> ComparisonReport
    built = build_engine("model.int8.onnx", BuildOptions(max_batch=8))   # -> BuiltEngine
    built.save("model.int8.engine")                                      # + model.int8.engine.json (EngineInfo)
"""

from trtq.deploy.benchmark import BenchmarkReport, benchmark
from trtq.deploy.build import DEFAULT_MAX_BATCH, BuildOptions, build_engine
from trtq.deploy.compare import ComparisonReport, OutputMetrics, Thresholds, compare, compare_outputs
from trtq.deploy.engine import Engine
from trtq.deploy.engine_info import BuiltEngine, EngineInfo, EngineTensor, save_engine
from trtq.deploy.runner import OrtRunner, QdqMode, Runner, open_runner, run_all

__all__ = ["DEFAULT_MAX_BATCH", "BenchmarkReport", "BuildOptions", "BuiltEngine", "ComparisonReport", "Engine",
           "EngineInfo", "EngineTensor", "OrtRunner", "OutputMetrics", "QdqMode", "Runner", "Thresholds", "benchmark",
           "build_engine", "compare", "compare_outputs", "open_runner", "run_all", "save_engine"]
