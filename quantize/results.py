"""What the model transforms return: small value types instead of ``(model, records)`` tuples.

Every transform leaves its input untouched and returns a new value; ``records`` say what it
did, one per place it acted on (a smoothed layer group, an equalized conv pair, a corrected
layer...), each with a ``to_json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import onnx

from trtq.calibration import CalibrationTable

__all__ = ["ClippedTable", "RoundedWeights", "Transformed"]

R = TypeVar("R")


@dataclass(frozen=True)
class Transformed(Generic[R]):
    """A transformed model (the input is never changed) and what the transform did."""

    model: onnx.ModelProto
    records: tuple[R, ...] = ()

    def to_json(self) -> list:
        return [r.to_json() for r in self.records]


@dataclass(frozen=True)
class ClippedTable(Generic[R]):
    """A calibration table with some ranges clipped, and the choice made for each tensor."""

    table: CalibrationTable
    records: tuple[R, ...] = ()

    def to_json(self) -> list:
        return [r.to_json() for r in self.records]


@dataclass(frozen=True)
class RoundedWeights(Generic[R]):
    """Int8-grid weights by initializer name (for :func:`trtq.quantize.substitute_weights` and
    the ``weights=`` of :func:`trtq.quantize.apply_plan`), and one record per layer."""

    weights: dict[str, np.ndarray] = field(default_factory=dict)
    layers: tuple[R, ...] = ()

    def to_json(self) -> list:
        return [r.to_json() for r in self.layers]
