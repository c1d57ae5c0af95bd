"""Observers: pure statistics over a stream of activation arrays.

An observer never opens files or sessions; a collector runs the model and feeds it.
Contract::

    obs = OBSERVERS["minmax"](name)
    obs.update(batch_array)      # any shape, any number of times
    obs.merge(other_observer)    # combine observers of the same tensor (e.g. from workers)
    obs.compute() -> TensorRange

Non-finite values are refused by :meth:`Observer.update` with a message naming the tensor.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from calibration.table import TensorRange
from trtq.errors import CalibrationError


class Observer(Protocol):
    name: str
    method: str

    def update(self, x: np.ndarray) -> None: ...

    def merge(self, other: "Observer") -> None: ...

    def compute(self) -> TensorRange: ...


def check_finite(name: str, x: np.ndarray, first_sample: int = 0) -> None:
    """Raise :class:`CalibrationError` naming the tensor and sample if ``x`` holds NaN/Inf.

    ``first_sample`` is the index of ``x[0]`` in the whole calibration stream, so the
    message can point at the offending sample.
    """
    if x.size == 0 or np.isfinite(x).all():
        return
    flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)
    bad_rows = np.flatnonzero(~np.isfinite(flat).all(axis=1))
    sample = first_sample + int(bad_rows[0]) if x.ndim > 1 else first_sample
    kind = "NaN" if np.isnan(x).any() else "Inf"
    raise CalibrationError(
        f"tensor '{name}' holds {kind} values at calibration sample {sample}; "
        "check the calibration data (and the model) for non-finite values"
    )


class MinMaxObserver:
    """Running minimum and maximum; the int8 range is symmetric: ``amax = max(|lo|, |hi|)``.

    With ``averaging_constant`` set (0 < c <= 1), lo/hi follow an exponential moving
    average of each batch's min/max instead of the global extremes:
    ``lo <- lo + c * (batch_min - lo)``.
    """

    method = "minmax"

    def __init__(self, name: str, averaging_constant: float | None = None) -> None:
        if averaging_constant is not None and not 0.0 < averaging_constant <= 1.0:
            raise CalibrationError(
                f"averaging_constant must be in (0, 1], got {averaging_constant}"
            )
        self.name = name
        self.averaging_constant = averaging_constant
        self.lo = np.inf
        self.hi = -np.inf
        self.samples = 0

    def update(self, x: np.ndarray, first_sample: int | None = None) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        check_finite(self.name, x, self.samples if first_sample is None else first_sample)
        lo, hi = float(x.min()), float(x.max())
        c = self.averaging_constant
        if c is None or self.samples == 0:
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        else:
            self.lo += c * (lo - self.lo)
            self.hi += c * (hi - self.hi)
        self.samples += x.shape[0] if x.ndim else 1

    def merge(self, other: "MinMaxObserver") -> None:
        if not isinstance(other, MinMaxObserver):
            raise CalibrationError(f"cannot merge {type(other).__name__} into MinMaxObserver")
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self.samples += other.samples

    def compute(self) -> TensorRange:
        if self.samples == 0:
            raise CalibrationError(f"tensor '{self.name}' was never observed; no range to compute")
        return TensorRange(self.name, self.lo, self.hi, self.method, self.samples)


#: Observer factories by method name: ``OBSERVERS[method](tensor_name) -> Observer``.
OBSERVERS: dict[str, Callable[[str], Observer]] = {
    "minmax": MinMaxObserver,
}


def make_observer(method: str, name: str) -> Observer:
    try:
        factory = OBSERVERS[method]
    except KeyError:
        raise CalibrationError(
            f"unknown calibration method '{method}'; choose one of: {', '.join(sorted(OBSERVERS))}"
        ) from None
    return factory(name)
