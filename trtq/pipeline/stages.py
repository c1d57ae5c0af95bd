"""The stages of ``trtq quantize`` after the source: each takes values and returns one.

``SourceModel`` -> :func:`prepare_fp32` -> :class:`Fp32Model` -> :func:`calibrate_model`
-> ``CalibrationTable`` -> :func:`quantize_fp32` -> :class:`QuantizedModel` ->
:func:`measure_fidelity` -> :class:`Fidelity`. Artifacts are written from the values
(:mod:`trtq.pipeline.artifacts`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import onnx

from trtq.calibration import CalibrationTable, calibrate, float_activations, load_table
from trtq.core import model_sha256
from trtq.core.onnx_model import input_specs
from trtq.core.readers import Padding, count_samples, static_batch_size
from trtq.core.errors import QuantizationError
from trtq.deploy import ComparisonReport, OrtRunner, QdqMode, compare_outputs, run_all
from trtq.deploy.compare import Thresholds
from trtq.deploy.evaluate import FidelityEvaluator, report_metrics
from trtq.deploy.layers import layer_errors, layer_inputs
from trtq.pipeline.job import QuantizeJob
from trtq.pipeline.source import SourceModel
from trtq.quantize import ExportParity, calibration_tensors, fold_batchnorm
from trtq.quantize.bias_correction import correct_bias
from trtq.quantize.clipping import refine_clipping
from trtq.quantize.equalize import equalize
from trtq.core.gpus import gpu_has_fp8
from trtq.quantize.mixed import MixedModel, apply_plan
from trtq.quantize.precision import Precision, PrecisionPlan, assignments_json
from trtq.quantize.qdq import INT4_QMAX
from trtq.quantize.rounding import GptqStatistics, gptq_from_statistics, gptq_weights
from trtq.quantize.sensitivity import (FP8_RUNGS, RUNGS, PrecisionSearchResult, SensitivityReport, analyze,
                                       metrics_text, search_precision)
from trtq.quantize.smoothquant import SmoothQuantStatistics, smooth_quant, smoothed_ranges, smoothquant_tensors

__all__ = ["Fidelity", "Fp32Model", "QuantizedModel", "WeightRounding", "calibrate_model", "measure_fidelity",
           "prepare_fp32", "quantize_fp32", "round_weights"]

log = logging.getLogger(__name__)

#: Above these gaps between TensorRT-style float Q/DQ and ORT's integer kernels, warn.
KERNEL_TOP1_GAP = 0.02
KERNEL_COSINE_GAP = 0.01
#: Evaluation samples the sensitivity ranking of a --target search uses (the search itself
#: checks the target on every evaluation sample). 64 rather than 128: the same plans on
#: EfficientNet-Lite0 (top1>=0.97) and all-MiniLM-L6-v2 (cosine>=0.998, search 354 -> 255 s).
RANK_SAMPLES = 64
#: Calibration samples for INT4 GPTQ statistics (4 bits need more rows per column than int8).
INT4_GPTQ_SAMPLES = 256
#: Samples and layers the report's per-layer error and range plots use.
LAYER_SAMPLES = 8
WORST_LAYERS = 4
#: The calibration method whose table the SmoothQuant pass can give too (a range of ``X / s``
#: follows from ``X``'s channel extremes; a histogram's does not).
SHARED_METHOD = "minmax"
#: A target met with less of the MACs quantized (int8, fp8, INT4 weights) than this is reported as such.
LOW_QUANTIZED_SHARE = 0.5


@dataclass(frozen=True)
class Fp32Model:
    """The fp32 reference (BatchNorm folded once) and the same function prepared for int8.

    ``model`` differs from ``reference`` only by exact rescalings (SmoothQuant moves activation
    outliers into weights, cross-layer equalization balances conv pairs); both compute the
    same outputs.
    """

    reference: onnx.ModelProto
    model: onnx.ModelProto
    parity: ExportParity | None = None
    smoothed: tuple = ()  # quantize.smoothquant.SmoothedGroup per linear-layer group
    equalized: tuple | None = None  # quantize.equalize.EqualizedPair per conv pair (None: not asked for)
    warnings: tuple[str, ...] = ()  # e.g. plan patterns that match no node
    table: CalibrationTable | None = None  # ``model``'s table, when one pass gave it with SmoothQuant's statistics
    gptq: GptqStatistics | None = None  # ... and GPTQ's H, gathered in that pass (on the original model)

    def to_json(self) -> dict:
        return {"export_parity": self.parity.__dict__ if self.parity else None,
                "smoothquant": [g.to_json() for g in self.smoothed],
                "equalization": None if self.equalized is None else [e.to_json() for e in self.equalized]}


@dataclass(frozen=True)
class WeightRounding:
    """GPTQ-rounded int8 weights by initializer name (empty: round to nearest) and per-layer records."""

    weights: dict = field(default_factory=dict)
    layers: tuple | None = None  # quantize.rounding.RoundedLayer per layer (None: GPTQ off)
    int4: dict = field(default_factory=dict)  # the same for int4w nodes (block-wise INT4 levels)
    int4_layers: tuple | None = None

    def to_json(self) -> list | None:
        return None if self.layers is None else [r.to_json() for r in self.layers]

    def int4_json(self) -> list | None:
        return None if self.int4_layers is None else [r.to_json() for r in self.int4_layers]


@dataclass(frozen=True)
class QuantizedModel:
    """The explicitly quantized ONNX model, the per-node precision it has, and how it was found."""

    model: onnx.ModelProto
    mixed: MixedModel
    plan: PrecisionPlan
    label: str  # "int8", or "mixed" when anything but all-int8 was asked for
    search: PrecisionSearchResult | None = None
    sensitivity: SensitivityReport | None = None
    bias_shifts: tuple | None = None  # quantize.bias_correction.BiasShift per corrected layer
    bias_samples: int = 0

    def precision_json(self) -> dict:
        out = {"plan": self.plan.to_json(), "summary": self.mixed.summary(),
               "int8_mac_share": self.mixed.int8_mac_share, "mac_shares": self.mixed.mac_shares(),
               "relative_cost": self.mixed.relative_cost(), "nodes": assignments_json(self.mixed.assignments)}
        if self.search is not None:
            out["search"] = self.search.to_json()
            out["plan"] = self.search.plan.to_json()
        return out

    def bias_json(self) -> dict | None:
        if self.bias_shifts is None:
            return None
        return {"layers": len(self.bias_shifts), "channels_corrected": sum(x.corrected for x in self.bias_shifts),
                "channels": sum(x.channels for x in self.bias_shifts), "samples": self.bias_samples}


@dataclass(frozen=True)
class Fidelity:
    """The quantized model against fp32 on the evaluation data: Q/DQ in float (TensorRT's math),
    ONNX Runtime's integer kernels, and (for mixed models) all-int8 and all-fp16 next to it."""

    report: ComparisonReport
    kernels: ComparisonReport
    eval_source: str
    variants: dict = field(default_factory=dict)  # label -> ComparisonReport
    warnings: tuple[str, ...] = ()
    layers: tuple = ()  # deploy.layers.LayerError per compute layer, in graph order
    worst_inputs: dict = field(default_factory=dict)  # fp32 values of the worst int8 layers' inputs

    def to_json(self) -> dict:
        return {"evaluated_on": self.eval_source, "fidelity": self.report.to_json(),
                "ort_integer_kernels": self.kernels.to_json(), "warnings": list(self.warnings),
                "layers": [x.to_json() for x in self.layers]}


def prepare_fp32(job: QuantizeJob, source: SourceModel) -> Fp32Model:
    """Fold BatchNorm, check the plan's patterns against the nodes, then rescale for int8
    (SmoothQuant, CLE) where the job asks for it."""
    reference = model = fold_batchnorm(source.model)
    warnings = list(source.notes)  # e.g. a float16 model computed in float32
    unmatched = job.plan.unmatched(reference)
    if unmatched:
        text = (f"precision pattern{'s' if len(unmatched) > 1 else ''} {', '.join(repr(p) for p in unmatched)} "
                "match no node of the model (after BatchNorm folding); node names are in precision.json")
        if job.strict:
            raise QuantizationError(text + " (--strict)")
        warnings.append(text)  # printed with the run's other warnings
    smoothed, equalized = [], None
    int4: frozenset[str] = frozenset()
    if job.smoothquant and job.table is None and job.uses(Precision.INT4W):
        # Activation-aware factors for the int4w layers: chosen for 4-bit block-wise weights
        # with float activations, before GPTQ rounds the scaled weights.
        int4 = frozenset(n for n, a in job.plan.resolve(model).items() if a.precision is Precision.INT4W)
        if int4:
            smoothing = smooth_quant(model, source.calib, samples=job.samples, batch_size=min(job.batch_size, 16),
                                     progress=job.progress, weight_only=job.int4_block, nodes=int4)
            model, smoothed = smoothing.model, list(smoothing.records)
    table = gptq = None
    if job.smoothquant and job.table is None and (job.uses(Precision.INT8) or job.target is not None):
        # The same function in fp32, with activation outliers moved into the weights where
        # that lowers the int8 error; everything below starts from it. Not for a plan without
        # int8: its strengths are chosen for int8, and the outliers it moves into the weights
        # are what 4-bit weights handle worst.
        if not int4 and not job.equalize and job.method == SHARED_METHOD and smoothquant_tensors(model):
            smoothing, table, gptq = _smooth_and_calibrate(job, source, model)
        else:
            others = None if not int4 else [n.name for n in model.graph.node if n.name not in int4]
            smoothing = smooth_quant(model, source.calib, samples=job.samples, batch_size=min(job.batch_size, 16),
                                     progress=job.progress, nodes=others)
        model, smoothed = smoothing.model, [*smoothed, *smoothing.records]
    if job.equalize:
        equalizing = equalize(model, source.calib, samples=min(job.samples, 64), progress=job.progress)
        model, equalized = equalizing.model, equalizing.records
    return Fp32Model(reference, model, source.parity, tuple(smoothed),
                     None if equalized is None else tuple(equalized), tuple(warnings), table, gptq)


def _smooth_and_calibrate(job: QuantizeJob, source: SourceModel, model: onnx.ModelProto):
    """SmoothQuant and the calibration table of the smoothed model from one pass over the
    original ``model``: the calibration run also hands SmoothQuant its statistics (a tap).
    Smoothing adds tensors (``X / s``) and changes no other activation, and a min/max range
    of ``X / s`` follows exactly from ``X``'s channel extremes; so the smoothed model's table
    is the original's plus those ranges (float rounding aside). Returns the smoothing and
    the table."""
    groups = smoothquant_tensors(model)
    # SmoothQuant's batches (at most 16): padded token data is cut after each batch's
    # longest sample, and smaller batches leave fewer padded positions in its statistics.
    batch_size = min(job.batch_size, 16)
    specs = input_specs(model)
    static = static_batch_size(specs)
    statistics = SmoothQuantStatistics(groups, count_samples(source.calib, job.samples) or job.samples,
                                       static or batch_size)
    taps = [statistics]
    gptq = None
    if job.gptq and Padding.of(specs) is None:
        # GPTQ's H from the first samples of the same run (its layers' inputs are the original
        # model's, rescaled where smoothed); padded token data is cut here, and GPTQ keeps it.
        gptq = GptqStatistics(model, min(job.samples, job.gptq_samples))
        taps.append(gptq)
    wanted = None if job.mixed else calibration_tensors(model, job.runtime)
    original = calibrate(model, source.calib, job.method, batch_size=batch_size, samples=job.samples,
                         tensors=wanted, progress=job.progress, taps=taps)
    stats = statistics.result()
    smoothing = smooth_quant(model, None, statistics=stats)
    ranges = dict(original.ranges)
    ranges.update(smoothed_ranges(smoothing.model, smoothing.records, stats, job.method, original.samples))
    needed = float_activations(smoothing.model) if job.mixed else calibration_tensors(smoothing.model, job.runtime)
    missing = [n for n in needed if n not in ranges]
    if missing:  # not expected (smoothing adds only X / s); calibrated on the smoothed model, to be sure
        log.info("calibrating %d tensors of the smoothed model separately", len(missing))
        ranges.update(calibrate(smoothing.model, source.calib, job.method, batch_size=batch_size,
                                samples=job.samples, tensors=missing, progress=job.progress).ranges)
    table = CalibrationTable({n: ranges[n] for n in needed}, original.method, model_sha256(smoothing.model),
                             original.samples)
    return smoothing, table, gptq


def calibrate_model(job: QuantizeJob, source: SourceModel, fp32: Fp32Model) -> tuple[CalibrationTable, tuple | None]:
    """The calibration table of ``fp32.model`` (or the job's table), and per-layer clipping records."""
    if job.table is not None:
        # The table belongs to the model as given; folding keeps every tensor name it needs.
        given = load_table(job.table, source.model)
        table = CalibrationTable(given.ranges, given.method, model_sha256(fp32.model), given.samples)
    elif fp32.table is not None:
        table = fp32.table  # calibrated with SmoothQuant's statistics, in one pass
    else:
        # fp16 regions are checked against every activation's range: calibrate them all.
        tensors = None if job.mixed else calibration_tensors(fp32.model, job.runtime)
        table = calibrate(fp32.model, source.calib, job.method, batch_size=job.batch_size, samples=job.samples,
                          tensors=tensors, progress=job.progress)
    clipping = None
    if job.layer_clipping:
        clipped = refine_clipping(fp32.model, table, source.calib, batch_size=min(job.batch_size, 16),
                                  progress=job.progress)
        table, clipping = clipped.table, clipped.records
    return table, clipping


def round_weights(job: QuantizeJob, source: SourceModel, fp32: Fp32Model) -> WeightRounding:
    """Int8 weight levels chosen for each layer's output error (GPTQ; used for int8 nodes only)."""
    if not job.gptq:
        return WeightRounding()
    if fp32.gptq is not None:  # H gathered in the calibration run
        rounded = gptq_from_statistics(fp32.model, fp32.gptq, qmax=job.runtime.weight_qmax, progress=job.progress)
    else:
        rounded = gptq_weights(fp32.model, source.calib, samples=min(job.samples, job.gptq_samples),
                               qmax=job.runtime.weight_qmax, progress=job.progress)
    if not job.uses(Precision.INT4W):
        return WeightRounding(rounded.weights, rounded.layers)
    # 4 bits need more rows per input column than int8's 64 samples give transformer layers.
    int4 = gptq_weights(fp32.model, source.calib, samples=min(job.samples, INT4_GPTQ_SAMPLES), qmax=INT4_QMAX,
                        block=job.int4_block, progress=job.progress)
    return WeightRounding(rounded.weights, rounded.layers, int4.weights, int4.layers)


def evaluation_data(source: SourceModel) -> tuple[Any, str]:
    if source.split is not None:
        return source.evald, f"a held-out part of the calibration data ({source.split})"
    if source.evald is None:
        return source.calib, "the calibration data (no evaluation data given: not held out)"
    return source.evald, "held-out evaluation data"


def quantize_fp32(job: QuantizeJob, source: SourceModel, fp32: Fp32Model, table: CalibrationTable,
                  rounding: WeightRounding) -> QuantizedModel:
    """Apply the job's plan, or search one that meets its target; then bias correction if asked."""
    label = "mixed" if job.mixed else "int8"
    if job.target is None:
        # force: the table is this model's by construction (calibrate_model), no hash to check.
        mixed = apply_plan(fp32.model, table, job.plan, force=True, target=job.runtime, weights=rounding.weights,
                           int4_weights=rounding.int4, int4_block=job.int4_block)
        quantized, shifts = mixed.model, None
        if job.bias_correction:
            corrected = correct_bias(fp32.model, quantized, source.calib, samples=job.bias_samples,
                                     batch_size=job.batch_size, progress=job.progress)
            quantized, shifts = corrected.model, corrected.records
        return QuantizedModel(quantized, mixed, job.plan, label, bias_shifts=_tuple(shifts),
                              bias_samples=job.bias_samples)
    evald = source.search_data if source.search_data is not None else evaluation_data(source)[0]
    evaluator = FidelityEvaluator(fp32.reference, evald, batch_size=job.batch_size, tasks=source.tasks,
                                  samples=job.search_samples or job.eval_samples)
    sensitivity = None
    # int8 and INT4 weights: a group whose floor is int4w (the plan's) may climb to int8.
    weights = dict(weights=rounding.weights, int4_weights=rounding.int4, int4_block=job.int4_block)

    def rank():
        # Only when all-int8 misses the target. The ranking needs relative sensitivities
        # only: at most RANK_SAMPLES samples.
        nonlocal sensitivity
        sensitivity = analyze(fp32.model, table, evaluator.head(RANK_SAMPLES), reverse=False,
                              progress=job.progress, base=job.plan, **weights)
        return sensitivity.ranking()

    def met(metrics) -> bool:
        return job.target.met_with_margin(metrics, evaluator.samples, job.target_margin)

    def evaluate(model):  # a candidate that can no longer meet the target stops early
        return evaluator(model, hopeless=lambda best: not met(best))

    rungs = FP8_RUNGS if job.gpu is not None and gpu_has_fp8(job.gpu) else RUNGS
    search = search_precision(fp32.model, table, evaluate, met, ranking=rank, base=job.plan, target=str(job.target),
                              progress=job.progress, rungs=rungs, **weights,
                              explain=lambda m: job.target.shortfall(m, evaluator.last_samples, job.target_margin,
                                                                     of=evaluator.samples))
    quantized, shifts = search.mixed.model, None
    if job.bias_correction:
        # Corrected for the model the search chose (biases corrected for all-int8 and reused by
        # every variant made the search worse here). Kept only if the target still holds.
        fixed = correct_bias(fp32.model, quantized, source.calib, samples=job.bias_samples,
                             batch_size=job.batch_size, progress=job.progress)
        corrected, shifts = fixed.model, fixed.records
        if met(evaluator(corrected)) or not search.met:
            quantized = corrected
        else:
            shifts = None
            log.warning("bias correction was dropped: the corrected model missed %s", job.target)
    return QuantizedModel(quantized, search.mixed, job.plan, label, search, sensitivity, _tuple(shifts),
                          job.bias_samples)


def _tuple(items) -> tuple | None:
    return None if items is None else tuple(items)


def measure_fidelity(job: QuantizeJob, source: SourceModel, fp32: Fp32Model, table: CalibrationTable,
                     rounding: WeightRounding, quantized: QuantizedModel) -> Fidelity:
    """Outputs of fp32 and the quantized model on the evaluation data, compared."""
    evald, eval_source = evaluation_data(source)

    def outputs(model: onnx.ModelProto, name: str, mode: QdqMode = QdqMode.FLOAT):
        return run_all(OrtRunner(model, mode=mode, name=name), evald, job.batch_size, job.eval_samples, job.progress)

    def versus(out, name: str, **kwargs) -> ComparisonReport:
        return compare_outputs(ref, out, reference_name="fp32", candidate_name=name, tasks=source.tasks,
                               **kwargs)

    ref = outputs(fp32.reference, "fp32")
    name = f"{quantized.label} (Q/DQ in float)"
    report = versus(outputs(quantized.model, name), name, thresholds=Thresholds())
    variants = {}
    if job.mixed:  # the report compares the mixed model with plain int8 and plain fp16
        for variant, precision in (("int8", Precision.INT8), ("fp16", Precision.FP16)):
            other = apply_plan(fp32.model, table, PrecisionPlan(precision), force=True, weights=rounding.weights).model
            label = f"all {variant}" + (" (no bias correction)" if quantized.bias_shifts and variant == "int8" else "")
            variants[label] = versus(outputs(other, variant), variant)
        variants["mixed"] = report
    name = f"{quantized.label} (ORT integer kernels)"
    kernels = versus(outputs(quantized.model, name, QdqMode.ORT_INT8), name)
    warnings = [*fp32.warnings, *_kernel_warnings(report, kernels)]
    search = quantized.search
    if search is not None and not search.met:
        warnings.append(f"the target {search.target} is out of reach: even with every layer group out of "
                        f"int8 the search got {metrics_text(search.metrics)}; wrote that model anyway")
    elif search is not None and source.search_data is not None and not job.target.met(report_metrics(report)):
        warnings.append(f"the target {search.target} was met on the samples the search chose on, but not on the "
                        f"held-out check ({metrics_text(report_metrics(report))}): the plan may not generalize; "
                        "give more data or --eval-data")
    quantized_share = sum(quantized.mixed.mac_share(p) for p in (Precision.INT8, Precision.FP8, Precision.INT4W))
    if search is not None and search.met and quantized_share < LOW_QUANTIZED_SHARE:
        warnings.append(f"the target {search.target} is met with only {quantized_share:.1%} of the MACs in int8, fp8 "
                        "or INT4 weights: most of the model runs in fp16/fp32, so expect little speed-up or saving")
    # Where the error comes from: each compute layer against the same layer of the fp32 model
    # it was quantized from, on a few samples; and the inputs of the worst int8 layers.
    layers = tuple(layer_errors(fp32.model, quantized.model, evald, samples=LAYER_SAMPLES))
    worst = sorted((x for x in layers if x.precision == "int8"), key=lambda x: x.sqnr_db)[:WORST_LAYERS]
    worst_inputs = layer_inputs(fp32.model, [x.input for x in worst], evald, samples=LAYER_SAMPLES) if worst else {}
    return Fidelity(report, kernels, eval_source, variants, tuple(warnings), layers, worst_inputs)


def _kernel_warnings(qdq: ComparisonReport, kernels: ComparisonReport):
    for a, b in zip(qdq.outputs, kernels.outputs):
        top_gap = abs((a.top1 or 0) - (b.top1 or 0))
        if top_gap > KERNEL_TOP1_GAP or abs(a.cosine - b.cosine) > KERNEL_COSINE_GAP:
            yield (f"output '{a.name}': ONNX Runtime's integer kernels disagree with the TensorRT-style "
                   f"float Q/DQ result (cosine {b.cosine:.4f} vs {a.cosine:.4f}"
                   + (f", top-1 {b.top1:.1%} vs {a.top1:.1%}" if a.top1 is not None else "")
                   + "); this CPU's int8 kernels are not a faithful TensorRT reference")
