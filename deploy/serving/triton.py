"""Export a model to a Triton Inference Server model repository.

Layout written (Triton's)::

    REPO/<name>/config.pbtxt
    REPO/<name>/<version>/model.onnx     (ONNX Runtime backend, platform onnxruntime_onnx)
    REPO/<name>/<version>/model.plan     (TensorRT backend, platform tensorrt_plan)

The configuration is derived from the model itself: input/output names, data types and
dims (``-1`` for dynamic ones), ``max_batch_size`` when every input and output has a
dynamic first dimension (then ``dims`` leave the batch dimension out, as Triton wants),
and a ``dynamic_batching`` block. Tests parse it with Triton's own ``ModelConfig`` protobuf
schema (shipped in ``tritonclient``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import onnx

from trtq.deploy.serving.protocol import ModelSignature, TensorSpec, signature_of
from trtq.core.errors import ModelError, OutputError, TrtqError
from trtq.core.fileio import atomic_write_text, staging_dir

from trtq.deploy.build import DEFAULT_MAX_BATCH  # noqa: F401 (re-exported for the server)

#: How long the oldest request waits for others to batch with: trtq serve's default and the
#: exported configs' max_queue_delay_microseconds, one value.
DEFAULT_MAX_DELAY_MS = 2.0
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def model_config(name: str, signature: ModelSignature, max_batch: int, *,
                 max_queue_delay_us: int = int(DEFAULT_MAX_DELAY_MS * 1000), instance_count: int | None = None,
                 instance_kind: str | None = None, parameters: dict[str, str] | None = None,
                 accelerator: dict | None = None) -> dict:
    """Triton's model configuration for ``signature``, in its JSON form (what Triton's
    ``/v2/models/NAME/config`` returns); ``max_batch`` 0 means no batching dimension, else
    dims leave the batch dimension out. ``parameters``: model parameters (string values);
    ``accelerator``: a GPU execution accelerator of the ONNX Runtime backend, e.g.
    ``{"name": "tensorrt", "parameters": {"precision_mode": "INT8"}}``."""
    batched = max_batch > 0

    def tensor(t: TensorSpec) -> dict:
        return {"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": list(t.shape[1:] if batched else t.shape)}

    config: dict = {"name": name, "platform": signature.platform, "max_batch_size": max_batch,
                    "input": [tensor(t) for t in signature.inputs], "output": [tensor(t) for t in signature.outputs]}
    if batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": max_queue_delay_us}
    if instance_count is not None or instance_kind is not None:
        group = {"count": instance_count} if instance_count is not None else {}
        config["instance_group"] = [{**group, **({"kind": instance_kind} if instance_kind is not None else {})}]
    if accelerator is not None:
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [accelerator]}}
    if parameters:
        config["parameters"] = {k: {"string_value": str(v)} for k, v in parameters.items()}
    return config


_ENUM_FIELDS = {"data_type", "kind"}  # written bare in text format, not quoted


def _text_format(message: dict, indent: int = 0) -> list[str]:
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if key == "parameters" and isinstance(value, dict):  # a protobuf map: one entry per key
            for k, v in value.items():
                if isinstance(v, dict):
                    lines += [f"{pad}{key} {{", f"{pad}  key: {_quote(k)}", f"{pad}  value {{",
                              *_text_format(v, indent + 2), f"{pad}  }}", f"{pad}}}"]
                else:
                    lines.append(f"{pad}{key} {{ key: {_quote(k)} value: {_quote(str(v))} }}")
        elif isinstance(value, dict):
            lines += [f"{pad}{key} {{", *_text_format(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key} [")
            for i, item in enumerate(value):
                lines += [f"{pad}  {{", *_text_format(item, indent + 2), f"{pad}  }}" + ("," if i < len(value) - 1 else "")]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(str(v) for v in value)} ]")
        elif isinstance(value, str) and key not in _ENUM_FIELDS:
            lines.append(f"{pad}{key}: {_quote(value)}")
        else:
            lines.append(f"{pad}{key}: {value}")
    return lines


def model_config_text(name: str, signature: ModelSignature, max_batch: int, **options) -> str:
    """``config.pbtxt``: :func:`model_config` in protobuf text format."""
    return "\n".join(_text_format(model_config(name, signature, max_batch, **options))) + "\n"


ACCELERATORS = ("tensorrt",)


def tensorrt_accelerator(model: onnx.ModelProto) -> dict:
    """ONNX Runtime's TensorRT execution accelerator for ``model``, its precision taken from the
    graph: ``INT8`` with Q/DQ nodes (explicit quantization), ``FP16`` with fp16 tensors, else
    ``FP32``; engines cached between loads (building one takes minutes)."""
    ops = {n.op_type for n in model.graph.node}
    half = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in model.graph.node)
    precision = "INT8" if {"QuantizeLinear", "DequantizeLinear"} & ops else "FP16" if half else "FP32"
    return {"name": "tensorrt", "parameters": {"precision_mode": precision, "trt_engine_cache_enable": "1"}}


def export_triton(model: str | os.PathLike, repo: str | os.PathLike, *, name: str | None = None, version: int = 1,
                  max_batch: int | None = None, max_queue_delay_us: int = int(DEFAULT_MAX_DELAY_MS * 1000),
                  instance_count: int | None = None, overwrite: bool = False, accelerator: str | None = None) -> Path:
    """Write ``model`` (.onnx or .engine) into the Triton repository ``repo``; return the model folder.

    ``max_batch``: Triton's ``max_batch_size``; default ``DEFAULT_MAX_BATCH`` (32) for an ONNX model and the
    optimization profile's maximum for an engine; 0 for models without a batch dimension
    (the only value allowed then). ``accelerator="tensorrt"``: an ONNX model runs in Triton's
    ONNX Runtime backend through its TensorRT execution accelerator (see
    :func:`tensorrt_accelerator`). An existing version folder is replaced only with
    ``overwrite``. Nothing is left half-written on errors.
    """
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".engine", ".plan"):
        raise ModelError(f"cannot export {path}: expected an .onnx or .engine file")
    name = name or path.name.split(".")[0]
    if not _NAME.match(name):
        raise TrtqError(f"model name {name!r} is not usable as a Triton model folder; use letters, digits, _ . -")
    if version < 1:
        raise TrtqError(f"version must be >= 1, got {version}")
    signature = signature_of(path)
    if accelerator is not None and accelerator not in ACCELERATORS:
        raise TrtqError(f"unknown accelerator {accelerator!r}; known: {', '.join(ACCELERATORS)}")
    if accelerator is not None and signature.platform != "onnxruntime_onnx":
        raise TrtqError("--accelerator applies to ONNX models (Triton's ONNX Runtime backend); an engine runs in "
                        "the TensorRT backend already")
    limit = _engine_batch_limit(path) if signature.platform == "tensorrt_plan" else None
    if signature.batched:
        if max_batch is None:
            max_batch = limit if limit is not None else DEFAULT_MAX_BATCH
        if limit is not None and max_batch > limit:
            raise TrtqError(f"--max-batch {max_batch} exceeds the engine's optimization profile (batch up to "
                            f"{limit}); rebuild it with trtq build --max-batch {max_batch}")
        if max_batch < 0:
            raise TrtqError(f"max batch must be >= 0, got {max_batch}")
    elif max_batch:
        dims = ", ".join(f"{t.name} {list(t.shape)}" for t in (*signature.inputs, *signature.outputs))
        raise TrtqError(f"{path.name} has no dynamic batch dimension on every input and output ({dims}); "
                        "Triton can only serve it with --max-batch 0")
    else:
        max_batch = 0
    model_dir = Path(repo) / name
    version_dir = model_dir / str(version)
    if version_dir.exists() and any(version_dir.iterdir()) and not overwrite:
        raise OutputError(f"{version_dir} already exists; pass overwrite (--overwrite) to replace it, "
                          "or export as another --version")
    kind = "KIND_GPU" if signature.platform == "tensorrt_plan" or accelerator else None
    accel = tensorrt_accelerator(_load_onnx(path)) if accelerator == "tensorrt" else None
    text = model_config_text(name, signature, max_batch, max_queue_delay_us=max_queue_delay_us,
                             instance_count=instance_count, instance_kind=kind if instance_count else None,
                             accelerator=accel)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {model_dir}: {exc.strerror or exc}") from exc
    with staging_dir(version_dir) as stage:
        if signature.platform == "tensorrt_plan":
            shutil.copyfile(path, stage / "model.plan")
        else:
            _copy_onnx(path, stage / "model.onnx")
        if version_dir.exists():
            for old in version_dir.iterdir():
                if old.is_dir():
                    shutil.rmtree(old)
                else:
                    old.unlink()
    atomic_write_text(model_dir / "config.pbtxt", text)
    return model_dir


def _engine_batch_limit(path: Path) -> int | None:
    from trtq.deploy.engine_info import EngineInfo

    info = EngineInfo.load(path)
    if info.backend == "tensorrt_rtx":
        raise TrtqError(f"{path.name} was built with TensorRT-RTX; Triton's TensorRT backend loads engines of "
                        "full TensorRT (the same version as the server's). Export the ONNX model instead, or "
                        "build the engine with --backend tensorrt on a machine with the matching TensorRT")
    return info.max_batch


def _load_onnx(path: Path) -> onnx.ModelProto:
    from trtq.core.onnx_model import load_model

    return load_model(path)


def _copy_onnx(src: Path, dst: Path) -> None:
    """One self-contained file (external data, if any, is read from inside the model's folder)."""
    from trtq.core.onnx_model import load_model

    proto = load_model(src)  # external data loaded, refused if it points outside src's folder
    big = proto.ByteSize() > (1 << 31) - (64 << 20)  # protobuf's 2 GiB limit on one file
    onnx.save_model(proto, dst, save_as_external_data=big, location="model.onnx.data")
