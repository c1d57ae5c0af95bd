"""Runners: one interface to run a model, ``infer(feed) -> outputs``.

:class:`OrtRunner` runs an ONNX file on ONNX Runtime (CPU by default). For a Q/DQ model it
has two modes, and the difference matters:

* ``QdqMode.FLOAT`` (default): QuantizeLinear/DequantizeLinear are executed as float ops
  (ORT's QDQ fusion disabled), which is what TensorRT computes: int8 rounding and
  saturation of activations and weights, with float accumulation.
* ``QdqMode.ORT_INT8``: ONNX Runtime fuses Q/DQ into its own integer kernels. On x86
  CPUs without VNNI these add pairs of u8*s8 products in 16 bits and saturate, so the
  result is *not* TensorRT's math (see FIELD_NOTES). Use it to measure ORT CPU
  deployment, not as a TensorRT reference.
"""

from __future__ import annotations

import enum
import os
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import onnx

from trtq.core.onnx_model import InputSpec, input_specs, load_model
from trtq.core.progress import progress_bar
from trtq.core.budget import RunSizer, run_sliced
from trtq.core.readers import Padding, count_samples, in_data_order, lazy_batches, length_batches
from trtq.core.errors import ModelError, TrtqError, require
from trtq.core.runtime import QDQ_REWRITES, ort_session


class QdqMode(str, enum.Enum):
    """How ONNX Runtime runs a Q/DQ model: ``qdq-float`` (alias ``tensorrt-math``) executes
    Q/DQ in float, TensorRT's arithmetic; ``ort-int8`` (alias ``onnxruntime``) is ONNX Runtime
    as it is, with its default optimizations fusing Q/DQ into int8 kernels (what Triton's
    ONNX Runtime backend computes)."""

    FLOAT = "qdq-float"
    ORT_INT8 = "ort-int8"

    @classmethod
    def _missing_(cls, value):
        return {"tensorrt-math": cls.FLOAT, "onnxruntime": cls.ORT_INT8}.get(value)


class Runner(Protocol):
    """What compare, bench and serve need from a runtime."""

    name: str
    inputs: list[InputSpec]
    outputs: list[str]

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class OrtRunner:
    """Run an ONNX model with ONNX Runtime; usable as a context manager."""

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, *, mode: QdqMode | str = QdqMode.FLOAT,
                 providers: Sequence[str] | None = None, name: str | None = None) -> None:
        ort = require("onnxruntime", "cpu")
        proto = load_model(model)
        self.mode = QdqMode(mode)
        self.name = name or (os.fspath(model) if not isinstance(model, onnx.ModelProto) else proto.graph.name)
        self.inputs = input_specs(proto)
        self.outputs = [o.name for o in proto.graph.output]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        disabled: tuple[str, ...] = ()
        if self.mode is QdqMode.FLOAT:
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
            disabled = QDQ_REWRITES  # not TensorRT's math (and wrong for fp8: see QDQ_REWRITES)
        self._session = ort_session(proto, opts, providers, self.name, disabled)
        self._sizer = RunSizer(proto)
        # A transformer whose outputs have no sequence axis runs each batch cut after its
        # longest sample (the padding after it never reaches an output).
        self.padding = Padding.of_outputs(proto)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs for ``feed``; a batch larger than the memory budget allows runs in slices."""
        if self.padding is not None:
            feed = self.padding.trim(feed)
        try:
            values = run_sliced(lambda f: self._session.run(self.outputs, f), feed, self._sizer.rows(feed))
        except Exception as exc:  # ORT raises its own exception types
            raise TrtqError(f"inference failed in {self.name}: {exc}") from exc
        return dict(zip(self.outputs, values))

    def close(self) -> None:
        self._session = None

    def __enter__(self) -> "OrtRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_all(runner: Runner, data: Any, batch_size: int = 32, samples: int | None = None,
            progress: bool = False) -> dict[str, np.ndarray]:
    """Run every batch of ``data`` and concatenate the outputs along the batch axis.

    Padded token data for a runner that cuts padding (``runner.padding``, see
    :class:`~trtq.core.readers.Padding`) runs longest first, and the outputs come back in the
    data's order."""
    ordered = length_batches(data, runner.inputs, batch_size, samples) \
        if getattr(runner, "padding", None) is not None else None
    batches, order = ordered if ordered is not None else (lazy_batches(data, runner.inputs, batch_size, samples), None)
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in runner.outputs}
    with progress_bar(f"running {runner.name}", count_samples(data, samples), enabled=progress) as bar:
        for _, feed in batches:  # files read slice by slice
            for name, value in runner.infer(feed).items():
                chunks[name].append(value)
            bar.advance(len(next(iter(feed.values()))))
    out = {n: np.concatenate(v) for n, v in chunks.items()}
    return out if order is None else in_data_order(out, order)


def open_runner(model: str | os.PathLike | onnx.ModelProto | Runner, *, mode: QdqMode | str = QdqMode.FLOAT, **kwargs: Any) -> Runner:
    """A runner for a path (``.onnx``: :class:`OrtRunner`, ``.engine``: :class:`trtq.deploy.Engine`),
    an ONNX ModelProto (:class:`OrtRunner`), or the runner itself.

    ``mode`` says how ONNX Runtime runs a Q/DQ model (float Q/DQ, TensorRT's math, or its
    int8 kernels); an engine runs as TensorRT built it, whatever the mode. ``kwargs`` go to
    :class:`OrtRunner` (its ``name`` defaults to the path).
    """
    if isinstance(model, onnx.ModelProto):
        return OrtRunner(model, mode=mode, **kwargs)
    if not isinstance(model, (str, os.PathLike)):
        return model
    suffix = os.fspath(model).rsplit(".", 1)[-1].lower()
    if suffix == "onnx":
        return OrtRunner(model, mode=mode, **{"name": os.fspath(model), **kwargs})
    if suffix in ("engine", "plan", "trt"):
        from trtq.deploy.engine import Engine

        return Engine(model)
    raise ModelError(f"cannot run {model}: expected an .onnx or .engine file")

