"""The collector: run the model once per batch and feed every observed tensor to its observer.

Each tensor to calibrate is exposed as a graph output of a private copy of the model; one
ONNX Runtime session runs it batch by batch, each array is fed to its observer and then
dropped. Memory is bounded by one batch of activations, whatever the number of samples.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Sequence

import numpy as np
import onnx

from calibration.observers import make_observer
from calibration.onnx_model import input_specs, load_model, model_sha256
from calibration.progress import progress_bar
from calibration.readers import count_samples, iter_batches
from calibration.table import CalibrationTable
from trtq.errors import CalibrationError, ModelError, require

log = logging.getLogger(__name__)

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16}


def float_activations(model: onnx.ModelProto) -> list[str]:
    """Names of every float tensor that varies with the input: graph inputs and node outputs.

    Initializers and outputs of Constant nodes are not activations and are skipped.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError as exc:
        raise ModelError(f"shape inference failed on the model: {exc}") from exc
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    inits = {i.name for i in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in inits]
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        names.extend(o for o in node.output if o)
    return [n for n in dict.fromkeys(names) if types.get(n) in FLOAT_TYPES]


def _session(model: onnx.ModelProto, outputs: Sequence[str], providers: Sequence[str] | None):
    ort = require("onnxruntime", "cpu")
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    augmented.graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs if n not in existing)
    opts = ort.SessionOptions()
    # Basic optimizations only: fusions must not change which tensors exist or their values.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(augmented.SerializeToString(), opts,
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # ORT raises its own exception types
        raise ModelError(f"ONNX Runtime cannot load the model for calibration: {exc}") from exc


def calibrate(model: str | os.PathLike | onnx.ModelProto, data: Any, method: str = "minmax", *,
              batch_size: int = 32, samples: int | None = None,
              providers: Sequence[str] | None = None, tensors: Iterable[str] | None = None,
              progress: bool = True) -> CalibrationTable:
    """Run ``data`` through ``model`` and return the range of every float activation.

    ``data`` is any form accepted by :func:`calibration.readers.iter_batches`. ``tensors``
    restricts calibration to the named tensors (default: all float activations).
    ``samples`` caps the number of calibration samples. Ranges are computed by the
    observer registered as ``method`` in :data:`calibration.observers.OBSERVERS`.
    """
    proto = load_model(model)
    make_observer(method, "probe")  # fail fast on an unknown method
    specs = input_specs(proto)
    available = float_activations(proto)
    names = list(tensors) if tensors is not None else available
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise CalibrationError(f"tensors {unknown[:5]} are not float activations of the model")
    observers = {n: make_observer(method, n) for n in names}
    session = _session(proto, names, providers)
    seen = 0
    with progress_bar(f"calibrating ({method})", count_samples(data, samples), enabled=progress) as bar:
        for first, feed in iter_batches(data, specs, batch_size, samples):
            try:
                values = session.run(names, feed)
            except Exception as exc:  # ORT raises its own exception types
                raise CalibrationError(f"running calibration batch at sample {first} failed: {exc}") from exc
            for name, value in zip(names, values):
                value = np.asarray(value)
                if np.issubdtype(value.dtype, np.floating):
                    observers[name].update(value, first_sample=first)
            n = next(iter(feed.values())).shape[0]
            seen += n
            bar.advance(n)
    ranges = {n: o.compute() for n, o in observers.items()}
    log.info("calibrated %d tensors on %d samples (%s)", len(ranges), seen, method)
    return CalibrationTable(ranges, method, model_sha256(proto), seen)

