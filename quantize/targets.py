"""Which runtime a quantized model is written for, and what that changes.

* ``tensorrt`` (default): TensorRT-style int8. Activations and weights symmetric
  (zero point 0, int8), Q/DQ on the inputs of the ops that compute in int8, only the
  residual input of a skip-connection Add (see :mod:`quantize.rules`). TensorRT accepts no
  other form.
* ``ort-cpu``: what ONNX Runtime's CPU integer kernels (MLAS) run best, and faithfully:

  - activations **uint8 with a zero point** from the calibrated ``[lo, hi]`` (always
    including 0), so a ReLU/ReLU6 output uses all 256 levels and ORT drops the Clip/Relu
    into the QuantizeLinear before it;
  - weights int8, symmetric, per output channel; on x86 CPUs **without VNNI** limited to
    7 bits (``±63``, "reduced range"): there MLAS multiplies u8 by s8 with ``vpmaddubsw``,
    which adds pairs of products in int16 and saturates at 32767; ``2 * 255 * 63`` fits,
    ``2 * 255 * 127`` does not (that saturation is what made symmetric int8 lose half its
    top-1 agreement on such CPUs);
  - Q/DQ on both inputs of an Add of two activations and on the input of spatial pooling,
    so every Conv's output is quantized and ORT fuses all of them into ``QLinearConv`` /
    ``QLinearAdd`` instead of running some in float between layout transposes.

  Whether the CPU has VNNI is read at quantization time (``/proc/cpuinfo`` on Linux); the
  model is then right for this machine's CPU family. Pass ``reduce_range`` explicitly to
  target another machine.
"""

from __future__ import annotations

import enum
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

from trtq.core.errors import QuantizationError

log = logging.getLogger(__name__)

#: CPU flags (Linux /proc/cpuinfo names) of an int8 dot product that accumulates in 32 bits.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


class TargetRuntime(str, enum.Enum):
    TENSORRT = "tensorrt"
    ORT_CPU = "ort-cpu"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The first processor's flags from ``cpuinfo``, or ``None`` where there is no such file."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def needs_reduce_range(machine: str | None = None, flags: frozenset[str] | None = None) -> bool:
    """Whether ORT's u8*s8 kernels on this CPU (or ``machine`` with ``flags``) need 7-bit weights.

    Only x86 without VNNI does; an x86 CPU whose flags cannot be read is assumed to lack
    VNNI (7-bit weights cost a little accuracy there; saturation would cost much more).
    """
    machine = (machine or platform.machine()).lower()
    if machine not in X86:
        return False  # ARM's int8 kernels accumulate in 32 bits
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        log.warning("cannot read this CPU's flags: assuming no VNNI, int8 weights limited to 7 bits")
        return True
    return not (flags & VNNI_FLAGS)


@dataclass(frozen=True)
class QuantTarget:
    """A runtime and, for ``ort-cpu``, whether weights use 7 bits (see the module doc)."""

    runtime: TargetRuntime = TargetRuntime.TENSORRT
    reduce_range: bool = False

    def __post_init__(self) -> None:
        if self.runtime is TargetRuntime.TENSORRT and self.reduce_range:
            raise QuantizationError("reduce_range is for --target-runtime ort-cpu; TensorRT's int8 weights use 8 bits")

    @classmethod
    def parse(cls, value: "QuantTarget | TargetRuntime | str | None", reduce_range: bool | None = None) -> "QuantTarget":
        """``"tensorrt"`` or ``"ort-cpu"`` (``reduce_range`` ``None``: detect this CPU)."""
        if isinstance(value, QuantTarget):
            return value
        try:
            runtime = TargetRuntime(value or TargetRuntime.TENSORRT)
        except ValueError:
            raise QuantizationError(f"unknown target runtime '{value}'; expected one of: "
                                    + ", ".join(t.value for t in TargetRuntime)) from None
        if runtime is TargetRuntime.ORT_CPU:
            return cls(runtime, needs_reduce_range() if reduce_range is None else bool(reduce_range))
        return cls(runtime, bool(reduce_range))

    @property
    def symmetric(self) -> bool:
        return self.runtime is TargetRuntime.TENSORRT

    @property
    def weight_qmax(self) -> int:
        return 63 if self.reduce_range else 127

    def describe(self) -> str:
        if self.symmetric:
            return "int8-qdq-symmetric"
        return "int8-qdq-ort-cpu (uint8 activations, " + ("7-bit" if self.reduce_range else "8-bit") + " weights)"


TENSORRT = QuantTarget()
