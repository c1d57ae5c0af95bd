"""The KServe v2 inference protocol (the one Triton speaks): model signatures, request
parsing and response encoding, with the binary tensor data extension.

Pure functions over bytes and NumPy arrays; no HTTP here. A request that does not fit
the protocol or the model raises :class:`InvalidRequest`, whose message is what the client
gets back in ``{"error": ...}``.

Binary tensor extension: a body may be a JSON header followed by raw tensor bytes; the
``Inference-Header-Content-Length`` header gives the JSON's length, and each binary input
carries ``"parameters": {"binary_data_size": N}``. Outputs are returned the same way when
the request asks for it (per output ``"binary_data": true``, or ``"binary_data_output":
true`` for all), which is what ``tritonclient.http`` does by default.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx

from trtq.core.errors import ModelError, TrtqError

# KServe v2 datatype <-> NumPy. BYTES (strings) is not supported: trtq models take tensors.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
_NUMPY_TO_V2 = {v: k for k, v in DATATYPES.items()}
# ONNX element type names (as the engine sidecar writes them, lower case) -> v2 datatype.
_ONNX_TO_V2 = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
               "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
               "float": "FP32", "double": "FP64"}


class InvalidRequest(TrtqError):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the protocol describes it; -1 marks a dynamic dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return DATATYPES[self.datatype]

    def to_json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSignature:
    """What a served model takes and returns, and whether requests can be batched together.

    ``batched``: every input and output has a dynamic first dimension, the batch; requests
    then carry any batch size up to the server's max batch and are concatenated along it.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str
    batched: bool = field(init=False)

    def __post_init__(self) -> None:
        batched = all(len(t.shape) >= 1 and t.shape[0] == -1 for t in (*self.inputs, *self.outputs))
        object.__setattr__(self, "batched", batched)

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)


def _v2_type(onnx_name: str, tensor: str) -> str:
    try:
        return _ONNX_TO_V2[onnx_name]
    except KeyError:
        raise ModelError(f"tensor {tensor} has type {onnx_name}, which the server cannot carry") from None


def _dims(shape) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape)


def signature_of(model: str | os.PathLike) -> ModelSignature:
    """The signature of an ``.onnx`` file (from its graph) or an ``.engine`` (from its sidecar)."""
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model {path} does not exist")
    if path.suffix.lower() not in (".onnx", ".engine", ".plan", ".trt"):
        raise ModelError(f"cannot serve {path}: expected an .onnx or .engine file")
    if path.suffix.lower() == ".onnx":
        from trtq.core.onnx_model import load_model

        proto = load_model(path)
        inits = {i.name for i in proto.graph.initializer}

        def spec(vi) -> TensorSpec:
            tt = vi.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            return TensorSpec(vi.name, _v2_type(onnx.TensorProto.DataType.Name(tt.elem_type).lower(), vi.name),
                              _dims(dims))

        return ModelSignature(tuple(spec(v) for v in proto.graph.input if v.name not in inits),
                              tuple(spec(v) for v in proto.graph.output), "onnxruntime_onnx")
    from trtq.deploy.engine_info import EngineInfo

    info = EngineInfo.load(path)
    return ModelSignature(
        tuple(TensorSpec(t.name, _v2_type(t.dtype, t.name), _dims(list(t.shape))) for t in info.inputs),
        tuple(TensorSpec(t.name, _v2_type(t.dtype, t.name), _dims(list(t.shape))) for t in info.outputs),
        "tensorrt_plan")


