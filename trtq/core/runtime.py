"""ONNX Runtime sessions with one clear error when a model cannot run here.

Every part of trtq that runs a model (calibration, SmoothQuant, GPTQ, evaluation, serving)
opens its session through :func:`ort_session`, so an opset newer than this machine knows, a
custom-domain op, or any other load failure is one :class:`ModelError` naming the cause
instead of ONNX Runtime's C++ exception text from deep inside a transform.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx

from trtq.core.errors import ModelError, require

__all__ = ["STANDARD_DOMAINS", "check_runnable", "ort_session"]

#: Operator domains ONNX Runtime's CPU provider implements.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def check_runnable(model: onnx.ModelProto, what: str = "the model") -> None:
    """Refuse, with the reason, a model ONNX Runtime cannot load here: an opset newer than the
    installed onnx knows (ONNX Runtime runs released opsets only) or ops in a custom domain."""
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise ModelError(f"{what} uses opset {opset.version}; the installed onnx {onnx.__version__} knows opsets up "
                             f"to {newest}, and ONNX Runtime runs released opsets only: export it again with a "
                             f"released opset (e.g. torch.onnx.export(..., opset_version=17))")
    custom = sorted({f"{n.domain}:{n.op_type}" for n in _all_nodes(model.graph) if n.domain not in STANDARD_DOMAINS})
    local = {(f.domain, f.name) for f in model.functions}
    custom = [c for c in custom if tuple(c.split(":", 1)) not in local]
    if custom:
        raise ModelError(f"{what} uses custom op{'s' if len(custom) > 1 else ''} {', '.join(custom[:3])}, which "
                         "ONNX Runtime has no implementation of here: trtq runs models on ONNX Runtime's standard "
                         "ops; export the model without it (or replace it with standard ops)")


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _all_nodes(sub)


#: ONNX Runtime rewrites that drop a Relu/Clip in front of a QuantizeLinear whose range they
#: think makes it redundant. Wrong for FP8 (ORT 1.32 drops the Relu before a float8e4m3fn Q,
#: letting negative values through: cosine 0.80 instead of 0.9997 on a small CNN; the Clip
#: rewrite fails to load the model), and never what TensorRT computes. Left out for every
#: model with fp8 Q/DQ, and by the runner whenever Q/DQ run in float.
QDQ_REWRITES = ("ReluQuantRewrite", "ClipQuantRewrite")


def has_fp8(model: onnx.ModelProto) -> bool:
    """Whether the model holds float8e4m3fn initializers (fp8 Q/DQ zero points and weights)."""
    return any(i.data_type == onnx.TensorProto.FLOAT8E4M3FN for i in model.graph.initializer)


#: Initializers of at least this many bytes are handed to ONNX Runtime as arrays (see
#: :func:`ort_session`); smaller ones stay in the serialized model.
EXTERNAL_BYTES = 1 << 16
#: numpy dtypes of the ONNX tensor types handed over as arrays (others stay serialized).
_NUMPY_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
                onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64"}


def _without_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[tuple[str, np.ndarray]]]:
    """``model`` with each large raw-data initializer of its main graph replaced by an
    external-data stub of the same name, type and shape, and those initializers' values.
    Built field by field: the weights are read once, never copied inside a protobuf."""
    big = [t for t in model.graph.initializer
           if t.data_type in _NUMPY_TYPES and t.HasField("raw_data") and t.ByteSize() >= EXTERNAL_BYTES
           and t.data_location != onnx.TensorProto.EXTERNAL]
    if not big:
        return model, []
    out = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(out, field, value)
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            _copy_field(out.graph, field, value)
    stubs = {t.name for t in big}
    weights = []
    for t in model.graph.initializer:
        if t.name not in stubs:
            out.graph.initializer.add().CopyFrom(t)
            continue
        stub = out.graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims,
                                         data_location=onnx.TensorProto.EXTERNAL)
        # Never read: ONNX Runtime takes the values from the session options.
        stub.external_data.add(key="location", value="trtq-in-memory")
        raw = t.raw_data
        stub.external_data.add(key="length", value=str(len(raw)))
        array = np.frombuffer(raw, dtype=np.dtype(_NUMPY_TYPES[t.data_type]).newbyteorder("<")).reshape(tuple(t.dims))
        weights.append((t.name, array))
    return out, weights


def _copy_field(target, field, value) -> None:
    repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
    if repeated:
        getattr(target, field.name).extend(value)
    elif field.message_type is not None:
        getattr(target, field.name).CopyFrom(value)
    else:
        setattr(target, field.name, value)


def ort_session(model: onnx.ModelProto, options: Any = None, providers: Sequence[str] | None = None,
                what: str = "the model", disabled_optimizers: Sequence[str] = ()):
    """An ``onnxruntime.InferenceSession`` for ``model`` (CPU unless ``providers`` say otherwise);
    ``disabled_optimizers``: ONNX Runtime graph rewrites to leave out, by name (with
    :data:`QDQ_REWRITES` always, for a model with fp8 Q/DQ).

    Memory patterns are off: ONNX Runtime's pattern (one block planned from the first run)
    held 2x the memory of planning each run in its arena on trtq's passes, and was not faster
    (a calibration graph of every EfficientNet-Lite0 tensor, 16 samples a run: 1725 -> 847 MB,
    3.1 -> 1.7 s; MiniLM: 934 -> 454 MB, same time).
    """
    ort = require("onnxruntime", "cpu")
    check_runnable(model, what)
    if has_fp8(model):
        disabled_optimizers = tuple(dict.fromkeys((*disabled_optimizers, *QDQ_REWRITES)))
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    options.enable_mem_pattern = False
    light, weights = _without_weights(model)
    if weights:
        # The weights go to ONNX Runtime as arrays, not inside the serialized model: on
        # all-MiniLM-L6-v2 (90 MB) a session took 0.41 s from the serialized model and 0.15 s
        # so, and no serialized copy of the weights is held while it loads.
        names, arrays = zip(*weights)
        options.add_external_initializers(list(names), [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays])
    try:
        return ort.InferenceSession(light.SerializeToString(), options,
                                    providers=list(providers or ["CPUExecutionProvider"]),
                                    disabled_optimizers=list(disabled_optimizers) or None)
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        text = str(exc).split(" : ", 3)[-1].strip()
        raise ModelError(f"ONNX Runtime cannot load {what}: {text[:400]}") from exc
