"""What a ``trtq quantize`` job is asked to do (:class:`QuantizeJob`) and what it produced
(:class:`QuantizeResult`): typed values, the CLI's options parsed once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtq.core.budget import parse_memory
from trtq.core.errors import QuantizationError
from trtq.core.readers import PreprocessSpec
from trtq.deploy.compare import parse_metric_overrides
from trtq.deploy.evaluate import Target
from trtq.core.gpus import gpu_has_fp8
from trtq.quantize.precision import Precision, PrecisionPlan
from trtq.quantize.targets import QuantTarget

if TYPE_CHECKING:  # the stage values; imported lazily at run time
    from trtq.calibration import CalibrationTable
    from trtq.pipeline.stages import Fidelity, Fp32Model, QuantizedModel, WeightRounding

DEFAULT_MODEL = "efficientnet_lite0"
#: Batch size of every stage that runs the model (calibration, evaluation); `trtq calibrate`,
#: `trtq compare` and `trtq quantize` share it.
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class QuantizeJob:
    """What to quantize and where to write it; mirrors ``trtq quantize``'s options.

    Model source, one of: ``onnx`` (an fp32 ONNX file); ``checkpoint`` + ``model`` (a
    state dict and a registered name or ``package.module:callable``); ``model`` alone (a
    registered model with its packaged weights); ``hf`` (a Hugging Face folder). Nothing:
    the embedded default, EfficientNet-Lite0 on the sample photos.

    ``target`` (e.g. ``Target.parse("top1>=0.97")``) and ``runtime`` (``QuantTarget``) may be
    given as text; they are parsed here, so a job always holds typed values.
    """

    out_dir: Path = Path("trtq-output")
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
    batch_size: int = DEFAULT_BATCH_SIZE
    engine: bool = False
    progress: bool = True
    plan: PrecisionPlan = field(default_factory=PrecisionPlan)
    target: Target | None = None  # search the plan (see quantize.sensitivity)
    search_samples: int | None = None  # evaluation samples the search uses (default: eval_samples)
    gpu: str | None = None  # the GPU generation (trtq.core.gpus.GPU_TARGETS): fp8 in the --target ladder from Ada on
    target_margin: float = 1.0  # z of the lower confidence bound a share target must reach (0: the plain share)
    command: str = ""  # how the job was started, for the report's "reproduce" line
    bias_correction: bool = False  # see quantize.bias_correction (after GPTQ it lowers SQNR: off by default)
    bias_samples: int = 64
    smoothquant: bool = True  # see quantize.smoothquant (skipped with a given table)
    layer_clipping: bool = False  # see quantize.clipping (measured to buy little: off by default)
    equalize: bool = False  # see quantize.equalize (measured to buy little: off by default)
    gptq: bool = True  # see quantize.rounding: error-compensating int8 weight rounding
    gptq_samples: int = 64
    int4_block: int = 128  # inputs per scale of int4w weights (32, 64 or 128)
    runtime: QuantTarget = field(default_factory=QuantTarget)  # the runtime the int8 model is written for
    strict: bool = False  # plan patterns that match no node: an error instead of a warning
    preprocess: PreprocessSpec | None = None  # how image folders become inputs (None: fitted to the model)
    metrics: tuple[str, ...] = ()  # --metric: "METRIC" or "OUTPUT=METRIC", how outputs are read (default: shape)
    max_memory: int | str | None = None  # bytes (or "2GB") of activations a pass may hold (None: the default budget)

    def __post_init__(self) -> None:
        if isinstance(self.target, str):
            object.__setattr__(self, "target", Target.parse(self.target))
        if not isinstance(self.runtime, QuantTarget):
            object.__setattr__(self, "runtime", QuantTarget.parse(self.runtime))
        if not isinstance(self.plan, PrecisionPlan):
            raise QuantizationError(f"plan must be a PrecisionPlan, got {type(self.plan).__name__}")
        if isinstance(self.metrics, str):
            object.__setattr__(self, "metrics", (self.metrics,))
        parse_metric_overrides(self.metrics)  # an unknown metric: an error now, not after calibration
        if self.max_memory is not None:
            object.__setattr__(self, "max_memory", parse_memory(self.max_memory))
        for name in ("out_dir", "checkpoint", "onnx", "hf", "table"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        self.check()

    @property
    def tasks(self) -> dict[str, str]:
        """``metrics`` as output -> task (see ``trtq.deploy.compare.parse_metric_overrides``)."""
        return parse_metric_overrides(self.metrics)

    def search_samples_or_eval(self) -> int:
        return self.search_samples or self.eval_samples

    def uses(self, precision: Precision) -> bool:
        """Whether the plan asks for ``precision`` anywhere (default or an override)."""
        return precision in (self.plan.default, *(r.precision for r in self.plan.overrides))

    @property
    def mixed(self) -> bool:
        """Whether anything but plain all-int8 was asked for."""
        return bool(self.plan.overrides) or self.plan.default is not Precision.INT8 or self.target is not None

    def check(self) -> None:
        """Option combinations that cannot be honoured (most with ``--target-runtime ort-cpu``)."""
        if self.gpu is not None:
            if not gpu_has_fp8(self.gpu) and self.uses(Precision.FP8):
                raise QuantizationError(f"the plan has fp8 layers, but {self.gpu} GPUs have no FP8 Tensor Cores "
                                        "(Ada, SM89, and newer do): drop the fp8 layers or choose --gpu ada/hopper/"
                                        "blackwell")
        if self.equalize and self.table is not None:
            raise QuantizationError("--equalize rescales the model before calibration, so it cannot use a given "
                                    "--table")
        if self.runtime.symmetric:
            return
        if self.equalize:
            raise QuantizationError("--equalize writes per-channel Min bounds that ONNX Runtime's CPU kernels "
                                    "cannot fuse; it is for --target-runtime tensorrt")
        if self.engine:
            raise QuantizationError("--engine builds a TensorRT engine, which needs TensorRT-style int8: "
                                    "drop --target-runtime ort-cpu, or drop --engine")
        if self.target is not None:
            raise QuantizationError("--target searches fp16/fp32 layers for TensorRT; with --target-runtime ort-cpu "
                                    "choose --fp32 layers by hand (see `trtq sensitivity`)")
        if self.uses(Precision.INT4W):
            raise QuantizationError("--target-runtime ort-cpu writes int8 and fp32 only; int4w (block-wise INT4 "
                                    "weights) is for TensorRT")
        if self.uses(Precision.FP8):
            raise QuantizationError("--target-runtime ort-cpu writes int8 and fp32 only: ONNX Runtime's CPU provider "
                                    "has no fp8 kernels; fp8 is for TensorRT on Ada GPUs and newer")
        if self.uses(Precision.FP16):
            raise QuantizationError("--target-runtime ort-cpu writes int8 and fp32 only: ONNX Runtime's CPU "
                                    "provider has no fast fp16 kernels; use --fp32 for the layers to keep out of int8")


@dataclass(frozen=True)
class QuantizeResult:
    """Every stage's value, and the files written (by kind: fp32, int8 or mixed, calibration, report...)."""

    out_dir: Path
    files: dict[str, Path]
    fp32: "Fp32Model"
    table: "CalibrationTable"
    clipping: tuple | None  # quantize.clipping.ClipChoice per refined tensor (None: --layer-clipping off)
    rounding: "WeightRounding"
    quantized: "QuantizedModel"
    fidelity: "Fidelity"
    runtime: QuantTarget
    stages: tuple = ()  # core.stageclock.StageTime per stage: wall time and peak memory

    # Shorthands for what callers read most.
    @property
    def report(self):
        return self.fidelity.report

    @property
    def int8_kernels(self):
        return self.fidelity.kernels

    @property
    def eval_source(self) -> str:
        return self.fidelity.eval_source

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.fidelity.warnings

    @property
    def export_parity(self):
        return self.fp32.parity

    @property
    def mixed(self):
        return self.quantized.mixed

    @property
    def search(self):
        return self.quantized.search

    @property
    def sensitivity(self):
        return self.quantized.sensitivity
