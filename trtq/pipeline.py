"""The main job, end to end: model -> fp32 ONNX -> calibration -> int8 ONNX -> fidelity report.

``run_quantize(QuantizeJob(...))`` is what ``trtq quantize`` calls. Everything is written
into a private staging folder and moved into ``out_dir`` only when the whole job has
succeeded, so a failure never leaves partial files or overwrites good ones.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtq.calibration import CalibrationTable, calibrate, load_table
from trtq.core import load_arrays, load_model, model_sha256
from trtq.calibration.observers import make_observer
from trtq.core.progress import progress_bar
from trtq.core.readers import ImageFolderReader
from trtq.deploy import ComparisonReport, OrtRunner, QdqMode, compare_outputs, run_all
from trtq.deploy.backend import load_backend
from trtq.deploy.build import BuildOptions, build_engine, save_engine
from trtq.deploy.compare import Thresholds
from trtq.deploy.evaluate import FidelityEvaluator, Target
from trtq.models import get_model_spec, resolve_factory
from trtq.quantize import ExportParity, calibration_tensors, export, fold_batchnorm, load_checkpoint
from trtq.quantize.clipping import refine_clipping
from trtq.quantize.equalize import equalize
from trtq.quantize.rounding import gptq_weights
from trtq.quantize.smoothquant import smooth_quant
from trtq.quantize.bias_correction import correct_bias
from trtq.quantize.mixed import MixedModel, apply_plan
from trtq.quantize.precision import Precision, PrecisionPlan, assignments_json
from trtq.quantize.targets import QuantTarget
from trtq.quantize.sensitivity import PrecisionSearchResult, SensitivityReport, analyze, search_precision
from trtq.core.errors import DataError, ModelError, QuantizationError, require
from trtq.core.fileio import atomic_write_bytes, atomic_write_text, staging_dir
from trtq.report import markdown_report

log = logging.getLogger(__name__)

DEFAULT_MODEL = "efficientnet_lite0"
#: Above these gaps between TensorRT-style float Q/DQ and ORT's integer kernels, warn.
KERNEL_TOP1_GAP = 0.02
KERNEL_COSINE_GAP = 0.01
#: Evaluation samples the sensitivity ranking of a --target search uses (the search itself
#: checks the target on every evaluation sample).
RANK_SAMPLES = 128


@dataclass(frozen=True)
class QuantizeJob:
    """What to quantize and where to write it; mirrors ``trtq quantize``'s options.

    Model source, one of: ``onnx`` (an fp32 ONNX file); ``checkpoint`` + ``model`` (a
    state dict and a registered name or ``package.module:callable``); ``model`` alone (a
    registered model with its packaged weights). Nothing: the embedded default,
    EfficientNet-Lite0 on the sample photos.
    """

    out_dir: Path
    model: str | None = None
    checkpoint: Path | None = None
    onnx: Path | None = None
    hf: Path | None = None  # a Hugging Face checkpoint folder (see quantize.hf)
    max_length: int = 128  # tokens per sentence for hf models
    calib_data: Any = None
    eval_data: Any = None
    method: str = "minmax"
    table: Path | None = None
    samples: int = 128
    eval_samples: int = 256
    batch_size: int = 32
    engine: bool = False
    progress: bool = True
    plan: PrecisionPlan = field(default_factory=PrecisionPlan)
    target: str | None = None  # e.g. "top1>=0.97": search the plan (see quantize.sensitivity)
    search_samples: int | None = None  # evaluation samples the search uses (default: eval_samples)
    command: str = ""  # how the job was started, for the report's "reproduce" line
    bias_correction: bool = False  # see quantize.bias_correction (after GPTQ it lowers SQNR: off by default)
    bias_samples: int = 64
    smoothquant: bool = True  # see quantize.smoothquant (skipped with a given table)
    layer_clipping: bool = False  # see quantize.clipping (measured to buy little: off by default)
    equalize: bool = False  # see quantize.equalize (measured to buy little: off by default)
    gptq: bool = True  # see quantize.rounding: error-compensating int8 weight rounding
    gptq_samples: int = 64
    target_runtime: str = "tensorrt"  # or "ort-cpu" (see quantize.targets)
    reduce_range: bool | None = None  # ort-cpu: 7-bit weights; None: detect this CPU (VNNI or not)

    @property
    def mixed(self) -> bool:
        """Whether anything but plain all-int8 was asked for."""
        return bool(self.plan.overrides) or self.plan.default is not Precision.INT8 or self.target is not None


@dataclass(frozen=True)
class QuantizeResult:
    out_dir: Path
    files: dict[str, Path]
    table: CalibrationTable
    report: ComparisonReport
    int8_kernels: ComparisonReport | None
    export_parity: ExportParity | None
    eval_source: str
    warnings: tuple[str, ...] = field(default_factory=tuple)
    mixed: MixedModel | None = None
    search: PrecisionSearchResult | None = None
    sensitivity: SensitivityReport | None = None
    bias_shifts: tuple = ()  # quantize.bias_correction.BiasShift per corrected layer
    smoothed: tuple = ()  # quantize.smoothquant.SmoothedGroup per linear-layer group
    clipping: tuple = ()  # quantize.clipping.ClipChoice per refined tensor
    runtime: QuantTarget = QuantTarget()  # the runtime the int8 model is written for
    equalized: tuple = ()  # quantize.equalize.EqualizedPair per conv pair (with --equalize)
    rounded: tuple = ()  # quantize.rounding.RoundedLayer per GPTQ-rounded layer


def _as_array(data: Any, what: str) -> Any:
    """Load a path into arrays (``.npy``/``.npz``/image folder); leave other forms as they are."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        return ImageFolderReader(path) if path.is_dir() else load_arrays(path)  # folders: read lazily
    if data is None:
        raise DataError(f"no {what} given")
    return data


