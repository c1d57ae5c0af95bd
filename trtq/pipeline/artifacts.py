"""The last stage of ``trtq quantize``: every output file, written from the stage values into
the job's staging folder (moved into place only when the whole job has succeeded)."""

from __future__ import annotations

import json
from pathlib import Path

from trtq.calibration import CalibrationTable
from trtq.core import atomic_write_bytes, atomic_write_text
from trtq.deploy.build import BuildOptions, build_engine
from trtq.pipeline.job import QuantizeJob
from trtq.pipeline.report import markdown_report
from trtq.pipeline.source import SourceModel
from trtq.pipeline.stages import Fidelity, Fp32Model, QuantizedModel, WeightRounding

__all__ = ["OUTPUT_FILES", "write_artifacts"]

#: Every file a quantize job may write (checked against the output folder before any work).
OUTPUT_FILES = ("model.fp32.onnx", "model.int8.onnx", "model.mixed.onnx", "calibration.json", "precision.json",
                "sensitivity.json", "sensitivity.png", "report.md", "report.json", "model.int8.engine",
                "model.int8.engine.json", "model.mixed.engine", "model.mixed.engine.json")


def _json_text(value) -> str:
    return json.dumps(value, indent=1) + "\n"


def write_artifacts(stage: Path, job: QuantizeJob, source: SourceModel, fp32: Fp32Model, table: CalibrationTable,
                    clipping: tuple | None, rounding: WeightRounding, quantized: QuantizedModel,
                    fidelity: Fidelity) -> dict[str, Path]:
    """Write the models, the table, the reports (and the engine with ``--engine``); their paths by kind."""
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
    if job.mixed:
        files["report_md"] = atomic_write_text(stage / "report.md", markdown_report(
            command=job.command or "trtq quantize ...", model_label=source.label, eval_source=fidelity.eval_source,
            samples=fidelity.report.samples, reports=fidelity.variants, mixed=quantized.mixed,
            search=quantized.search, sensitivity=sensitivity, files=sorted(f.name for f in files.values())))
    if job.engine:
        built = build_engine(quantized.model, BuildOptions(progress=job.progress))
        files["engine"], files["engine_metadata"] = built.save(stage / f"model.{label}.engine")
    summary = {
        **fp32.to_json(),
        "evaluated_on": fidelity.eval_source,
        "gptq": rounding.to_json(),
        "layer_clipping": None if clipping is None else [c.to_json() for c in clipping],
        "calibration": {"method": table.method, "samples": table.samples, "tensors": len(table)},
        "precision": {k: v for k, v in precision.items() if k != "nodes"},
        "bias_correction": quantized.bias_json(),
        "target_runtime": {"runtime": job.runtime.runtime.value, "quantization": job.runtime.describe(),
                           "reduce_range": job.runtime.reduce_range},
        **{k: v for k, v in fidelity.to_json().items() if k != "evaluated_on"},
    }
    files["report"] = atomic_write_text(stage / "report.json", _json_text(summary))
    return files
