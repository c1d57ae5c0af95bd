"""Calibration results as values: :class:`TensorRange` and :class:`CalibrationTable`.

A table is persisted as versioned JSON::

    {"format": "trtq.calibration", "version": 1, "method": "minmax",
     "model_sha256": "...", "samples": 128,
     "ranges": {"tensor": {"lo": -1.0, "hi": 6.0, "method": "minmax", "samples": 128}}}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from trtq.core.errors import CalibrationError
from trtq.core.fileio import atomic_write_text

FORMAT = "trtq.calibration"
VERSION = 1


@dataclass(frozen=True)
class TensorRange:
    """Observed range ``[lo, hi]`` of one tensor, and how it was obtained."""

    name: str
    lo: float
    hi: float
    method: str
    samples: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            raise CalibrationError(
                f"tensor '{self.name}' has a non-finite range [{self.lo}, {self.hi}]"
            )
        if self.lo > self.hi:
            raise CalibrationError(
                f"tensor '{self.name}' has an empty range: lo {self.lo} > hi {self.hi}"
            )

    @property
    def amax(self) -> float:
        """Symmetric magnitude ``max(|lo|, |hi|)``, the basis of a zero-point-0 scale."""
        return max(abs(self.lo), abs(self.hi))

    def to_json(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "method": self.method, "samples": self.samples}

    @classmethod
    def from_json(cls, name: str, obj: Mapping) -> "TensorRange":
        try:
            return cls(name, float(obj["lo"]), float(obj["hi"]), str(obj["method"]), int(obj["samples"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"calibration range for '{name}' is malformed: {obj!r}") from exc


@dataclass(frozen=True)
class CalibrationTable:
    """Per-tensor ranges of one model, keyed by tensor name.

    ``model_sha256`` is the SHA-256 of the serialized ONNX model the ranges were computed
    for (see :func:`calibration.model_sha256`).
    """

    ranges: Mapping[str, TensorRange]
    method: str
    model_sha256: str
    samples: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", MappingProxyType(dict(self.ranges)))

    def __contains__(self, name: str) -> bool:
        return name in self.ranges

    def __getitem__(self, name: str) -> TensorRange:
        try:
            return self.ranges[name]
        except KeyError:
            raise CalibrationError(
                f"the calibration table has no range for tensor '{name}' "
                f"({len(self.ranges)} tensors calibrated); recalibrate this model"
            ) from None

    def __len__(self) -> int:
        return len(self.ranges)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "method": self.method,
            "model_sha256": self.model_sha256,
            "samples": self.samples,
            "ranges": {name: r.to_json() for name, r in sorted(self.ranges.items())},
        }

    @classmethod
    def from_json(cls, obj: Mapping) -> "CalibrationTable":
        if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
            raise CalibrationError("not a trtq calibration table (missing 'format': 'trtq.calibration')")
        if obj.get("version") != VERSION:
            raise CalibrationError(
                f"calibration table version {obj.get('version')!r} is not supported "
                f"(this trtq reads version {VERSION}); recalibrate with this trtq"
            )
        try:
            ranges = {n: TensorRange.from_json(n, r) for n, r in obj["ranges"].items()}
            return cls(ranges, str(obj["method"]), str(obj["model_sha256"]), int(obj.get("samples", 0)))
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise CalibrationError(f"calibration table is malformed: {exc}") from exc

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON, atomically."""
        return atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationTable":
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CalibrationError(f"calibration table {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"calibration table {path} cannot be read as JSON: {exc}") from exc
        return cls.from_json(obj)
