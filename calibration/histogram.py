"""A streaming, mergeable histogram of |x| and the clipping-threshold searches that use it.

The histogram has ``bins`` equal bins over ``[0, edge)``, where ``edge`` is always a power
of two >= every |x| seen. When a batch exceeds the edge, the edge doubles (k times) and
every ``2**k`` adjacent bins merge into one: re-binning is exact, and so is merging two
histograms, whatever order batches arrive in. With the default 4096 bins, between 2048 and
4096 bins cover ``[0, amax]``. Memory is fixed (one int64 array), whatever the samples.

Thresholds are pure functions of ``(counts, width)``: bin ``k`` covers
``[k * width, (k + 1) * width)``.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_BINS = 4096
_CHUNK = 1 << 16  # elements per step: keeps the temporaries in cache


def _abs_bincount(flat: np.ndarray, scale: np.float32, bins: int) -> np.ndarray:
    """Counts of ``|x| * scale`` in ``[0, bins)`` for every ``|x| * scale < bins``.

    ``scale`` is a power of two, so ``x * scale`` is exact and ``t = trunc(x * scale)``
    lies in ``(-bins, bins)``; ``|x|`` falls in bin ``|t|``. Counting ``t + bins`` over
    ``2 * bins`` signed bins and folding the halves skips an ``abs`` and a clip pass; chunks
    keep the temporaries in cache. (This is the hot loop of histogram calibration.)
    """
    signed = np.zeros(2 * bins, np.int64)
    idx = np.empty(min(_CHUNK, flat.size), np.intp)
    for start in range(0, flat.size, _CHUNK):
        part = flat[start:start + _CHUNK]
        i = idx[: part.size]
        np.multiply(part, scale, out=i, casting="unsafe", dtype=np.float32)
        i += bins
        signed += np.bincount(i, minlength=2 * bins)
    counts = signed[bins:].copy()
    counts[1:] += signed[bins - 1:0:-1]
    return counts


class AbsHistogram:
    """Counts of |x| in ``bins`` equal bins over ``[0, edge)``; ``edge`` a power of two."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if bins < 2 or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= 2, got {bins}")
        self.bins = bins
        self.counts = np.zeros(bins, np.int64)
        self.edge: float | None = None  # None while only zeros were seen
        self.zeros = 0  # zeros seen before the first non-zero value

    @property
    def width(self) -> float:
        return (self.edge or 0.0) / self.bins

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self.zeros

    def _fold(self, counts: np.ndarray, factor: int) -> np.ndarray:
        """Counts over an edge ``factor`` (a power of two) times larger: merge adjacent bins."""
        if factor == 1:
            return counts
        out = np.zeros_like(counts)
        if factor >= self.bins:
            out[0] = counts.sum()
        else:
            out[: self.bins // factor] = counts.reshape(-1, factor).sum(axis=1)
        return out

    def _ensure_edge(self, edge: float) -> None:
        """Make ``edge`` (a power of two) the edge, unless the current one is larger."""
        if self.edge is None:
            self.edge = edge
            self.counts[0] += self.zeros
            self.zeros = 0
        elif edge > self.edge:
            self.counts = self._fold(self.counts, int(round(edge / self.edge)))
            self.edge = edge

    def _add_zeros(self, n: int) -> None:
        if self.edge is None:
            self.zeros += n
        else:
            self.counts[0] += n

    def add(self, x: np.ndarray, amax: float) -> None:
        """Add the values of ``x``, whose largest magnitude is ``amax`` (finite)."""
        if x.size == 0:
            return
        if amax == 0.0:
            self._add_zeros(x.size)
            return
        edge = 2.0 ** math.ceil(math.log2(amax))
        self._ensure_edge(edge * 2 if edge <= amax else edge)  # amax itself must lie below the edge
        flat = np.ravel(x)
        if flat.dtype != np.float32 or not flat.flags.c_contiguous:
            flat = np.ascontiguousarray(flat, dtype=np.float32)
        self.counts += _abs_bincount(flat, np.float32(self.bins / self.edge), self.bins)

    def merge(self, other: "AbsHistogram") -> None:
        """Add another histogram's counts (exact: both edges are powers of two)."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {other.bins} and {self.bins} bins")
        if other.edge is None:
            self._add_zeros(other.zeros)
            return
        self._ensure_edge(other.edge)
        self.counts += self._fold(other.counts, int(round(self.edge / other.edge)))

    def trimmed(self) -> np.ndarray:
        """Counts up to and including the last non-empty bin."""
        nz = np.flatnonzero(self.counts)
        return self.counts[: nz[-1] + 1] if nz.size else self.counts[:1]
