"""Clipping thresholds from a histogram of |x|: pure functions of ``(counts, width)``.

Bin ``k`` holds the count of values in ``[k * width, (k + 1) * width)``; its centre is
``c_k = (k + 0.5) * width``. Every function returns a threshold ``T > 0``; the int8 scale
is then ``T / 127``.
"""

from __future__ import annotations

import numpy as np

QMAX = 127


def percentile_threshold(counts: np.ndarray, width: float, percentile: float = 99.99) -> float:
    """Upper edge of the bin where the cumulative count first reaches ``percentile`` %.

    Within one bin of ``np.percentile(|x|, percentile)``.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    cum = np.cumsum(counts)
    k = int(np.searchsorted(cum, cum[-1] * percentile / 100.0, side="left"))
    return (min(k, len(counts) - 1) + 1) * width


def entropy_threshold(counts: np.ndarray, width: float, start_bin: int = 128, levels: int = 128) -> float:
    """TensorRT's entropy calibration: the threshold whose int8 distribution is closest (KL) to the data.

    For each candidate ``i`` (bins kept, from ``start_bin`` to the last non-empty bin):

    * reference ``P``: the first ``i`` bins, with every count beyond them (the outliers
      that will be clipped) added to bin ``i - 1``;
    * quantized ``Q``: the first ``i`` bins merged into ``levels`` groups of ``i // levels``
      bins (the last group takes the remainder); each group's total is spread evenly over
      its non-empty bins, empty bins stay empty;
    * ``KL(P || Q) = sum_k p_k log(p_k / q_k)`` over ``p_k > 0`` with ``P`` and ``Q``
      normalised; a ``p_k > 0`` where ``q_k = 0`` makes the candidate infinitely bad.

    A histogram with fewer values than bins up to its last non-empty one is too sparse for
    the search: the threshold is then the observed range. Before the search, bin 0 takes the count of bin 1 (as NVIDIA's pytorch-quantization
    does): after a ReLU most values are exact zeros, and that spike would otherwise make
    tiny thresholds look good (on EfficientNet-Lite0 it picked 0.5 for ReLU6 outputs).

    The threshold is ``i * width`` for the first ``i`` of minimal KL. The sums are
    computed in closed form from prefix sums, ``O(levels)`` per candidate:
    with ``T`` the total count, ``S_j``/``N_j`` the sum and non-empty count of group ``j``,
    ``o`` the outliers and ``Z = sum_{k<i} c_k``:
    ``KL = (sum_{P_k>0} P_k log P_k - sum_j S_j log(S_j/N_j) - o log(S_L/N_L)) / T - log T + log Z``.
    """
    counts = np.array(counts, np.float64)
    nz_idx = np.flatnonzero(counts)
    if nz_idx.size == 0:
        return width
    n = int(nz_idx[-1]) + 1
    counts = counts[:n]
    if n > 1:
        counts[0] = counts[1]
    if n <= start_bin or counts.sum() < n:
        # Fewer values than bins: the KL estimate would be noise (e.g. a pooled tensor
        # seen on a few samples); keep the whole observed range.
        return n * width
    total = counts.sum()
    cs = np.concatenate([[0.0], np.cumsum(counts)])
    nzc = np.concatenate([[0], np.cumsum(counts > 0)])
    clogc = np.concatenate([[0.0], np.cumsum(np.where(counts > 0, counts * np.log(np.where(counts > 0, counts, 1)), 0))])
    cand = np.arange(start_bin, n + 1)
    outl = total - cs[cand]
    last = counts[cand - 1] + outl  # P_{i-1}
    plogp = clogc[cand - 1] + np.where(last > 0, last * np.log(np.where(last > 0, last, 1)), 0)
    merged = cand // levels

    def s_log_q(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per group [lo, hi): its total S, its non-empty bins N and S log(S / N)."""
        s, nn = cs[hi] - cs[lo], nzc[hi] - nzc[lo]
        return s, nn, np.where(s > 0, s * np.log(np.where(s > 0, s, 1) / np.where(nn > 0, nn, 1)), 0)

    # Groups 0..levels-2 are [m j, m (j + 1)) with m = i // levels: the same for every
    # candidate with the same m, so they are summed once per m; only the last group,
    # [m (levels - 1), i), depends on the candidate itself.
    ms, which = np.unique(merged, return_inverse=True)
    j = np.arange(levels - 1)
    inner = s_log_q(ms[:, None] * j, ms[:, None] * (j + 1))[2].sum(axis=1)
    s_last, n_last, last_term = s_log_q(merged * (levels - 1), cand)
    slogq = inner[which] + last_term
    q_last_ok = counts[cand - 1] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(outl > 0, np.where(q_last_ok, outl * np.log(s_last / np.where(n_last > 0, n_last, 1)), -np.inf), 0)
        kl = (plogp - slogq - tail) / total - np.log(total) + np.log(cs[cand])
    kl = np.where(np.isfinite(kl) & (cs[cand] > 0), kl, np.inf)
    if not np.isfinite(kl).any():
        return n * width
    return float(cand[int(np.argmin(kl))] * width)


def mse_objective(counts: np.ndarray, width: float, thresholds: np.ndarray) -> np.ndarray:
    """Expected int8 quantization MSE (times the count) for each threshold.

    Values below ``T`` get uniform rounding noise ``s^2 / 12`` (``s = T / 127``); values
    above are clipped to ``T``: ``sum_{c_k >= T} n_k (c_k - T)^2``. Uses bin centres.
    """
    counts = np.asarray(counts, np.float64)
    c = (np.arange(len(counts)) + 0.5) * width
    # suffix sums of n, n c, n c^2 for the clipped part
    suf = lambda v: np.concatenate([np.cumsum(v[::-1])[::-1], [0.0]])  # noqa: E731
    n_suf, nc_suf, ncc_suf = suf(counts), suf(counts * c), suf(counts * c * c)
    thresholds = np.asarray(thresholds, np.float64)
    first_clipped = np.clip(np.ceil(thresholds / width - 0.5).astype(np.int64), 0, len(counts))
    inside = n_suf[0] - n_suf[first_clipped]
    step = thresholds / QMAX
    clipped = ncc_suf[first_clipped] - 2 * thresholds * nc_suf[first_clipped] + thresholds ** 2 * n_suf[first_clipped]
    return inside * step ** 2 / 12 + clipped


def mse_threshold(counts: np.ndarray, width: float) -> float:
    """The bin edge ``T`` minimising :func:`mse_objective` (every edge is a candidate)."""
    n = max(int(np.flatnonzero(counts)[-1]) + 1 if np.any(counts) else 1, 1)
    candidates = np.arange(1, n + 1) * width
    return float(candidates[int(np.argmin(mse_objective(counts[:n], width, candidates)))])


def simulated_error(counts: np.ndarray, width: float, threshold: float) -> float:
    """Int8 quantization MSE of the bin centres with scale ``threshold / 127``, exactly simulated
    (round half to even, clip to 127), weighted by the counts."""
    counts = np.asarray(counts, np.float64)
    c = (np.arange(len(counts)) + 0.5) * width
    s = threshold / QMAX
    q = np.clip(np.rint(c / s), 0, QMAX) * s
    return float((counts * (c - q) ** 2).sum() / max(counts.sum(), 1))
