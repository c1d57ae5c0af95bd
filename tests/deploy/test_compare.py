import math

import numpy as np
import pytest

from trtq.calibration import calibrate
from trtq.deploy import OrtRunner, QdqMode, Thresholds, compare, compare_outputs
from trtq.deploy.compare import output_metrics
from trtq.quantize import quantize
from trtq.core.errors import TrtqError


def test_metrics_against_numpy():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 10))
    noise = rng.normal(scale=0.1, size=ref.shape)
    m = output_metrics("y", ref, ref + noise)
    cos = [(a @ b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(ref, ref + noise)]
    assert m.cosine == pytest.approx(np.mean(cos)) and m.min_cosine == pytest.approx(np.min(cos))
    assert m.sqnr_db == pytest.approx(10 * np.log10((ref ** 2).sum() / (noise ** 2).sum()))
    assert m.max_abs == pytest.approx(np.abs(noise).max())
    assert m.max_rel == pytest.approx(np.abs(noise).max() / np.abs(ref).max())
    assert m.top1 == pytest.approx(np.mean(ref.argmax(1) == (ref + noise).argmax(1)))


def test_identical_and_top5():
    ref = np.eye(6)[:, :6] + 0.01 * np.arange(6)
    same = output_metrics("y", ref, ref.copy())
    assert same.cosine == 1.0 and math.isinf(same.sqnr_db) and same.top1 == 1.0
    swapped = ref[:, ::-1].copy()
    m = output_metrics("y", ref, swapped)
    assert m.top1 < 1.0 and m.top5 == 1.0 - (np.argsort(-swapped, 1)[:, :5] != ref.argmax(1)[:, None]).all(1).mean()


def test_report_truthiness_and_shape_mismatch():
    ref = {"y": np.ones((4, 3))}
    assert compare_outputs(ref, {"y": np.ones((4, 3))})
    assert not compare_outputs(ref, {"y": -np.ones((4, 3))})
    assert not compare_outputs(ref, {"y": np.ones((4, 3))}, thresholds=Thresholds(min_cosine=0.5, min_top1=1.1))
    with pytest.raises(TrtqError, match="shape"):
        compare_outputs(ref, {"y": np.ones((4, 2))})
    with pytest.raises(TrtqError, match="no output"):
        compare_outputs(ref, {"z": np.ones((4, 3))})


def test_compare_models_both_modes(tmp_path, cnn_model, cnn_data):
    import onnx

    q = quantize(cnn_model, calibrate(cnn_model, cnn_data, progress=False))
    onnx.save(cnn_model, tmp_path / "fp32.onnx")
    onnx.save(q, tmp_path / "int8.onnx")
    report = compare(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", cnn_data, batch_size=16)
    assert report.samples == 40 and report.outputs[0].cosine > 0.98
    with OrtRunner(tmp_path / "int8.onnx", mode=QdqMode.ORT_INT8) as fused:
        r2 = compare(tmp_path / "fp32.onnx", fused, cnn_data)
    assert r2.outputs[0].cosine > 0.9


def test_neighbour_agreement_against_a_loop():
    from trtq.deploy.compare import neighbour_agreement

    rng = np.random.default_rng(3)
    ref = rng.normal(size=(40, 8))
    cand = ref + rng.normal(scale=0.3, size=ref.shape)

    def nearest(x, i):
        sims = [(x[i] @ x[j]) / np.linalg.norm(x[i]) / np.linalg.norm(x[j]) if j != i else -np.inf
                for j in range(len(x))]
        return int(np.argmax(sims))

    expected = np.mean([nearest(ref, i) == nearest(cand, i) for i in range(len(ref))])
    assert neighbour_agreement(ref, cand) == pytest.approx(expected)
    assert 0 < expected < 1 and neighbour_agreement(ref, ref) == 1.0


def test_task_metrics_follow_the_output_shape():
    from trtq.deploy.compare import output_metrics
    from trtq.deploy.evaluate import Target, report_metrics

    rng = np.random.default_rng(0)
    # Sequences [N, T, C]: in sample 0 one blank step becomes a class, so its decoding differs;
    # samples 1 and 2 are untouched.
    ref = np.full((3, 5, 4), -5.0, np.float32)
    ids = np.array([[1, 0, 2, 2, 0], [3, 3, 0, 1, 1], [2, 0, 0, 2, 3]])
    np.put_along_axis(ref, ids[..., None], 5.0, axis=2)
    cand = ref.copy()
    cand[0, 1] = -5.0
    cand[0, 1, 3] = 5.0  # blank -> class 3: "1 3 2" instead of "1 2"
    m = output_metrics("seq", ref, cand)
    assert m.task == "sequence" and m.position_top1 == pytest.approx(14 / 15)
    assert m.sequence == pytest.approx(2 / 3) and m.top1 is None
    # Probability maps [N, 1, H, W]: IoU of the masks at 0.5.
    prob = rng.uniform(0, 1, (2, 1, 8, 8)).astype(np.float32)
    moved = prob.copy()
    moved[0, 0, 0, :] = 1 - moved[0, 0, 0, :]
    a, b = prob > 0.5, moved > 0.5
    m = output_metrics("map", prob, moved)
    assert m.task == "map" and m.mask_iou == pytest.approx((a & b).sum() / (a | b).sum())
    # Embeddings: nearest-neighbour agreement.
    emb = rng.normal(size=(6, 16)).astype(np.float32)
    m = output_metrics("emb", emb, emb + 1e-4, task="embedding")
    assert m.task == "embedding" and m.neighbours == 1.0
    # Targets take the task metrics.
    report = compare_outputs({"seq": ref}, {"seq": cand})
    assert not Target.parse("sequence>=0.9").met(report_metrics(report))
    assert Target.parse("position_top1>=0.9").met(report_metrics(report))
    with pytest.raises(TrtqError, match="mask_iou"):
        Target.parse("mask_iou>=0.9").met(report_metrics(report))


def test_metric_overrides_choose_how_outputs_are_read():
    from trtq.deploy.compare import parse_metric_overrides

    assert parse_metric_overrides(["top1", "box=cosine", "mask=mask_iou"]) == {
        "*": "classifier", "box": "tensor", "mask": "map"}
    with pytest.raises(TrtqError, match="unknown metric 'iou'"):
        parse_metric_overrides(["iou"])
    rng = np.random.default_rng(0)
    # A (N, H, W) probability map: by shape a "sequence", read as a map when told so.
    prob = rng.uniform(0, 1, (4, 16, 16)).astype(np.float32)
    assert output_metrics("p", prob, prob).task == "sequence"
    m = output_metrics("p", prob, prob, task="map")
    assert m.task == "map" and m.mask_iou == 1.0 and m.sequence is None
    # A 4-number box regression: by shape a "classifier", a plain tensor when told so.
    box = rng.uniform(0, 1, (8, 4)).astype(np.float32)
    assert output_metrics("box", box, box).top1 == 1.0
    assert output_metrics("box", box, box, task="tensor").top1 is None
    with pytest.raises(TrtqError, match="cannot be read as a sequence output.*box=cosine"):
        output_metrics("box", box, box, task="sequence")
    with pytest.raises(TrtqError, match=r"--metric names output\(s\) \['nope'\]"):
        compare_outputs({"box": box}, {"box": box}, tasks={"nope": "tensor"})
    report = compare_outputs({"box": box, "p": prob}, {"box": box, "p": prob}, tasks={"p": "map", "*": "tensor"})
    assert [o.task for o in report.outputs] == ["tensor", "map"]
