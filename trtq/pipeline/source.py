"""Stage 1: resolve the model source and its data (:class:`SourceModel`).

An ONNX file, a checkpoint + factory, a registered model, an importable factory or a
Hugging Face folder become one value: the fp32 ONNX model as given (or exported, with its
parity check), the calibration data and the evaluation data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx

from trtq.core import ImageFolderReader, load_model, open_data, progress_bar
from trtq.core.arrayfile import FileArray
from trtq.core.errors import DataError, ModelError
from trtq.core.runtime import check_runnable
from trtq.models import get_model_spec
from trtq.pipeline.job import DEFAULT_MODEL, QuantizeJob
from trtq.quantize import ExportParity, upcast_float16

__all__ = ["SourceModel", "resolve_source"]


@dataclass(frozen=True)
class SourceModel:
    """The fp32 model as the user gave it (exported if it was not ONNX) and the data to run it on.

    ``tasks``: output name (or ``*``) -> task (``trtq.deploy.compare.TASKS``), from ``--metric``;
    outputs it does not name are read by their shape. Hugging Face embedding models get
    ``embedding`` (their 2-D outputs are not class scores).
    """

    kind: str  # onnx | checkpoint | registered | import | hf
    label: str  # what the report calls the model
    model: onnx.ModelProto
    parity: ExportParity | None
    calib: Any
    evald: Any | None
    tasks: Mapping[str, str] = field(default_factory=dict)
    search_data: Any | None = None  # what a --target search chooses on (None: the evaluation data)
    split: str | None = None  # how the user's data was split, when it was
    notes: tuple[str, ...] = ()  # what was done to the model as given (e.g. float16 computed in float32)


#: Without evaluation data, a --target search splits the user's samples (at most ``--samples``
#: plus twice the search samples) into three disjoint parts, spread over the data by a fixed
#: shuffle: calibration (``--samples``, at most half), the plan search (half of the rest, at
#: most the search samples) and a held-out check (the rest). More data, more search samples:
#: a share target such as top-1 0.97 needs hundreds of samples to be told from 0.95.
SPLIT_MIN_SAMPLES = 8


def split_for_search(source: SourceModel, job: QuantizeJob) -> SourceModel:
    """The source with its calibration data split into disjoint calibration, search and
    held-out parts (see :data:`SPLIT_MIN_SAMPLES`), so that the target is checked on samples
    the search did not choose on."""
    from dataclasses import replace

    from trtq.core import input_specs
    from trtq.core.readers import collect_arrays, take_rows

    search = job.search_samples_or_eval()
    cap = job.samples + 2 * search
    arrays = collect_arrays(source.calib, input_specs(source.model), job.batch_size, cap)
    n = len(next(iter(arrays.values())))
    if n < SPLIT_MIN_SAMPLES:
        raise DataError(f"--target without --eval-data splits the calibration data into calibration, search and "
                        f"held-out parts, which needs at least {SPLIT_MIN_SAMPLES} samples; got {n}: give more "
                        "data, or --eval-data")
    calib_n = min(job.samples, n // 2)
    search_n = min(search, (n - calib_n + 1) // 2)
    labels = np.repeat([0, 1, 2], [calib_n, search_n, n - calib_n - search_n])
    labels = labels[np.random.default_rng(0).permutation(n)]  # spread over the data (often sorted by class)
    parts = [{k: take_rows(v, labels == i) for k, v in arrays.items()} for i in range(3)]
    sizes = [len(next(iter(p.values()))) for p in parts]
    text = (f"the calibration data split {sizes[0]}/{sizes[1]}/{sizes[2]}: calibration, the plan search, and "
            "a held-out check the search did not see")
    return replace(source, calib=parts[0], search_data=parts[1], evald=parts[2], split=text)

def resolve_source(job: QuantizeJob) -> SourceModel:
    """The job's model and data; exports PyTorch and Hugging Face models to ONNX."""
    source = _resolve(job)
    outputs = [o.name for o in source.model.graph.output]
    unknown = sorted(set(job.tasks) - set(outputs) - {"*"})
    if unknown:  # before any stage runs, not when the report is written
        raise DataError(f"--metric names output(s) {unknown} the model does not have; its outputs are {outputs}")
    return source