def _first_array(data: Any) -> np.ndarray:
    if isinstance(data, ImageFolderReader):
        return next(data.batches(8))
    if isinstance(data, np.ndarray):
        return data
    if isinstance(data, dict) and len(data) == 1:
        return next(iter(data.values()))
    raise DataError("exporting a PyTorch model needs single-input calibration data (.npy, or .npz with one key)")


def _spec_for(job: QuantizeJob):
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


def _source_model(job: QuantizeJob) -> tuple[onnx.ModelProto, ExportParity | None, Any, Any]:
    """The fp32 model as given or exported, export parity, calibration data, evaluation data."""
    spec = _spec_for(job)
    if job.hf is not None:
        return _hf_source(job)
    for data in (job.calib_data, job.eval_data):
        if data is not None and isinstance(data, (str, Path)) and Path(data).suffix.lower() == ".txt":
            raise DataError(f"{data}: text files (one sentence per line) are for Hugging Face checkpoints (--hf DIR)")
    if job.calib_data is not None:
        calib = _as_array(job.calib_data, "calibration data")
    elif spec is not None:
        calib = spec.calibration_data(job.samples)
    else:
        raise DataError("calibration data is required for this model: pass --calib-data DATA.npy|DATA.npz")
    if job.eval_data is not None:
        evald = _as_array(job.eval_data, "evaluation data")
    else:
        evald = spec.evaluation_data(job.eval_samples) if spec is not None else None
    if job.onnx is not None:
        return load_model(job.onnx), None, calib, evald
    if job.checkpoint is not None:
        module = load_checkpoint(job.checkpoint, resolve_factory(job.model))
    else:
        module = spec.factory(pretrained=True)
    with progress_bar("exporting to ONNX", None, enabled=job.progress):
        proto, parity = export(module, _first_array(calib)[:8],
                               input_name=spec.input_name if spec else "input",
                               output_name="logits" if spec else "output")
    return proto, parity, calib, evald


