"""Loading ONNX models safely and describing their inputs.

Shared by every layer above (``quantize`` and ``deploy`` import it; it imports nothing of
theirs). External data is resolved only inside the model's own folder.
"""

from __future__ import annotations

import hashlib
import os
from typing import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from trtq.core.errors import ModelError



@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, NumPy dtype, and shape (``None`` or a name for a dynamic dim)."""

    name: str
    dtype: np.dtype
    shape: tuple

    def describe(self) -> str:
        dims = [str(d) if isinstance(d, int) else "N" if i == 0 else str(d or "?")
                for i, d in enumerate(self.shape)]
        return f"({', '.join(dims)}) {self.dtype}"


def load_model(model: str | os.PathLike | onnx.ModelProto, *, check: bool = True) -> onnx.ModelProto:
    """Return a ModelProto for a path or a ModelProto (returned as is).

    External data files must lie inside the model's folder; anything else is refused.
    Raises :class:`ModelError` with a clear message for a missing or corrupt file.
    """
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.exists():
        raise ModelError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelError(f"model path {path} is a folder; pass the .onnx file inside it")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise ModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not proto.graph.node and not proto.graph.input:
        raise ModelError(f"{path} is not an ONNX model (it parses to an empty graph)")
    _load_external_data_inside(proto, path.parent.resolve())
    if check:
        check_model(proto, str(path))
    return proto


def _load_external_data_inside(proto: onnx.ModelProto, base: Path) -> None:
    tensors = [t for t in proto.graph.initializer if external_data_helper.uses_external_data(t)]
    for t in tensors:
        info = external_data_helper.ExternalDataInfo(t)
        target = (base / info.location).resolve()
        if not target.is_relative_to(base):
            raise ModelError(
                f"tensor '{t.name}' points to external data '{info.location}' outside the "
                f"model's folder {base}; refusing to read it"
            )
        if not target.is_file():
            raise ModelError(f"external data file '{info.location}' of tensor '{t.name}' is missing")
    if tensors:
        external_data_helper.load_external_data_for_model(proto, str(base))


def check_model(proto: onnx.ModelProto, what: str = "model") -> None:
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{what} is not a valid ONNX model: {first}") from exc


def infer_types(model: onnx.ModelProto,
                input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, onnx.TypeProto]:
    """Inferred type (dtype and shape) of every tensor, by name.

    Shape inference runs on a copy of the graph whose initializers are replaced by typed
    graph inputs, so a model's weights (90 MB for MiniLM) are never copied for it.
    ``input_shapes``: concrete shapes for these inputs (e.g. the data's, to size every
    activation); the model's own value infos, which may hold other shapes, are then left out.
    """
    light = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import,
                            functions=model.functions)
    graph = light.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    for vi in graph.input:
        if input_shapes and vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in input_shapes[vi.name]:
                dims.add().dim_value = int(d)
    listed = {i.name for i in model.graph.input}
    graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in model.graph.initializer if t.name not in listed)
    graph.output.extend(model.graph.output)
    if input_shapes:  # declared output shapes may be for other input shapes: inferred anew
        for vi in graph.output:
            if vi.type.HasField("tensor_type"):
                vi.type.tensor_type.ClearField("shape")
    else:
        graph.value_info.extend(model.graph.value_info)
    try:
        inferred = onnx.shape_inference.infer_shapes(light)
    except onnx.shape_inference.InferenceError as exc:
        raise ModelError(f"shape inference failed on the model: {exc}") from exc
    return {vi.name: vi.type for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}


def model_sha256(model: onnx.ModelProto) -> str:
    """SHA-256 of the serialized model: identifies the model a calibration table belongs to."""
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers)."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
        )
        specs.append(InputSpec(vi.name, dtype, shape))
    return specs


def output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]
