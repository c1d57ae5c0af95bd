"""trtq: post-training quantization and TensorRT deployment.

The main calls, importable from here (each loads its part of trtq on first use)::

    import trtq
    result = trtq.quantize_model(onnx="model.onnx", calib_data="calib.npy", out_dir="out")  # = `trtq quantize`
    table = trtq.calibrate("model.onnx", "calib.npy")                                       # = `trtq calibrate`
    report = trtq.compare("model.onnx", "out/model.int8.onnx", "eval.npy")                  # = `trtq compare`
    engine = trtq.build_engine("out/model.int8.onnx")                                       # = `trtq build`

Layers, one way: ``trtq.core`` <- ``trtq.calibration`` <- ``trtq.quantize`` <-
``trtq.deploy`` / ``trtq.models`` <- ``trtq.pipeline`` <- ``trtq.cli``. No name here shadows
a subpackage.
"""

from __future__ import annotations

import importlib

# name -> the module that defines it; imported on first access (PEP 562) so that
# `import trtq.core` stays light and nothing here imports torch or TensorRT.
_API = {
    "__version__": "trtq.core",
    "TrtqError": "trtq.core",
    "open_data": "trtq.core",
    "calibrate": "trtq.calibration",
    "CalibrationTable": "trtq.calibration",
    "PrecisionPlan": "trtq.quantize",
    "QuantTarget": "trtq.quantize",
    "compare": "trtq.deploy",
    "build_engine": "trtq.deploy",
    "BuildOptions": "trtq.deploy",
    "open_runner": "trtq.deploy",
    "QuantizeJob": "trtq.pipeline",
    "quantize_model": "trtq.pipeline",
    "run_sensitivity": "trtq.pipeline",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'trtq' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