def _hf_source(job: QuantizeJob) -> tuple[onnx.ModelProto, ExportParity, Any, Any]:
    """Export a Hugging Face folder; sentences from text files (or the built-in ones), tokenized."""
    from trtq.models.text import sentences
    from trtq.quantize.hf import describe, export_hf, load_tokenizer, read_lines, tokenize

    describe(job.hf)  # a missing folder, config or weights: say so before anything loads
    tokenizer = load_tokenizer(job.hf)

    def text_data(data: Any, count: int, skip: int, what: str) -> Any:
        if data is None:
            return tokenize(tokenizer, sentences(count, skip), job.max_length)
        if isinstance(data, (str, Path)) and Path(data).suffix.lower() == ".txt":
            return tokenize(tokenizer, read_lines(data)[:count], job.max_length)
        return _as_array(data, what)

    calib = text_data(job.calib_data, job.samples, 0, "calibration data")
    # Built-in evaluation sentences come after the calibration ones: held out.
    evald = text_data(job.eval_data, job.eval_samples, job.samples, "evaluation data")
    with progress_bar("exporting to ONNX", None, enabled=job.progress):
        proto, parity, _ = export_hf(job.hf, calib if isinstance(calib, dict) else _first_array(calib))
    return proto, parity, calib, evald


def run_quantize(job: QuantizeJob) -> QuantizeResult:
    """Export (if needed), calibrate, quantize and compare; write the outputs atomically."""
    make_observer(job.method, "probe")  # an unknown method fails before any slow step
    runtime = QuantTarget.parse(job.target_runtime, job.reduce_range)
    _check_runtime(job, runtime)
    target = Target.parse(job.target) if job.target else None
    if target is not None:
        require("matplotlib", "models")  # the sensitivity chart: say so before any slow step
    if job.engine:
        load_backend()  # no TensorRT installed: say so before any slow step
    with staging_dir(job.out_dir) as stage:
        source, parity, calib, evald = _source_model(job)
        classifier = None  # (N, classes) outputs count as a classifier's; embeddings do not
        if job.hf is not None:
            from trtq.quantize.hf import describe

            classifier = None if describe(job.hf).kind == "sequence-classification" else False
        original = fp32 = fold_batchnorm(source)
        smoothed = []
        if job.smoothquant and job.table is None:
            # The same function in fp32, with activation outliers moved into the weights
            # where that lowers the int8 error; everything below starts from it.
            fp32, smoothed = smooth_quant(fp32, calib, samples=job.samples, batch_size=min(job.batch_size, 16),
                                          progress=job.progress)
        equalized = []
        if job.equalize:
            fp32, equalized = equalize(fp32, calib, samples=min(job.samples, 64), progress=job.progress)
        if job.table is not None:
            # The table belongs to the model as given; folding keeps every tensor name it needs.
            given = load_table(job.table, source)
            table = CalibrationTable(given.ranges, given.method, model_sha256(fp32), given.samples)
        else:
            # fp16 regions are checked against every activation's range: calibrate them all.
            tensors = None if job.mixed else calibration_tensors(fp32, runtime)
            table = calibrate(fp32, calib, job.method, batch_size=job.batch_size, samples=job.samples,
                              tensors=tensors, progress=job.progress)
        weights, rounded = {}, []
        if job.gptq:
            # Int8 weight levels chosen for each layer's output error (used for int8 nodes only).
            weights, rounded = gptq_weights(fp32, calib, samples=min(job.samples, job.gptq_samples),
                                            qmax=runtime.weight_qmax, progress=job.progress)
        clipping = []
        if job.layer_clipping:
            table, clipping = refine_clipping(fp32, table, calib, batch_size=min(job.batch_size, 16),
                                              progress=job.progress)
        eval_source = "held-out evaluation data"
        if evald is None:
            evald, eval_source = calib, "the calibration data (no evaluation data given: not held out)"
        search = sensitivity = shifts = None
        if target is not None:
            evaluator = FidelityEvaluator(original, evald, batch_size=job.batch_size, classifier=classifier,
                                          samples=job.search_samples or job.eval_samples)
            # The ranking needs relative sensitivities only: at most RANK_SAMPLES samples.
            sensitivity = analyze(fp32, table, evaluator.head(RANK_SAMPLES), reverse=False, progress=job.progress,
                                  weights=weights)
            search = search_precision(fp32, table, evaluator, target.met, ranking=sensitivity.ranking(),
                                      weights=weights,
                                      base=job.plan, target=str(target), progress=job.progress)
            mixed = search.mixed
            quantized = mixed.model
            if job.bias_correction:
                # Corrected for the model the search chose (biases corrected for all-int8 and
                # reused by every variant made the search worse here). Kept only if the
                # target still holds.
                corrected, shifts = correct_bias(fp32, quantized, calib, samples=job.bias_samples,
                                                 batch_size=job.batch_size, progress=job.progress)
                if target.met(evaluator(corrected)) or not search.met:
                    quantized = corrected
                else:
                    shifts = None
                    log.warning("bias correction was dropped: the corrected model missed %s", target)
        else:
            mixed = apply_plan(fp32, table, job.plan, target=runtime, weights=weights)
            quantized = mixed.model
            if job.bias_correction:
                quantized, shifts = correct_bias(fp32, quantized, calib, samples=job.bias_samples,
                                                 batch_size=job.batch_size, progress=job.progress)
        label = "mixed" if job.mixed else "int8"
        eval_n = job.eval_samples
        ref = run_all(OrtRunner(original, name="fp32"), evald, job.batch_size, eval_n, job.progress)
        cand_name = f"{label} (Q/DQ in float)"
        cand = run_all(OrtRunner(quantized, name=cand_name), evald, job.batch_size, eval_n, job.progress)
        report = compare_outputs(ref, cand, reference_name="fp32", candidate_name=cand_name, classifier=classifier,
                                 thresholds=Thresholds())
        variants = {}
        if job.mixed:  # the report compares the mixed model with plain int8 and plain fp16
            for variant, precision in (("int8", Precision.INT8), ("fp16", Precision.FP16)):
                other = apply_plan(fp32, table, PrecisionPlan(precision), weights=weights).model
                out = run_all(OrtRunner(other, name=variant), evald, job.batch_size, eval_n, job.progress)
                label_ = f"all {variant}" + (" (no bias correction)" if shifts and variant == "int8" else "")
                variants[label_] = compare_outputs(ref, out, reference_name="fp32", candidate_name=variant,
                                                   classifier=classifier)
            variants["mixed"] = report
        kernels_name = f"{label} (ORT integer kernels)"
        kernels_out = run_all(OrtRunner(quantized, mode=QdqMode.ORT_INT8, name=kernels_name),
                              evald, job.batch_size, eval_n, job.progress)
        kernels = compare_outputs(ref, kernels_out, reference_name="fp32", candidate_name=kernels_name,
                                  classifier=classifier)
        warnings = list(_kernel_warnings(report, kernels))
        if search is not None and not search.met:
            warnings.append(f"the target {search.target} is out of reach: even with every layer group out of "
                            f"int8 the search got {_metric_text(search.metrics)}; wrote that model anyway")
        files = {
            "fp32": atomic_write_bytes(stage / "model.fp32.onnx", fp32.SerializeToString()),
            label: atomic_write_bytes(stage / f"model.{label}.onnx", quantized.SerializeToString()),
            "calibration": table.save(stage / "calibration.json"),
        }
        precision = {"plan": job.plan.to_json(), "summary": mixed.summary(),
                     "int8_mac_share": mixed.int8_mac_share, "nodes": assignments_json(mixed.assignments)}
        if search is not None:
            precision["search"] = search.to_json()
            precision["plan"] = search.plan.to_json()
        if job.mixed:
            files["precision"] = atomic_write_text(stage / "precision.json", json.dumps(precision, indent=1) + "\n")
        if sensitivity is not None:
            files["sensitivity"] = atomic_write_text(stage / "sensitivity.json",
                                                     json.dumps(sensitivity.to_json(), indent=1) + "\n")
            files["sensitivity_chart"] = sensitivity.plot(stage / "sensitivity.png")
        if job.mixed:
            files["report_md"] = atomic_write_text(stage / "report.md", markdown_report(
                command=job.command or "trtq quantize ...", model_label=_model_label(job),
                eval_source=eval_source, samples=report.samples, reports=variants, mixed=mixed, search=search,
                sensitivity=sensitivity, files=sorted(f.name for f in files.values())))
        if job.engine:
            engine, meta = build_engine(quantized, BuildOptions(progress=job.progress))
            files["engine"], files["engine_metadata"] = save_engine(engine, meta, stage / f"model.{label}.engine")
        summary = {"export_parity": parity.__dict__ if parity else None, "evaluated_on": eval_source,
                   "smoothquant": [g.to_json() for g in smoothed],
                   "equalization": [e.to_json() for e in equalized] if job.equalize else None,
                   "gptq": [r.to_json() for r in rounded] if job.gptq else None,
                   "layer_clipping": [c.to_json() for c in clipping] if job.layer_clipping else None,
                   "calibration": {"method": table.method, "samples": table.samples, "tensors": len(table)},
                   "precision": {k: v for k, v in precision.items() if k != "nodes"},
                   "bias_correction": None if shifts is None else {
                       "layers": len(shifts), "channels_corrected": sum(x.corrected for x in shifts),
                       "channels": sum(x.channels for x in shifts), "samples": job.bias_samples},
                   "target_runtime": {"runtime": runtime.runtime.value, "quantization": runtime.describe(),
                                      "reduce_range": runtime.reduce_range},
                   "fidelity": report.to_json(), "ort_integer_kernels": kernels.to_json(),
                   "warnings": warnings}
        files["report"] = atomic_write_text(stage / "report.json", json.dumps(summary, indent=1) + "\n")
    files = {k: Path(job.out_dir) / v.name for k, v in files.items()}
    return QuantizeResult(Path(job.out_dir), files, table, report, kernels, parity, eval_source, tuple(warnings),
                          mixed, search, sensitivity, tuple(shifts or ()), tuple(smoothed),
                          tuple(clipping), runtime, tuple(equalized), tuple(rounded))


