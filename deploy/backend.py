"""Which TensorRT to use: ``tensorrt`` (10.x/11.x) or TensorRT for RTX, behind one name.

Discovery order: ``tensorrt``, then ``tensorrt_rtx``, then ``tensorrt_rtx_bindings`` (what
the TensorRT-RTX bindings wheel exposes on its own). ``TRTQ_BACKEND`` (or the ``backend``
argument) forces one: ``tensorrt`` or ``tensorrt_rtx``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

from trtq.core.errors import DependencyError

MODULES = {"tensorrt": ("tensorrt",), "tensorrt_rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings")}


@dataclass(frozen=True)
class Backend:
    """A loaded TensorRT module and what kind it is."""

    name: str  # "tensorrt" or "tensorrt_rtx"
    module: ModuleType

    @property
    def version(self) -> str:
        return str(getattr(self.module, "__version__", "unknown"))

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"


def _import_first(names: tuple[str, ...]) -> ModuleType | None:
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def load_backend(backend: str | None = None) -> Backend:
    """The TensorRT backend to build with; a clear error naming the extra when none is present."""
    wanted = backend or os.environ.get("TRTQ_BACKEND") or None
    if wanted is not None and wanted not in MODULES:
        raise DependencyError(f"unknown TensorRT backend '{wanted}'; choose tensorrt or tensorrt_rtx")
    for name in ([wanted] if wanted else list(MODULES)):
        module = _import_first(MODULES[name])
        if module is not None:
            return Backend(name, module)
    if wanted:
        extra = "gpu" if wanted == "tensorrt" else "rtx"
        raise DependencyError(f"TensorRT backend '{wanted}' is not installed: pip install 'trtq[{extra}]'")
    raise DependencyError("no TensorRT is installed: pip install 'trtq[rtx]' (TensorRT for RTX, builds "
                          "engines even without a GPU) or 'trtq[gpu]' (TensorRT, on GPU machines)")
