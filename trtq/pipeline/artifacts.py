"""The last stage of ``trtq quantize``: every output file, written from the stage values into
the job's staging folder (moved into place only when the whole job has succeeded)."""

from __future__ import annotations

import json
from pathlib import Path

from trtq.calibration import CalibrationTable
from trtq.core import atomic_write_bytes, atomic_write_text
from trtq.core.stageclock import StageClock
from trtq.deploy.build import BuildOptions, build_engine
from trtq.pipeline.job import QuantizeJob
from trtq.pipeline.html_report import html_report
from trtq.pipeline.report import markdown_report
from trtq.pipeline.source import SourceModel
from trtq.pipeline.stages import Fidelity, Fp32Model, QuantizedModel, WeightRounding

__all__ = ["OUTPUT_FILES", "write_artifacts"]

#: Every file a quantize job may write (checked against the output folder before any work).
OUTPUT_FILES = ("model.fp32.onnx", "model.int8.onnx", "model.mixed.onnx", "calibration.json", "precision.json",
                "sensitivity.json", "sensitivity.png", "report.md", "report.html", "report.json", "model.int8.engine",
                "model.int8.engine.json", "model.mixed.engine", "model.mixed.engine.json")


def _json_text(value) -> str:
    return json.dumps(value, indent=1) + "\n"


def _changes(fp32: Fp32Model, rounding: WeightRounding, clipping, quantized: QuantizedModel) -> list[str]:
    """What each algorithm did, one line each (for the reports)."""
    out = []
    moved = [g for g in fp32.smoothed if g.alpha is not None]
    out.append(f"SmoothQuant: {len(moved)} of {len(fp32.smoothed)} linear-layer groups smoothed" if fp32.smoothed
               else "SmoothQuant: no MatMul/Gemm group to smooth (or off)")
    if rounding.layers is not None:
        gains = sorted(r.sqnr_db - r.sqnr_nearest_db for r in rounding.layers)
        out.append(f"GPTQ: {len(gains)} layers' int8 weights re-rounded" + (
            f", layer output SQNR +{gains[len(gains) // 2]:.1f} dB median" if gains else ""))
    else:
        out.append("GPTQ: off (weights rounded to nearest)")
    if rounding.int4_layers is not None:
        gains = sorted(r.sqnr_db - r.sqnr_nearest_db for r in rounding.int4_layers)
        out.append(f"GPTQ (int4w): {len(gains)} layers' int4 weights re-rounded" + (
            f", layer output SQNR +{gains[len(gains) // 2]:.1f} dB median" if gains else ""))
    if fp32.equalized is not None:
        out.append(f"cross-layer equalization: {sum(e.alpha is not None for e in fp32.equalized)} of "
                   f"{len(fp32.equalized)} conv pairs rescaled")
    if clipping is not None:
        out.append(f"layer clipping: {sum(c.fraction != 1.0 for c in clipping)} of {len(clipping)} activations clipped")
    bias = quantized.bias_json()
    out.append("bias correction: off" if bias is None else
               f"bias correction: {bias['channels_corrected']} of {bias['channels']} channels in {bias['layers']} layers")
    return out


def write_artifacts(stage: Path, job: QuantizeJob, source: SourceModel, fp32: Fp32Model, table: CalibrationTable,
                    clipping: tuple | None, rounding: WeightRounding, quantized: QuantizedModel,
                    fidelity: Fidelity, clock: StageClock | None = None) -> dict[str, Path]:
    """Write the models, the table, the reports (and the engine with ``--engine``); their paths by kind.

    ``clock``: the stages timed so far (report.json's ``time``; writing itself is not in it)."""
    label = quantized.label
    files = {
        "fp32": atomic_write_bytes(stage / "model.fp32.onnx", fp32.model.SerializeToString()),
        label: atomic_write_bytes(stage / f"model.{label}.onnx", quantized.model.SerializeToString()),
        "calibration": table.save(stage / "calibration.json"),
    }
    precision = quantized.precision_json()
    if job.mixed:
        files["precision"] = atomic_write_text(stage / "precision.json", _json_text(precision))
    sensitivity = quantized.sensitivity
    if sensitivity is not None:
        files["sensitivity"] = atomic_write_text(stage / "sensitivity.json", _json_text(sensitivity.to_json()))
        files["sensitivity_chart"] = sensitivity.plot(stage / "sensitivity.png")
    if job.engine:
        built = build_engine(quantized.model, BuildOptions(progress=job.progress, gpu=job.gpu))
        files["engine"], files["engine_metadata"] = built.save(stage / f"model.{label}.engine")
    names = sorted({*(f.name for f in files.values()), "report.md", "report.html", "report.json"})
    reports = fidelity.variants or {f"{label} (Q/DQ in float)": fidelity.report,
                                    f"{label} (ORT integer kernels)": fidelity.kernels}
    command = job.command or "trtq quantize ..."
    files["report_md"] = atomic_write_text(stage / "report.md", markdown_report(
        command=command, model_label=source.label, eval_source=fidelity.eval_source,
        samples=fidelity.report.samples, reports=reports, mixed=quantized.mixed, search=quantized.search,
        sensitivity=sensitivity, files=names))
    files["report_html"] = atomic_write_text(stage / "report.html", html_report(
        command=command, model_label=source.label, eval_source=fidelity.eval_source, reports=reports,
        layers=fidelity.layers, ranges=fidelity.worst_inputs, table=table,
        changes=_changes(fp32, rounding, clipping, quantized), precision=precision,
        moved=quantized.search.moved if quantized.search else (),
        sensitivity_png=files["sensitivity_chart"].read_bytes() if "sensitivity_chart" in files else None,
        files=names))
    summary = {
        **fp32.to_json(),
        "evaluated_on": fidelity.eval_source,
        "gptq": rounding.to_json(),
        "gptq_int4": rounding.int4_json(),
        "layer_clipping": None if clipping is None else [c.to_json() for c in clipping],
        "calibration": {"method": table.method, "samples": table.samples, "tensors": len(table)},
        "precision": {k: v for k, v in precision.items() if k != "nodes"},
        "bias_correction": quantized.bias_json(),
        "target_runtime": {"runtime": job.runtime.runtime.value, "quantization": job.runtime.describe(),
                           "reduce_range": job.runtime.reduce_range},
        **{k: v for k, v in fidelity.to_json().items() if k != "evaluated_on"},
        "time": None if clock is None else clock.to_json(),
    }
    files["report"] = atomic_write_text(stage / "report.json", _json_text(summary))
    return files
