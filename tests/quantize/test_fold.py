import numpy as np

from trtq.deploy import OrtRunner
from trtq.quantize import fold_batchnorm
from tests.conftest import make_cnn


def test_fold_removes_bn_and_keeps_outputs(cnn_data):
    model = make_cnn()
    folded = fold_batchnorm(model)
    assert "BatchNormalization" in {n.op_type for n in model.graph.node}  # input untouched
    assert "BatchNormalization" not in {n.op_type for n in folded.graph.node}
    conv1 = next(n for n in folded.graph.node if n.name == "conv1")
    assert conv1.output[0] == "bn1"  # downstream names (and calibration ranges) survive
    ref = OrtRunner(model).infer({"input": cnn_data})["logits"]
    got = OrtRunner(folded).infer({"input": cnn_data})["logits"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    assert {i.name for i in folded.graph.initializer}.isdisjoint({"bn_g", "bn_b", "bn_m", "bn_v"})


def test_fold_is_identity_without_bn():
    model = make_cnn(with_bn=False)
    assert fold_batchnorm(model).SerializeToString() == model.SerializeToString()
