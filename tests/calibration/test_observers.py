import numpy as np
import pytest

from trtq.calibration.observers import OBSERVERS, MinMaxObserver, make_observer
from trtq.core.errors import CalibrationError


def test_minmax_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(i, 1 + i, (4, 3, 5)).astype(np.float32) for i in range(5)]
    obs = MinMaxObserver("t")
    for b in batches:
        obs.update(b)
    r = obs.compute()
    allv = np.concatenate(batches)
    assert (r.lo, r.hi) == (float(allv.min()), float(allv.max()))
    assert r.amax == max(abs(float(allv.min())), abs(float(allv.max())))
    assert r.samples == 20 and r.method == "minmax" and r.name == "t"


def test_merge_equals_single_stream():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 7)), rng.normal(3, 2, size=(5, 7))
    one = MinMaxObserver("t")
    one.update(a)
    one.update(b)
    left, right = MinMaxObserver("t"), MinMaxObserver("t")
    left.update(a)
    right.update(b)
    left.merge(right)
    assert left.compute() == one.compute()


def test_moving_average():
    obs = MinMaxObserver("t", averaging_constant=0.5)
    obs.update(np.array([[0.0, 2.0]]))
    obs.update(np.array([[-2.0, 4.0]]))
    r = obs.compute()
    assert (r.lo, r.hi) == (-1.0, 3.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_names_tensor_and_sample(bad):
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = bad
    obs = MinMaxObserver("conv1_out")
    with pytest.raises(CalibrationError, match=r"'conv1_out'.*sample 12"):
        obs.update(x, first_sample=10)


def test_unobserved_and_unknown():
    with pytest.raises(CalibrationError, match="never observed"):
        MinMaxObserver("t").compute()
    with pytest.raises(CalibrationError, match="unknown calibration method 'kl'.*minmax"):
        make_observer("kl", "t")
    assert "minmax" in OBSERVERS
