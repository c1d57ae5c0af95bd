"""Observers: pure statistics over a stream of activation arrays.

An observer never opens files or sessions; a collector runs the model and feeds it.
Contract::

    obs = OBSERVERS["minmax"](name)
    obs.update(batch_array)      # any shape, any number of times
    obs.update(sample, extremes=(lo, hi))   # a subsample of a batch, with the batch's min/max
    obs.merge(other_observer)    # combine observers of the same tensor (e.g. from workers)
    obs.compute() -> TensorRange

Non-finite values are refused by :meth:`Observer.update` with a message naming the tensor.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import numpy as np

from trtq.calibration.histogram import DEFAULT_BINS, AbsHistogram
from trtq.calibration.table import TensorRange
from trtq.calibration.thresholds import entropy_threshold, mse_threshold, percentile_threshold, simulated_error
from trtq.core.errors import CalibrationError


class Observer(Protocol):
    name: str
    method: str
    needs_values: bool  # False: the extremes of each batch are enough

    def update(self, x: np.ndarray, first_sample: int | None = None,
               extremes: tuple[float, float] | None = None) -> None: ...

    def merge(self, other: "Observer") -> None: ...

    def compute(self) -> TensorRange: ...


def check_finite(name: str, x: np.ndarray, first_sample: int = 0, index: np.ndarray | None = None) -> None:
    """Raise :class:`CalibrationError` naming the tensor and sample if ``x`` holds NaN/Inf.

    ``first_sample`` is the index of ``x[0]`` in the whole calibration stream, so the
    message can point at the offending sample; ``index``: the data's index of each stream
    position, when the stream reorders the samples.
    """
    if x.size == 0 or np.isfinite(x).all():
        return
    flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)
    bad_rows = np.flatnonzero(~np.isfinite(flat).all(axis=1))
    sample = first_sample + int(bad_rows[0]) if x.ndim > 1 else first_sample
    if index is not None:
        sample = int(index[sample])
    kind = "NaN" if np.isnan(x).any() else "Inf"
    raise CalibrationError(
        f"tensor '{name}' holds {kind} values at calibration sample {sample}; "
        "check the calibration data (and the model) for non-finite values"
    )


def batch_extremes(name: str, x: np.ndarray, first_sample: int,
                   extremes: tuple[float, float] | None) -> tuple[float, float]:
    """``(min, max)`` of a batch: ``extremes`` when the caller knows them (``x`` is then a
    subsample), else computed from ``x``; NaN/Inf is refused either way."""
    lo, hi = extremes if extremes is not None else (float(x.min()), float(x.max()))
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN propagates through min/max
        check_finite(name, x, first_sample)
        raise CalibrationError(f"tensor '{name}' holds NaN or Inf values (range [{lo}, {hi}]) "
                               f"near calibration sample {first_sample}")
    return lo, hi


class MinMaxObserver:
    """Running minimum and maximum; the int8 range is symmetric: ``amax = max(|lo|, |hi|)``.

    With ``averaging_constant`` set (0 < c <= 1), lo/hi follow an exponential moving
    average of each batch's min/max instead of the global extremes:
    ``lo <- lo + c * (batch_min - lo)``.
    """

    method = "minmax"
    needs_values = False

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

    def update(self, x: np.ndarray, first_sample: int | None = None,
               extremes: tuple[float, float] | None = None) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        lo, hi = batch_extremes(self.name, x, self.samples if first_sample is None else first_sample, extremes)
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


class HistogramObserver:
    """Base of the histogram methods: a streaming :class:`AbsHistogram` of |x| plus min/max.

    Subclasses define :meth:`threshold`; the range is the observed ``[lo, hi]`` clipped to
    ``[-T, T]``, so ``amax == T``.

    ``update(sample, extremes=(lo, hi))`` counts a subsample of a batch while taking the
    range from the whole batch (the collector does this for large tensors).
    """

    method = "histogram"
    needs_values = True

    def __init__(self, name: str, bins: int = DEFAULT_BINS) -> None:
        self.name = name
        self.hist = AbsHistogram(bins)
        self.lo = np.inf
        self.hi = -np.inf
        self.samples = 0

    def update(self, x: np.ndarray, first_sample: int | None = None,
               extremes: tuple[float, float] | None = None) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        lo, hi = batch_extremes(self.name, x, self.samples if first_sample is None else first_sample, extremes)
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.hist.add(x, max(-lo, hi))
        self.samples += x.shape[0] if x.ndim else 1

    def merge(self, other: "HistogramObserver") -> None:
        if type(other) is not type(self):
            raise CalibrationError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        self.hist.merge(other.hist)
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self.samples += other.samples

    def threshold(self) -> tuple[float, str]:
        """The clipping threshold and the method that produced it."""
        raise NotImplementedError

    def compute(self) -> TensorRange:
        if self.samples == 0:
            raise CalibrationError(f"tensor '{self.name}' was never observed; no range to compute")
        amax = max(-self.lo, self.hi)
        if amax == 0.0:
            return TensorRange(self.name, self.lo, self.hi, self.method, self.samples)
        t, how = self.threshold()
        t = min(t, amax)
        return TensorRange(self.name, max(self.lo, -t), min(self.hi, t), how, self.samples)


class PercentileObserver(HistogramObserver):
    """``T`` = the ``percentile`` (default 99.99) of |x|, within one histogram bin."""

    method = "percentile"

    def __init__(self, name: str, percentile: float = 99.99, bins: int = DEFAULT_BINS) -> None:
        if not 0 < percentile <= 100:
            raise CalibrationError(f"percentile must be in (0, 100], got {percentile}")
        super().__init__(name, bins)
        self.percentile = percentile

    def threshold(self) -> tuple[float, str]:
        return percentile_threshold(self.hist.counts, self.hist.width, self.percentile), self.method


class EntropyObserver(HistogramObserver):
    """TensorRT's KL-divergence threshold search (see :func:`calibration.thresholds.entropy_threshold`):
    candidates from 128 bins up to the last non-empty one, 128 quantized levels."""

    method = "entropy"

    def threshold(self) -> tuple[float, str]:
        return entropy_threshold(self.hist.trimmed(), self.hist.width), self.method


class MSEObserver(HistogramObserver):
    """The threshold minimising the expected int8 quantization MSE over the histogram
    (see :func:`calibration.thresholds.mse_objective`)."""

    method = "mse"

    def threshold(self) -> tuple[float, str]:
        return mse_threshold(self.hist.counts, self.hist.width), self.method


class AutoObserver(HistogramObserver):
    """Per tensor, the candidate (minmax, percentile, entropy, mse) whose exactly simulated
    int8 quantization error on the histogram is lowest; the range's method says which
    (e.g. ``auto:entropy``). Ties go to the earlier candidate in that order."""

    method = "auto"

    def threshold(self) -> tuple[float, str]:
        h = self.hist
        counts, width = h.counts, h.width
        candidates = {
            "minmax": max(-self.lo, self.hi),
            "percentile": percentile_threshold(counts, width),
            "entropy": entropy_threshold(h.trimmed(), width),
            "mse": mse_threshold(counts, width),
        }
        errors = {k: simulated_error(counts, width, t) for k, t in candidates.items()}
        best = min(errors, key=errors.get)
        return candidates[best], f"auto:{best}"


#: Observer factories by method name: ``OBSERVERS[method](tensor_name) -> Observer``.
OBSERVERS: dict[str, Callable[[str], Observer]] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "entropy": EntropyObserver,
    "mse": MSEObserver,
    "auto": AutoObserver,
}


def make_observer(method: str, name: str) -> Observer:
    try:
        factory = OBSERVERS[method]
    except KeyError:
        raise CalibrationError(
            f"unknown calibration method '{method}'; choose one of: {', '.join(sorted(OBSERVERS))}"
        ) from None
    return factory(name)
