"""GPTQ weight rounding: the closed-form update, error vs nearest and vs brute force, exact int8 grids."""

import itertools

import numpy as np
import pytest
from onnx import numpy_helper

from trtq.calibration import calibrate
from trtq.deploy import OrtRunner, compare_outputs
from trtq.quantize import PrecisionPlan, apply_plan, quantize
from trtq.quantize.rounding import gptq_levels, gptq_weights, substitute_weights
from tests.quantize.test_equalize import make_separable


def _error(w, levels, scale, h):
    e = w - levels * scale[..., None]
    return float(np.einsum("pod,pde,poe->", e, h, e))


def test_two_columns_follow_the_closed_form_update():
    w = np.array([[[0.34, 0.52]]])  # one row, two columns
    h = np.array([[[2.0, 0.9], [0.9, 1.0]]])
    scale = np.array([[0.1]])
    levels = gptq_levels(w, h, scale, damp=0.0)
    q0 = np.rint(0.34 / 0.1)  # the first column: nearest
    w1 = 0.52 + (0.34 - q0 * 0.1) * 0.9 / 1.0  # OBQ: w1 - (w0 - q0) * Hinv01 / Hinv00 = w1 + e0 * H01 / H11
    assert levels[0, 0].tolist() == [q0, np.rint(w1 / 0.1)]


def test_beats_nearest_and_nears_the_brute_force_optimum():
    """Five small problems on a coarse grid (+-7), against every floor/ceil combination."""
    totals = np.zeros(3)  # nearest, GPTQ, optimum
    for seed in range(5):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(400, 6)) + rng.normal(size=(400, 1))  # inputs sharing a common part
        h = (x.T @ x / len(x))[None]
        w = rng.normal(size=(1, 4, 6))
        scale = np.abs(w).max(axis=2) / 7
        nearest = np.clip(np.rint(w / scale[..., None]), -7, 7)
        levels = gptq_levels(w, h, scale, qmax=7, damp=0.0)
        best = 0.0
        for o in range(4):
            lo = np.floor(w[0, o] / scale[0, o])
            errs = []
            for bits in itertools.product((0, 1), repeat=6):
                e = w[0, o] - np.clip(lo + np.array(bits), -7, 7) * scale[0, o]
                errs.append(e @ h[0] @ e)
            best += min(errs)
        totals += [_error(w, nearest, scale, h), _error(w, levels, scale, h), best]
    near, got, best = totals
    assert best <= got < 0.85 * near  # measured: 0.76 nearest, 0.59 GPTQ, 0.52 optimum
    assert got < 1.3 * best


def test_act_order_is_gptq_on_the_columns_sorted_by_energy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 8)) * np.array([0.2, 3.0, 1.0, 0.5, 5.0, 0.1, 2.0, 1.5])  # uneven input energy
    h = np.stack([x.T @ x / len(x), (x[:, ::-1].T @ x[:, ::-1]) / len(x)])  # two problems, two orders
    w = rng.normal(size=(2, 3, 8))
    scale = np.repeat(np.abs(w).reshape(2, 3, 2, 4).max(axis=3) / 7, 4, axis=2)  # blocks of 4, expanded
    got = gptq_levels(w, h, scale, qmax=7, act_order=True)
    for p in range(2):
        perm = np.argsort(-np.diag(h[p]), kind="stable")
        ref = gptq_levels(w[p:p + 1][:, :, perm], h[p:p + 1][:, perm][:, :, perm], scale[p:p + 1][:, :, perm], qmax=7)
        assert np.array_equal(got[p][:, perm], ref[0])
    nearest = np.clip(np.rint(w / scale), -7, 7)
    err = lambda q: float(np.einsum("pod,pde,poe->", w - q * scale, h, w - q * scale))  # noqa: E731
    assert err(got) < err(nearest)


def test_int4_block_scales_take_the_clip_factor_with_the_least_error():
    from trtq.quantize.rounding import CLIP_FACTORS, _clip_factors

    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 12)) + rng.normal(size=(600, 1))
    h = (x.T @ x / len(x))[None]
    w = rng.normal(size=(1, 5, 12)) * np.where(rng.random((1, 5, 12)) < 0.1, 6, 1)  # a few outlier weights
    amax = np.abs(w).reshape(1, 5, 3, 4).max(axis=3)
    scale = np.repeat(amax / 7, 4, axis=2)
    got = _clip_factors(w, h, scale, 4, 7)
    assert got.shape == w.shape and set(np.unique(got)) <= set(CLIP_FACTORS)
    for o in range(5):
        for b in range(3):
            cols = slice(4 * b, 4 * b + 4)

            def err(c):
                e = w[0, o, cols] - np.clip(np.rint(w[0, o, cols] / (scale[0, o, cols] * c)), -7, 7) * scale[0, o, cols] * c
                return e @ h[0][cols, cols] @ e
            assert err(got[0, o, 4 * b]) == pytest.approx(min(err(c) for c in CLIP_FACTORS))
    assert (got < 1).any()  # outliers make clipping pay somewhere