def _check_runtime(job: QuantizeJob, runtime: QuantTarget) -> None:
    """Option combinations that cannot be honoured (most with ``--target-runtime ort-cpu``),
    refused before any slow step."""
    if job.equalize and job.table is not None:
        raise QuantizationError("--equalize rescales the model before calibration, so it cannot use a given --table")
    if runtime.symmetric:
        return
    if job.equalize:
        raise QuantizationError("--equalize writes per-channel Min bounds that ONNX Runtime's CPU kernels cannot "
                                "fuse; it is for --target-runtime tensorrt")
    if job.engine:
        raise QuantizationError("--engine builds a TensorRT engine, which needs TensorRT-style int8: "
                                "drop --target-runtime ort-cpu, or drop --engine")
    if job.target is not None:
        raise QuantizationError("--target searches fp16/fp32 layers for TensorRT; with --target-runtime ort-cpu "
                                "choose --fp32 layers by hand (see `trtq sensitivity`)")
    if Precision.FP16 in (job.plan.default, *(r.precision for r in job.plan.overrides)):
        raise QuantizationError("--target-runtime ort-cpu writes int8 and fp32 only: ONNX Runtime's CPU provider "
                                "has no fast fp16 kernels; use --fp32 for the layers to keep out of int8")


def _model_label(job: QuantizeJob) -> str:
    if job.hf is not None:
        return f"Hugging Face checkpoint {job.hf}"
    if job.onnx is not None:
        return str(job.onnx)
    return f"{job.model or DEFAULT_MODEL}" + (f" ({job.checkpoint})" if job.checkpoint else "")


def _metric_text(metrics) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if v is not None)


def _kernel_warnings(qdq: ComparisonReport, kernels: ComparisonReport):
    for a, b in zip(qdq.outputs, kernels.outputs):
        top_gap = abs((a.top1 or 0) - (b.top1 or 0))
        if top_gap > KERNEL_TOP1_GAP or abs(a.cosine - b.cosine) > KERNEL_COSINE_GAP:
            yield (f"output '{a.name}': ONNX Runtime's integer kernels disagree with the TensorRT-style "
                   f"float Q/DQ result (cosine {b.cosine:.4f} vs {a.cosine:.4f}"
                   + (f", top-1 {b.top1:.1%} vs {a.top1:.1%}" if a.top1 is not None else "")
                   + "); this CPU's int8 kernels are not a faithful TensorRT reference")
