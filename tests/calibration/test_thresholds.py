import numpy as np
import pytest

from trtq.calibration.histogram import AbsHistogram
from trtq.calibration.thresholds import (entropy_threshold, mse_objective, mse_threshold, percentile_threshold,
                                    simulated_error)


def brute_force_entropy(counts, width, start_bin=128, levels=128):
    """The textbook loop (as in TensorRT / pytorch-quantization), one candidate at a time."""
    counts = np.asarray(counts, np.float64)
    n = int(np.flatnonzero(counts)[-1]) + 1
    counts = counts[:n].copy()
    counts[0] = counts[1]  # ignore the spike of exact zeros
    best, best_i = np.inf, None
    for i in range(start_bin, n + 1):
        p = counts[:i].copy()
        p[i - 1] += counts[i:].sum()
        nonzero = counts[:i] > 0
        q = np.zeros(i)
        merged = i // levels
        for j in range(levels):
            lo = j * merged
            hi = i if j == levels - 1 else (j + 1) * merged
            total, nzc = counts[lo:hi].sum(), nonzero[lo:hi].sum()
            if nzc:
                q[lo:hi] = np.where(nonzero[lo:hi], total / nzc, 0)
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        kl = np.inf if (q[mask] == 0).any() else float((p[mask] * np.log(p[mask] / q[mask])).sum())
        if kl < best:
            best, best_i = kl, i
    return best_i * width


@pytest.mark.parametrize("seed", range(6))
def test_entropy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(200, 700))
    counts = rng.poisson(np.exp(-np.arange(n) / rng.uniform(20, 200)) * 1000)
    counts[rng.random(n) < 0.2] = 0  # sparse bins exercise the empty-group paths
    counts[-1] = 1
    assert entropy_threshold(counts, 0.01) == pytest.approx(brute_force_entropy(counts, 0.01))


def test_entropy_small_levels_matches_brute_force():
    rng = np.random.default_rng(9)
    counts = rng.integers(0, 50, 60)
    counts[-1] = 3
    assert entropy_threshold(counts, 1.0, start_bin=8, levels=8) == brute_force_entropy(counts, 1.0, 8, 8)


def test_entropy_ignores_the_relu_zero_spike():
    rng = np.random.default_rng(4)
    x = np.clip(rng.normal(0.5, 1.5, 400_000), 0, 6)  # ReLU6 output: ~37 % exact zeros
    h = AbsHistogram(4096)
    h.add(x, float(x.max()))
    assert entropy_threshold(h.trimmed(), h.width) > 3.0


def test_entropy_clips_a_long_tail():
    x = np.abs(np.random.default_rng(0).standard_normal(200_000))
    x[:5] = 40.0  # a few outliers
    h = AbsHistogram(2048)
    h.add(x, float(x.max()))
    t = entropy_threshold(h.trimmed(), h.width)
    assert 2.0 < t < 20.0


def test_percentile_within_one_bin():
    x = np.random.default_rng(1).standard_normal(100_000).astype(np.float32) * 3
    h = AbsHistogram()
    h.add(x, float(np.abs(x).max()))
    for p in (90.0, 99.0, 99.99, 100.0):
        t = percentile_threshold(h.counts, h.width, p)
        assert abs(t - np.percentile(np.abs(x), p)) <= h.width, p


def test_mse_optimum_matches_grid_search():
    rng = np.random.default_rng(2)
    counts = rng.poisson(np.exp(-np.arange(500) / 60.0) * 500)
    width = 0.02
    grid = np.arange(1, 501) * width
    brute = [sum(n * ((c if c < t else 0) * 0 + ((t / 127) ** 2 / 12 if c < t else (c - t) ** 2))
                 for n, c in zip(counts, (np.arange(500) + 0.5) * width)) for t in grid]
    np.testing.assert_allclose(mse_objective(counts, width, grid), brute, rtol=1e-9)
    assert mse_threshold(counts, width) == pytest.approx(grid[int(np.argmin(brute))])


def test_mse_beats_minmax_on_heavy_tails():
    x = np.random.default_rng(3).standard_t(3, 200_000)
    h = AbsHistogram()
    h.add(x, float(np.abs(x).max()))
    t_mse = mse_threshold(h.counts, h.width)
    amax = float(np.abs(x).max())
    assert t_mse < amax
    assert simulated_error(h.counts, h.width, t_mse) < simulated_error(h.counts, h.width, amax)
