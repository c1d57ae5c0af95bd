"""``trtq quantize`` as one call: :func:`run_quantize` (a :class:`QuantizeJob`) and
:func:`quantize_model` (the same, from keyword options)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from trtq.calibration.observers import make_observer
from trtq.core import require, staging_dir
from trtq.core.budget import memory_budget
from trtq.core.stageclock import StageClock
from trtq.deploy.backend import load_backend
from trtq.deploy.build import BuildOptions, rtx_targets
from trtq.pipeline.artifacts import OUTPUT_FILES, write_artifacts
from trtq.pipeline.job import QuantizeJob, QuantizeResult
from trtq.pipeline.source import resolve_source, split_for_search
from trtq.pipeline.stages import calibrate_model, measure_fidelity, prepare_fp32, quantize_fp32, round_weights

__all__ = ["quantize_model", "run_quantize"]


def run_quantize(job: QuantizeJob) -> QuantizeResult:
    """Export (if needed), calibrate, quantize and compare; write the outputs atomically.

    Everything is written into a private staging folder and moved into ``job.out_dir`` only
    when the whole job has succeeded: a failure never leaves partial files or overwrites good ones.
    """
    make_observer(job.method, "probe")  # an unknown method fails before any slow step
    if job.target is not None:
        require("matplotlib", "models")  # the sensitivity chart: say so before any slow step
    if job.engine:
        backend = load_backend()  # no TensorRT installed: say so before any slow step
        if backend.is_rtx and job.gpu is not None:  # nor a GPU generation TensorRT-RTX has no target for
            rtx_targets(backend.module, BuildOptions(gpu=job.gpu), fp8=False)
    clock = StageClock()
    with memory_budget(job.max_memory), staging_dir(job.out_dir, OUTPUT_FILES) as stage:
        with clock("source (export, data)"):
            source = resolve_source(job)
            if job.target is not None and source.evald is None:
                source = split_for_search(source, job)  # the target is checked on samples the search never saw
        with clock("SmoothQuant" + (" + CLE" if job.equalize else "")):
            fp32 = prepare_fp32(job, source)
        if fp32.table is not None:  # one pass gave both (and GPTQ's statistics)
            clock.rename_last("SmoothQuant + calibration" + (" + GPTQ statistics" if fp32.gptq is not None else ""))
        with clock("calibration" + (" + clipping" if job.layer_clipping else "")) if (
                fp32.table is None or job.layer_clipping) else contextlib.nullcontext():
            table, clipping = calibrate_model(job, source, fp32)
        with clock("GPTQ"):
            rounding = round_weights(job, source, fp32)
        with clock("precision search" if job.target is not None else "Q/DQ" + (
                " + bias correction" if job.bias_correction else "")):
            quantized = quantize_fp32(job, source, fp32, table, rounding)
        with clock("fidelity evaluation"):
            fidelity = measure_fidelity(job, source, fp32, table, rounding, quantized)
        with clock("writing"):
            files = write_artifacts(stage, job, source, fp32, table, clipping, rounding, quantized, fidelity, clock)
    files = {kind: Path(job.out_dir) / path.name for kind, path in files.items()}
    return QuantizeResult(Path(job.out_dir), files, fp32, table, clipping, rounding, quantized, fidelity, job.runtime,
                          tuple(clock.stages))


def quantize_model(out_dir: str | Path = "trtq-output", **options) -> QuantizeResult:
    """``trtq quantize`` from Python: the whole job (export, SmoothQuant, calibration, GPTQ,
    Q/DQ, fidelity report) with the CLI's defaults; ``options`` are :class:`QuantizeJob`'s fields.

    >>> trtq.quantize_model(onnx="model.onnx", calib_data="calib.npy", out_dir="out", target="top1>=0.97")
    """
    return run_quantize(QuantizeJob(out_dir=Path(out_dir), **options))