def test_weights_sit_on_int8_grids_and_quantize_exactly():
    model = make_separable()
    data = np.random.default_rng(1).normal(0, 2, (32, 4, 8, 8)).astype(np.float32)
    result = gptq_weights(model, data, samples=32, progress=False)
    weights, report = result.weights, result.layers
    assert set(weights) == {r.node for r in report} and weights
    assert all(r.sqnr_db > r.sqnr_nearest_db for r in report)
    for name, w in weights.items():
        flat = w.reshape(w.shape[0], -1).astype(np.float64)
        scale = np.abs(flat).max(axis=1, keepdims=True) / 127
        np.testing.assert_allclose(flat / scale, np.rint(flat / scale), atol=1e-3)  # on the grid
        assert np.allclose(np.abs(np.rint(flat / scale)).max(axis=1), 127)  # the scale survives
    rounded = substitute_weights(model, weights)
    table = calibrate(model, data, progress=False)
    q = quantize(rounded, table, force=True)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    for name, w in weights.items():
        key = next(k for k in inits if k.startswith(f"{[n for n in model.graph.node if n.name == name][0].input[1]}_gptq_quantized"))
        scale = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / 127
        expected = np.rint(w / scale.reshape(-1, *[1] * (w.ndim - 1)))
        np.testing.assert_array_equal(inits[key], expected)


def test_gptq_generalizes_to_held_out_data():
    """Weights only (activations float), a coarse grid (+-15) so rounding matters: the
    layers' output error on data GPTQ never saw is lower than with nearest rounding."""
    model = make_separable(seed=4)
    rng = np.random.default_rng(2)
    calib, held = (rng.normal(0, 2, (48, 4, 8, 8)).astype(np.float32) for _ in range(2))
    weights = gptq_weights(model, calib, samples=48, qmax=15, progress=False).weights
    nearest = {}
    for node in model.graph.node:
        if node.name in weights:
            w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == node.input[1]))
            scale = np.abs(w.reshape(len(w), -1)).max(axis=1).reshape(-1, 1, 1, 1) / 15
            nearest[node.name] = (np.rint(w / scale) * scale).astype(np.float32)
    ref = OrtRunner(model).infer({"x": held})
    sqnr = [compare_outputs(ref, OrtRunner(substitute_weights(model, ws)).infer({"x": held})).outputs[0].sqnr_db
            for ws in (nearest, weights)]
    assert sqnr[1] > sqnr[0] + 1.0


def test_fp32_and_fp16_layers_keep_their_own_weights():
    model = make_separable()
    data = np.random.default_rng(1).normal(0, 2, (32, 4, 8, 8)).astype(np.float32)
    weights = gptq_weights(model, data, samples=32, progress=False).weights
    table = calibrate(model, data, progress=False)
    mixed = apply_plan(model, table, PrecisionPlan.from_flags("int8", fp32=["project"]), weights=weights)
    inits = {t.name for t in mixed.model.graph.initializer}
    project = next(n for n in mixed.model.graph.node if n.name == "project")
    assert project.input[1] == "w3" and "w3" in inits  # original, not the GPTQ-rounded one
    assert any(name.startswith("w2_gptq") for name in inits)  # the int8 depthwise conv got its rounding


def test_layers_with_too_few_rows_keep_nearest_rounding(cnn_model):
    # The classifier sees one row per sample: 8 samples for 8 columns is below MIN_ROWS per column.
    data = np.random.default_rng(0).normal(size=(8, 3, 8, 8)).astype(np.float32)
    weights = gptq_weights(cnn_model, data, samples=8, progress=False).weights
    assert "fc" not in weights


def test_weights_for_another_model_are_refused():
    from trtq.core.errors import QuantizationError

    with pytest.raises(QuantizationError, match="do not fit this model"):
        substitute_weights(make_separable(), {"dw": np.zeros((3, 1, 3, 3), np.float32)})


def test_lazy_block_updates_give_the_same_levels(monkeypatch):
    import trtq.quantize.rounding as rounding

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 40)) + rng.normal(size=(600, 1))
    h = (x.T @ x / len(x))[None]
    w = rng.normal(size=(1, 8, 40))
    scale = np.abs(w).max(axis=2) / 127
    monkeypatch.setattr(rounding, "BLOCK", 10**6)
    whole = gptq_levels(w, h, scale)
    monkeypatch.setattr(rounding, "BLOCK", 16)  # three blocks, the last one partial
    np.testing.assert_array_equal(gptq_levels(w, h, scale), whole)
