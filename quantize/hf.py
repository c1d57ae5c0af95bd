"""Hugging Face checkpoint folders -> ONNX, and text -> token arrays with the folder's tokenizer.

A folder holds ``config.json``, weights as ``*.safetensors`` (pickled ``*.bin`` weights are
refused: loading them would unpickle a user file) and a tokenizer. Loaded offline, with
``trust_remote_code=False``. What the ONNX model outputs:

* a sentence-transformers folder (``modules.json`` with a Pooling module): the pooled
  sentence embedding (mean, CLS or max pooling over the attention mask, as its
  ``1_Pooling/config.json`` says), L2-normalized when a Normalize module follows;
  output ``sentence_embedding``;
* an ``*ForSequenceClassification`` architecture: ``logits``;
* anything else ``AutoModel`` loads: ``last_hidden_state``.

Inputs are ``input_ids`` and ``attention_mask`` (int64, dynamic batch and sequence axes),
(``token_type_ids``, where the model has them, keep their default: zeros).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from trtq.core.onnx_model import check_model
from trtq.quantize.export import DEFAULT_OPSET, ExportParity, check_parity
from trtq.core.errors import DataError, ExportError, ModelError, require

log = logging.getLogger(__name__)

MAX_LENGTH = 128


@dataclass(frozen=True)
class HfModelInfo:
    """What :func:`export_hf` made of a folder."""

    folder: Path
    architecture: str
    kind: str  # "sentence-embedding", "sequence-classification" or "hidden-state"
    output: str
    pooling: str | None = None
    normalize: bool = False


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ModelError(f"Hugging Face checkpoint folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} has no config.json; pass a Hugging Face checkpoint folder")
    if not list(folder.glob("*.safetensors")):
        pickled = [p.name for p in folder.glob("*.bin")]
        raise ModelError(f"{folder} has no *.safetensors weights" + (
            f" (only {', '.join(pickled)}, pickled files trtq does not load: convert them to safetensors "
            "with the tool you trust)" if pickled else ""))


def _sentence_transformers(folder: Path) -> tuple[str | None, bool]:
    """(pooling mode, normalize) of a sentence-transformers folder, else (None, False)."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None, False
    try:
        modules = json.loads(modules_file.read_text())
        kinds = [m.get("type", "") for m in modules]
        pooling = next((m for m in modules if m.get("type", "").endswith("Pooling")), None)
        if pooling is None:
            return None, False
        config = json.loads((folder / pooling.get("path", "1_Pooling") / "config.json").read_text())
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelError(f"cannot read the sentence-transformers modules of {folder}: {exc}") from exc
    modes = [m for m in ("mean", "cls", "max") if config.get(f"pooling_mode_{m}_tokens")]
    if len(modes) != 1:
        raise ModelError(f"{folder}: pooling {config} is not supported (exactly one of mean, cls, max tokens)")
    return modes[0], any(k.endswith("Normalize") for k in kinds)


def load_tokenizer(folder: str | os.PathLike):
    require("transformers", "hf")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises OSError/ValueError/...
        raise ModelError(f"cannot load the tokenizer of {folder}: {str(exc).splitlines()[0]}") from exc


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a UTF-8 text file (one sentence per line)."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise DataError(f"text file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as UTF-8 text: {exc}") from exc
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{path} has no sentences (one per line expected)")
    return lines


def tokenize(tokenizer, texts: list[str], max_length: int = MAX_LENGTH,
             inputs: tuple[str, ...] = ("input_ids", "attention_mask")) -> dict[str, np.ndarray]:
    """Token arrays for ``texts``, padded to the longest (at most ``max_length`` tokens)."""
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="np")
    return {name: np.asarray(enc[name], dtype=np.int64) for name in inputs}


def _module(folder: Path, info: HfModelInfo):
    torch = require("torch", "torch")
    require("transformers", "hf")
    import transformers

    transformers.utils.logging.disable_progress_bar()  # trtq shows its own
    kwargs = dict(local_files_only=True, trust_remote_code=False, use_safetensors=True)
    try:
        if info.kind == "sequence-classification":
            base = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder), **kwargs)
        else:
            base = transformers.AutoModel.from_pretrained(str(folder), **kwargs)
    except Exception as exc:  # transformers raises many types
        raise ModelError(f"transformers cannot load {folder}: {str(exc).splitlines()[0]}") from exc
    base = base.eval()

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base

        def forward(self, input_ids, attention_mask):
            out = self.base(input_ids=input_ids, attention_mask=attention_mask)
            if info.kind == "sequence-classification":
                return out.logits
            hidden = out.last_hidden_state
            if info.kind == "hidden-state":
                return hidden
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            if info.pooling == "mean":
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            elif info.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                pooled = (hidden + (mask - 1) * 1e4).max(1).values
            return torch.nn.functional.normalize(pooled, dim=-1) if info.normalize else pooled

    return Wrapped().eval()


def describe(folder: str | os.PathLike) -> HfModelInfo:
    """What :func:`export_hf` will make of ``folder`` (checked, not loaded)."""
    folder = Path(folder)
    _check_folder(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder / 'config.json'} cannot be read: {exc}") from exc
    architecture = (config.get("architectures") or [config.get("model_type", "unknown")])[0]
    pooling, normalize = _sentence_transformers(folder)
    if pooling is not None:
        return HfModelInfo(folder, architecture, "sentence-embedding", "sentence_embedding", pooling, normalize)
    if architecture.endswith("ForSequenceClassification"):
        return HfModelInfo(folder, architecture, "sequence-classification", "logits")
    return HfModelInfo(folder, architecture, "hidden-state", "last_hidden_state")


def export_hf(folder: str | os.PathLike, sample: dict[str, np.ndarray], *, opset: int = DEFAULT_OPSET,
              atol: float = 1e-4, rtol: float = 1e-3) -> tuple[onnx.ModelProto, ExportParity, HfModelInfo]:
    """Export the checkpoint in ``folder`` to ONNX (dynamic batch and sequence axes).

    ``sample``: token arrays (``input_ids``, ``attention_mask``) used to trace and to check
    parity; the export fails with :class:`ExportError` when ONNX Runtime's outputs differ
    from PyTorch's by more than ``atol + rtol * |reference|``.
    """
    torch = require("torch", "torch")
    require("onnxscript", "torch")
    info = describe(folder)
    module = _module(Path(folder), info)
    ids = torch.from_numpy(sample["input_ids"][:4])
    mask = torch.from_numpy(sample["attention_mask"][:4])
    if ids.shape[0] < 2:
        ids, mask = torch.cat([ids, ids]), torch.cat([mask, mask])  # keep the batch axis dynamic
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=2, max=512)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="trtq-hf-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target = Path(tmp) / "model.onnx"
        try:
            torch.onnx.export(module, (ids, mask), str(target), input_names=["input_ids", "attention_mask"],
                              output_names=[info.output], dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
                              opset_version=opset, dynamo=True, external_data=False, verbose=False)
        except Exception as exc:  # the exporter raises many types
            raise ExportError(f"torch.onnx.export failed for {folder}: {str(exc).strip().splitlines()[0]}") from exc
        proto = onnx.load(str(target))
    check_model(proto, "the exported model")
    parity = check_parity(module, proto, {k: sample[k][:8] for k in ("input_ids", "attention_mask")},
                          rtol=rtol, atol=atol)
    return proto, parity, info


__all__ = ["HfModelInfo", "MAX_LENGTH", "describe", "export_hf", "load_tokenizer", "read_lines", "tokenize"]