@dataclass
class InferRequest:
    """A parsed, validated request: input arrays, and which outputs to return how."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[tuple[str, bool]]  # (name, binary)
    rows: int  # batch size (1 for a model that is not batched)


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _parameters(obj: dict, what: str) -> dict:
    params = obj.get("parameters", {})
    return _object(params, f"'parameters' of {what}")


#: JSON nesting a valid request can need beyond its tensors' ranks: the request object, the
#: inputs list, the tensor object, its data list, parameters; a little slack on top.
_JSON_DEPTH_OVERHEAD = 6
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1
_COMMA = ord(",")
_CHUNK = 1 << 20


def precheck_json(header: bytes | bytearray | memoryview, signature: ModelSignature, max_batch: int) -> None:
    """Refuse, before parsing it, a JSON header that cannot be a valid request for this model:
    nesting deeper than any input's rank needs (400), or more values than every input at the
    max batch can hold (413). Vectorized over the bytes, so a hostile body costs a few passes
    over its bytes, never the Python objects a full parse would build."""
    if not header:
        return
    raw = np.frombuffer(header, np.uint8)
    limit = max((len(t.shape) for t in signature.inputs), default=1) + _JSON_DEPTH_OVERHEAD
    # In 1 MB pieces: small temporaries, and the GIL is free between them (the event loop runs).
    depth = level = commas = 0
    for start in range(0, len(raw), _CHUNK):
        piece = raw[start:start + _CHUNK]
        running = np.cumsum(_OPEN[piece], dtype=np.int32) + level
        depth, level = max(depth, int(running.max())), int(running[-1])
        commas += int(np.count_nonzero(piece == _COMMA))
    if depth > limit:
        raise InvalidRequest(f"the request's JSON is nested {depth} deep; requests for this model need at most "
                             f"{limit} levels")
    if any(d == -1 for t in signature.inputs for d in t.shape[1 if signature.batched else 0:]):
        return  # a dynamic dim beyond the batch: no bound on the values (the body size limit holds)
    most = sum(math.prod((max_batch if signature.batched else t.shape[0], *t.shape[1:]))
               for t in signature.inputs if t.shape)
    values = commas + 1
    if values > most + 4096:  # 4096: commas outside the data (names, shapes, parameters)
        raise InvalidRequest(f"the request holds about {values} values; this model's inputs take at most {most} "
                             f"at batch {max_batch}", 413)


def parse_infer_request(body: bytes, header_length: int | None, signature: ModelSignature,
                        max_batch: int) -> InferRequest:
    """Decode and check an infer request body against the model.

    Checks: JSON well-formed; every model input given exactly once and nothing else; each
    datatype equal to the model's (no silent conversion); shapes equal to the model's
    except dynamic dims; one batch size for all inputs, at most ``max_batch``; binary
    sizes that add up to the body. Raises :class:`InvalidRequest`.
    """
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidRequest(f"Inference-Header-Content-Length {header_length} does not fit a body of "
                                 f"{len(body)} bytes")
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    precheck_json(header, signature, max_batch)
    try:
        request = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("the request's JSON is nested too deep") from None
    request = _object(request, "the request")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("'id' must be a string")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest("'inputs' must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        raw = _object(raw, f"input {i}")
        name = raw.get("name")
        if not isinstance(name, str):
            raise InvalidRequest(f"input {i} has no 'name'")
        spec = signature.input(name)
        if spec is None:
            raise InvalidRequest(f"unexpected input '{name}': the model's inputs are "
                                 + ", ".join(t.name for t in signature.inputs))
        if name in inputs:
            raise InvalidRequest(f"input '{name}' is given twice")
        datatype = raw.get("datatype")
        if datatype != spec.datatype:
            raise InvalidRequest(f"input '{name}' has datatype {datatype!r}; the model expects {spec.datatype}")
        shape = raw.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise InvalidRequest(f"input '{name}' needs 'shape', a list of non-negative integers; got {shape!r}")
        if len(shape) != len(spec.shape) or any(m != -1 and d != m for d, m in zip(shape, spec.shape)):
            raise InvalidRequest(f"input '{name}' has shape {shape}; the model expects {list(spec.shape)} "
                                 "(-1: any size)")
        count = math.prod(shape)
        params = _parameters(raw, f"input '{name}'")
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if not isinstance(size, int) or size < 0:
                raise InvalidRequest(f"input '{name}': binary_data_size must be a non-negative integer")
            if size != count * spec.dtype.itemsize:
                raise InvalidRequest(f"input '{name}': binary_data_size is {size} bytes, but shape {shape} of "
                                     f"{datatype} needs {count * spec.dtype.itemsize}")
            if offset + size > len(binary):
                raise InvalidRequest(f"input '{name}': the body holds {len(binary) - offset} more binary bytes, "
                                     f"not {size}")
            array = np.frombuffer(binary[offset:offset + size], dtype=spec.dtype.newbyteorder("<")).reshape(shape)
            offset += size
        elif "data" in raw:
            array = _json_tensor(raw["data"], spec, shape)
        else:
            raise InvalidRequest(f"input '{name}' has neither 'data' nor a binary_data_size parameter")
        inputs[name] = array
    if offset != len(binary):
        raise InvalidRequest(f"the body has {len(binary) - offset} binary bytes that no input claims")
    missing = [t.name for t in signature.inputs if t.name not in inputs]
    if missing:
        raise InvalidRequest("missing input(s): " + ", ".join(missing))
    rows = 1
    if signature.batched:
        sizes = {a.shape[0] for a in inputs.values()}
        if len(sizes) != 1:
            raise InvalidRequest(f"inputs disagree on the batch size (first dimension): {sorted(sizes)}")
        rows = sizes.pop()
        if rows < 1 or rows > max_batch:
            raise InvalidRequest(f"batch size {rows} is outside 1..{max_batch}, the server's max batch")
    return InferRequest(request_id, inputs, _requested_outputs(request, signature), rows)


def _json_tensor(data: Any, spec: TensorSpec, shape: list[int]) -> np.ndarray:
    """JSON ``data``, flat in row-major order or nested, as an array of ``shape``."""
    if not isinstance(data, list):
        raise InvalidRequest(f"input '{spec.name}': 'data' must be a list")
    try:
        array = np.array(data)
    except ValueError:  # ragged nesting
        raise InvalidRequest(f"input '{spec.name}': 'data' is ragged") from None
    # JSON numbers arrive as int64/float64, true/false as bool; anything else (strings,
    # nulls, objects, ragged lists) as another kind, which no model input takes.
    allowed = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[spec.dtype.kind]
    if array.size and array.dtype.kind not in allowed:
        raise InvalidRequest(f"input '{spec.name}': 'data' holds {array.dtype.kind!r}-kind values "
                             f"({str(array.reshape(-1)[0])[:20]!r}...), not {spec.datatype}")
    if array.size != math.prod(shape):
        raise InvalidRequest(f"input '{spec.name}': 'data' holds {array.size} values, shape {shape} needs "
                             f"{math.prod(shape)}")
    if spec.dtype.kind in "iu" and array.size:
        info = np.iinfo(spec.dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidRequest(f"input '{spec.name}': values outside the {spec.datatype} range")
    return array.astype(spec.dtype).reshape(shape)


def _requested_outputs(request: dict, signature: ModelSignature) -> list[tuple[str, bool]]:
    binary_all = _parameters(request, "the request").get("binary_data_output", False)
    if not isinstance(binary_all, bool):
        raise InvalidRequest("'binary_data_output' must be true or false")
    names = [t.name for t in signature.outputs]
    raw_outputs = request.get("outputs")
    if raw_outputs is None:
        return [(n, binary_all) for n in names]
    if not isinstance(raw_outputs, list):
        raise InvalidRequest("'outputs' must be a list")
    chosen: list[tuple[str, bool]] = []
    for i, raw in enumerate(raw_outputs):
        raw = _object(raw, f"output {i}")
        name = raw.get("name")
        if name not in names:
            raise InvalidRequest(f"unknown output {name!r}: the model's outputs are " + ", ".join(names))
        binary = _parameters(raw, f"output '{name}'").get("binary_data", binary_all)
        if not isinstance(binary, bool):
            raise InvalidRequest(f"output '{name}': 'binary_data' must be true or false")
        chosen.append((name, binary))
    return chosen


def encode_infer_response(model: str, version: str, request: InferRequest,
                          outputs: Mapping[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    tensors, blobs = [], []
    for name, binary in request.outputs:
        array = np.asarray(outputs[name])
        datatype = _NUMPY_TO_V2.get(array.dtype.newbyteorder("="))
        if datatype is None:
            raise TrtqError(f"output {name} has dtype {array.dtype}, which the protocol cannot carry")
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
