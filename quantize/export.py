"""Export: a PyTorch module or checkpoint -> a validated, parity-checked fp32 ONNX model.

The export uses ``torch.onnx.export`` (the ``torch.export``-based exporter), opset 18, with
a dynamic batch axis. The result passes ``onnx.checker`` and is compared with PyTorch on
sample inputs through ONNX Runtime; above tolerance the export fails with the error.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from trtq.core.onnx_model import check_model
from trtq.core.errors import ExportError, ModelError, require
from trtq.core.runtime import ort_session

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18


@dataclass(frozen=True)
class ExportParity:
    """Largest differences between PyTorch and the exported ONNX on the sample inputs."""

    max_abs: float
    max_rel: float
    samples: int


def load_checkpoint(path: str | os.PathLike, factory: Callable[[], object]):
    """Build the module with ``factory()`` and load the state dict at ``path`` (strict).

    The file is read with ``torch.load(weights_only=True)``: it is never unpickled.
    A dict wrapping the state dict under ``state_dict`` or ``model`` is accepted.
    """
    torch = require("torch", "torch")
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"checkpoint {path} cannot be loaded as a weights-only state dict: {first}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"the model factory returned a {type(module).__name__}, not a torch.nn.Module")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"checkpoint {path} does not match the model: {str(exc).splitlines()[0]} "
                         f"{'; '.join(l.strip() for l in str(exc).splitlines()[1:3])}") from exc
    return module.eval()


def _reraise_stop(exc: BaseException) -> None:
    """The exporter wraps whatever interrupts it: a SIGTERM/Ctrl-C arriving mid-export must
    stop the job as itself, not turn into an export error."""
    seen = exc
    while seen is not None:
        if isinstance(seen, (SystemExit, KeyboardInterrupt)):
            raise seen
        seen = seen.__cause__ or seen.__context__


def _first_line(exc: BaseException) -> str:
    """The exporter's first line, without terminal colour codes."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def export(module, sample: np.ndarray, *, input_name: str = "input", output_name: str = "output",
           opset: int = DEFAULT_OPSET, rtol: float = 1e-3, atol: float = 1e-4,
           check_inputs: np.ndarray | None = None) -> tuple[onnx.ModelProto, ExportParity]:
    """Export ``module`` (single input) to ONNX with a dynamic batch axis and check parity.

    ``sample`` is an example input batch (float32). Parity is measured on ``check_inputs``
    (default: ``sample``): the export fails with :class:`ExportError` if any output element
    differs by more than ``atol + rtol * |reference|``.
    """
    torch = require("torch", "torch")
    require("onnxscript", "torch")
    # The exporter warns about every torchvision op when torchvision is absent: irrelevant here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    module = module.eval()
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    if x.shape[0] < 2:
        x = torch.cat([x, x])  # a batch of 1 would be specialised to a static batch dim
    batch = torch.export.Dim("batch", min=1)
    with tempfile.TemporaryDirectory(prefix="trtq-export-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target = Path(tmp) / "model.onnx"
        try:
            torch.onnx.export(module, (x,), str(target), input_names=[input_name],
                              output_names=[output_name], dynamic_shapes=({0: batch},),
                              opset_version=opset, dynamo=True, external_data=False,
                              verbose=False)
        except Exception as exc:  # the exporter raises many types
            _reraise_stop(exc)
            raise ExportError(f"torch.onnx.export failed: {_first_line(exc)}") from exc
        proto = onnx.load(str(target))
    check_model(proto, "the exported model")
    parity = check_parity(module, proto, check_inputs if check_inputs is not None else sample,
                          rtol=rtol, atol=atol)
    log.info("exported: max abs error %.3g, max rel error %.3g", parity.max_abs, parity.max_rel)
    return proto, parity


def check_parity(module, proto: onnx.ModelProto, inputs: np.ndarray | dict[str, np.ndarray], *, rtol: float,
                 atol: float) -> ExportParity:
    """Compare PyTorch and ONNX Runtime outputs on ``inputs``; raise above tolerance.

    ``inputs``: one float array (single-input models), or arrays by input name, passed to
    the module positionally in the ONNX model's input order.
    """
    torch = require("torch", "torch")
    sess = ort_session(proto, what="the exported model")
    names = [i.name for i in sess.get_inputs()]
    if isinstance(inputs, dict):
        feed = {n: np.ascontiguousarray(inputs[n]) for n in names}
    else:
        feed = {names[0]: np.ascontiguousarray(inputs, dtype=np.float32)}
    with torch.no_grad():
        ref = module(*(torch.from_numpy(feed[n]) for n in names))
    refs = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else [ref])]
    outs = sess.run(None, feed)
    max_abs = max_rel = 0.0
    for r, o in zip(refs, outs):
        err = np.abs(r.astype(np.float64) - o)
        max_abs = max(max_abs, float(err.max(initial=0)))
        max_rel = max(max_rel, float((err / np.maximum(np.abs(r), atol)).max(initial=0)))
        bad = err > atol + rtol * np.abs(r)
        if bad.any():
            raise ExportError(
                f"the exported ONNX model differs from PyTorch: {int(bad.sum())} of {bad.size} output "
                f"values exceed atol {atol} + rtol {rtol} (max abs error {max_abs:.3g}); "
                "the export is not faithful")
    return ExportParity(max_abs, max_rel, len(next(iter(feed.values()))))