def _resolve(job: QuantizeJob) -> SourceModel:
    spec = _registered_spec(job)
    if job.hf is not None:
        return _hf_source(job)
    # A registered model's own preprocessing applies to the user's image folders too.
    preprocess = job.preprocess or (spec.preprocess if spec is not None else None)
    for data in (job.calib_data, job.eval_data):
        if data is not None and isinstance(data, (str, Path)) and Path(data).suffix.lower() == ".txt":
            raise DataError(f"{data}: text files (one sentence per line) are for Hugging Face checkpoints (--hf DIR)")
    if job.calib_data is not None:
        calib = open_data(job.calib_data, "calibration data", preprocess)
    elif spec is not None:
        calib = spec.calibration_data(job.samples)
    elif job.table is not None:
        calib = None  # the table replaces calibration; say what else would still need the data
        needs = [what for what, on in (("GPTQ weight rounding (turn it off with --no-gptq)", job.gptq),
                                       ("--layer-clipping", job.layer_clipping),
                                       ("--bias-correction", job.bias_correction),
                                       ("the fidelity report (give it --eval-data)", job.eval_data is None)) if on]
        if needs:
            raise DataError("with --table and no --calib-data, these still need calibration data: "
                            + "; ".join(needs))
    else:
        raise DataError("calibration data is required for this model: pass --calib-data DATA.npy|DATA.npz|FOLDER "
                        "(or --table with a calibration table, see `trtq quantize --help`)")
    if job.eval_data is not None:
        evald = open_data(job.eval_data, "evaluation data", preprocess)
    else:
        evald = spec.evaluation_data(job.eval_samples) if spec is not None else None
    if job.onnx is not None:
        proto = load_model(job.onnx)
        check_runnable(proto, str(job.onnx))  # before any stage trips over it
        # A float16 file (common for TensorRT) is quantized as the same function in float32.
        proto, upcast = upcast_float16(proto)
        notes = (f"float16 model: computed in float32 for quantization ({upcast} float16 values and attributes upcast, exactly); "
                 "its float16 inputs and outputs are kept, behind Casts",) if upcast else ()
        return SourceModel("onnx", str(job.onnx), proto, None, calib, evald, job.tasks, notes=notes)
    name = job.model or DEFAULT_MODEL
    kind = "checkpoint" if job.checkpoint is not None else "registered" if spec is not None else "import"
    request = {"kind": "module", "model": name, "registered": kind == "registered",
               "checkpoint": None if job.checkpoint is None else str(Path(job.checkpoint).resolve()),
               "input_name": spec.input_name if spec else "input", "output_name": "logits" if spec else "output"}
    # Imported here: `python -m trtq.pipeline.export_child` must not find it imported by the package.
    from trtq.pipeline.export_child import export_in_child

    with progress_bar("exporting to ONNX", None, enabled=job.progress):
        proto, parity = export_in_child(request, {"input": np.asarray(_first_array(calib)[:8])})
    label = name + (f" ({job.checkpoint})" if job.checkpoint else "")
    return SourceModel(kind, label, proto, parity, calib, evald, job.tasks)


def _registered_spec(job: QuantizeJob):
    """The registered model the job uses, or ``None`` (an ONNX file, a Hugging Face folder or an import path)."""
    if job.hf is not None:
        if job.onnx or job.model or job.checkpoint:
            raise ModelError("--hf cannot be combined with --onnx/--model/--checkpoint; give one model source")
        return None
    if job.onnx is not None:
        if job.model or job.checkpoint:
            raise ModelError("--onnx cannot be combined with --model/--checkpoint; give one model source")
        return None
    if job.checkpoint is not None and not job.model:
        raise ModelError("--checkpoint needs --model NAME or --model package.module:callable")
    name = job.model or DEFAULT_MODEL
    return None if ":" in name else get_model_spec(name)


def _first_array(data: Any) -> np.ndarray:
    if isinstance(data, ImageFolderReader):
        return next(data.batches(8))
    if isinstance(data, (np.ndarray, FileArray)):
        return data
    if isinstance(data, dict) and len(data) == 1:
        return next(iter(data.values()))
    raise DataError("exporting a PyTorch model needs single-input calibration data (.npy, or .npz with one key)")


def _hf_source(job: QuantizeJob) -> SourceModel:
    """Export a Hugging Face folder; sentences from text files (or the built-in ones), tokenized."""
    from trtq.models.text import sentences
    from trtq.pipeline.export_child import export_in_child
    from trtq.quantize.hf import describe, load_tokenizer, read_lines, tokenize

    info = describe(job.hf)  # a missing folder, config or weights: say so before anything loads
    tokenizer = load_tokenizer(job.hf)

    def text_data(data: Any, count: int, skip: int, what: str) -> Any:
        if data is None:
            return tokenize(tokenizer, sentences(count, skip), job.max_length)
        if isinstance(data, (str, Path)) and Path(data).suffix.lower() == ".txt":
            return tokenize(tokenizer, read_lines(data)[:count], job.max_length)
        return open_data(data, what)

    calib = text_data(job.calib_data, job.samples, 0, "calibration data")
    # Built-in evaluation sentences come after the calibration ones: held out.
    evald = text_data(job.eval_data, job.eval_samples, job.samples, "evaluation data")
    sample = calib if isinstance(calib, dict) else _first_array(calib)
    with progress_bar("exporting to ONNX", None, enabled=job.progress):
        proto, parity = export_in_child({"kind": "hf", "folder": str(Path(job.hf).resolve())},
                                        {k: np.asarray(sample[k][:8]) for k in ("input_ids", "attention_mask")})
    tasks = {} if info.kind == "sequence-classification" else {"*": "embedding"}
    return SourceModel("hf", f"Hugging Face checkpoint {job.hf}", proto, parity, calib, evald, {**tasks, **job.tasks})
