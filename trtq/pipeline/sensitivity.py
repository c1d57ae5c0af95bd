"""``trtq sensitivity`` as one call: rank a model's layer groups by what int8 (fp8, INT4 weights) costs each."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtq.calibration import calibrate, load_table
from trtq.core import PreprocessSpec, atomic_write_text, check_output_folder, load_model, open_data, require, staging_dir
from trtq.core.errors import DataError
from trtq.deploy.evaluate import FidelityEvaluator
from trtq.quantize import calibration_tensors, fold_batchnorm, upcast_float16
from trtq.core.gpus import gpu_has_fp8
from trtq.pipeline.stages import INT4_GPTQ_SAMPLES
from trtq.quantize.precision import Precision
from trtq.quantize.qdq import DEFAULT_INT4_BLOCK, INT4_QMAX
from trtq.quantize.sensitivity import SensitivityReport, analyze

__all__ = ["SensitivityRun", "run_sensitivity"]


@dataclass(frozen=True)
class SensitivityRun:
    report: SensitivityReport
    eval_samples: int  # evaluation samples every measurement used
    files: tuple[Path, ...]  # sensitivity.json, sensitivity.png


def run_sensitivity(model: Any, eval_data: Any, *, calib_data: Any = None, table: Any = None,
                    method: str = "minmax", samples: int = 128, eval_samples: int = 128, metric: str = "cosine",
                    reverse: bool = True, gptq: bool = True, out_dir: str | Path = "trtq-sensitivity",
                    progress: bool = True, preprocess: PreprocessSpec | None = None,
                    gpu: str | None = None, int4_block: int | None = None) -> SensitivityRun:
    """Each layer group of the fp32 ``model`` measured alone in int8 (and, with ``reverse``, all
    but it in int8) against fp32 on ``eval_data``; writes ``sensitivity.json`` and ``.png``.

    Ranges come from ``table`` or from calibrating on ``calib_data``; with ``gptq`` (and
    calibration data), int8 weights are GPTQ-rounded as ``trtq quantize`` writes them. ``gpu``: a
    GPU generation with FP8 Tensor Cores (``trtq.core.gpus.GPU_TARGETS``) also measures each group alone in fp8.
    ``int4_block``: each MatMul/Gemm group with a constant weight also alone with INT4 weights,
    ``int4_block`` inputs per scale (GPTQ-rounded at 4 bits with ``gptq``, as ``trtq quantize``
    writes them).
    """
    rungs = ((Precision.FP8,) if gpu is not None and gpu_has_fp8(gpu) else ()) + \
        ((Precision.INT4W,) if int4_block is not None else ())
    require("matplotlib", "models")  # for sensitivity.png: fail before the slow part
    files = ("sensitivity.json", "sensitivity.png")
    check_output_folder(out_dir, files)
    proto = fold_batchnorm(upcast_float16(load_model(model))[0])  # float16 models: as trtq quantize does
    calib = open_data(calib_data, "calibration data", preprocess) if calib_data is not None else None
    if table is not None:
        cal = load_table(table, proto)
    elif calib is not None:
        cal = calibrate(proto, calib, method, samples=samples, tensors=calibration_tensors(proto), progress=progress)
    else:
        raise DataError("give --calib-data (to calibrate) or --table (a calibration table for the model)")
    evaluator = FidelityEvaluator(proto, open_data(eval_data, "evaluation data", preprocess), samples=eval_samples)
    weights = int4 = None
    if gptq and calib is not None:
        from trtq.quantize.rounding import gptq_weights

        weights = gptq_weights(proto, calib, progress=progress).weights
        if int4_block is not None:
            int4 = gptq_weights(proto, calib, samples=min(samples, INT4_GPTQ_SAMPLES), qmax=INT4_QMAX,
                                block=int4_block, progress=progress).weights
    report = analyze(proto, cal, evaluator, metric=metric, reverse=reverse, progress=progress, weights=weights,
                     rungs=rungs, int4_weights=int4, int4_block=int4_block or DEFAULT_INT4_BLOCK)
    out_dir = Path(out_dir)
    with staging_dir(out_dir, files) as stage:
        atomic_write_text(stage / "sensitivity.json", json.dumps(report.to_json(), indent=1) + "\n")
        report.plot(stage / "sensitivity.png")
    return SensitivityRun(report, evaluator.samples, (out_dir / "sensitivity.json", out_dir / "sensitivity.png"))
