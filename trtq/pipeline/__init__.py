"""The application layer: whole jobs as one call each (what the CLI commands run).

* :func:`quantize_model` / :func:`run_quantize` — ``trtq quantize``, as typed stages
  (:mod:`trtq.pipeline.source`, :mod:`trtq.pipeline.stages`, :mod:`trtq.pipeline.artifacts`);
* :func:`run_sensitivity` — ``trtq sensitivity``;
* :func:`run_calibration` — ``trtq calibrate``;
* :func:`run_build` — ``trtq build``.
"""

from trtq.pipeline.build import BuildRun, run_build
from trtq.pipeline.calibrate import CalibrationRun, run_calibration
from trtq.pipeline.job import DEFAULT_BATCH_SIZE, DEFAULT_MODEL, QuantizeJob, QuantizeResult
from trtq.pipeline.run import quantize_model, run_quantize
from trtq.pipeline.sensitivity import SensitivityRun, run_sensitivity
from trtq.pipeline.source import SourceModel, resolve_source
from trtq.pipeline.stages import Fidelity, Fp32Model, QuantizedModel, WeightRounding

__all__ = ["BuildRun", "CalibrationRun", "DEFAULT_BATCH_SIZE", "DEFAULT_MODEL", "Fidelity", "Fp32Model", "QuantizeJob", "QuantizeResult",
           "QuantizedModel", "SensitivityRun", "SourceModel", "WeightRounding", "quantize_model", "resolve_source",
           "run_build", "run_calibration", "run_quantize", "run_sensitivity"]
