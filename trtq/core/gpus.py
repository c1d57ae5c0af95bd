"""GPU generations a model can be written for (``--gpu``): their compute capabilities, and
which have FP8 Tensor Cores. Shared by the precision search (``trtq.quantize``), engine
builds (``trtq.deploy``) and the CLI."""

from __future__ import annotations

from trtq.core.errors import QuantizationError

#: GPU generations a plan can be written for (``--gpu``), and their compute capabilities.
GPU_TARGETS = {"ampere": ("SM80", "SM86"), "ada": ("SM89",), "hopper": ("SM90",),
               "blackwell": ("SM100", "SM120", "SM121")}
#: The first compute capability with FP8 Tensor Cores (Ada).
FP8_MIN_SM = 89


def gpu_has_fp8(gpu: str) -> bool:
    """Whether every target of GPU generation ``gpu`` (:data:`GPU_TARGETS`) has FP8 Tensor Cores."""
    if gpu not in GPU_TARGETS:
        raise QuantizationError(f"unknown GPU generation '{gpu}': one of {', '.join(GPU_TARGETS)}")
    return min(int(cap[2:]) for cap in GPU_TARGETS[gpu]) >= FP8_MIN_SM


__all__ = ["FP8_MIN_SM", "GPU_TARGETS", "gpu_has_fp8"]
