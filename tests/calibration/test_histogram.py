import numpy as np
import pytest

from trtq.calibration.histogram import AbsHistogram
from trtq.calibration.observers import (OBSERVERS, AutoObserver, EntropyObserver, MSEObserver,
                                   PercentileObserver, make_observer)
from trtq.core.errors import CalibrationError


def _hist(*arrays, bins=256):
    h = AbsHistogram(bins)
    for a in arrays:
        h.add(a, float(np.abs(a).max()) if a.size else 0.0)
    return h


def test_counts_match_numpy_histogram():
    x = np.random.default_rng(0).normal(0, 2, 10_000).astype(np.float32)
    h = _hist(x)
    ref, _ = np.histogram(np.abs(x), bins=h.bins, range=(0, h.edge))
    np.testing.assert_array_equal(h.counts, ref)
    assert h.edge == 2.0 ** np.ceil(np.log2(np.abs(x).max()))


def test_growing_range_rebins_exactly_and_order_does_not_matter():
    rng = np.random.default_rng(1)
    small, big = rng.normal(0, 0.1, 5000), rng.normal(0, 50, 5000)
    a, b = _hist(small, big), _hist(big, small)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.edge == b.edge and a.total == 10_000
    left, right = _hist(small), _hist(big)
    left.merge(right)
    np.testing.assert_array_equal(left.counts, a.counts)


def test_zeros_constants_and_tiny_ranges():
    h = _hist(np.zeros(100), np.zeros(50))
    assert h.edge is None and h.total == 150
    h.add(np.full(10, 3.0), 3.0)
    assert h.counts[0] == 150 and h.total == 160 and h.edge == 4.0
    tiny = _hist(np.full(20, 1e-30))
    assert tiny.total == 20 and 1e-30 < tiny.edge <= 2e-30
    power = _hist(np.array([0.0, 4.0]))
    assert power.edge == 8.0  # 4.0 itself lies inside [0, edge)


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse", "auto"])
def test_histogram_observers_are_streaming_and_mergeable(method):
    rng = np.random.default_rng(2)
    batches = [rng.standard_t(4, (8, 64)).astype(np.float32) for _ in range(6)]
    one = make_observer(method, "t")
    for b in batches:
        one.update(b)
    a, b = make_observer(method, "t"), make_observer(method, "t")
    for x in batches[:3]:
        a.update(x)
    for x in batches[3:]:
        b.update(x)
    a.merge(b)
    r1, r2 = one.compute(), a.compute()
    assert r1 == r2 and r1.samples == 48
    allv = np.concatenate(batches)
    assert 0 < r1.amax <= np.abs(allv).max()
    assert r1.lo >= allv.min() and r1.hi <= allv.max()


def test_percentile_observer_and_auto_report_their_choice():
    x = np.random.default_rng(3).standard_normal((100, 100)).astype(np.float32)
    p = PercentileObserver("t", percentile=99.0)
    p.update(x)
    assert abs(p.compute().amax - np.percentile(np.abs(x), 99.0)) <= p.hist.width
    auto = AutoObserver("t")
    auto.update(x)
    r = auto.compute()
    assert r.method.split(":")[0] == "auto" and r.method.split(":")[1] in ("minmax", "percentile", "entropy", "mse")


def test_constant_and_zero_tensors():
    for cls in (EntropyObserver, MSEObserver, PercentileObserver, AutoObserver):
        z = cls("z")
        z.update(np.zeros((4, 4), np.float32))
        assert z.compute().amax == 0.0
        c = cls("c")
        c.update(np.full((4, 4), -2.5, np.float32))
        r = c.compute()
        assert 0 < r.amax <= 2.5 and r.hi <= -0.0 + 2.5


@pytest.mark.parametrize("method", sorted(OBSERVERS))
def test_non_finite_is_refused_with_tensor_and_sample(method):
    x = np.ones((5, 3), np.float32)
    x[3, 2] = np.inf
    obs = make_observer(method, "act")
    with pytest.raises(CalibrationError, match=r"'act' holds Inf.*sample 7"):
        obs.update(x, first_sample=4)


def test_observers_cannot_merge_across_methods():
    with pytest.raises(CalibrationError, match="cannot merge"):
        EntropyObserver("t").merge(MSEObserver("t"))
