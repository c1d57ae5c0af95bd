import onnx
import pytest

from tests.conftest import needs_torch
from trtq.core.errors import ExportError, ModelError

pytestmark = needs_torch


@pytest.fixture(scope="module")
def digits():
    from trtq.models.digits import TRAIN_SAMPLES, digits_arrays, digits_cnn

    x, _ = digits_arrays()
    return digits_cnn(), x[TRAIN_SAMPLES:TRAIN_SAMPLES + 16]


def test_export_dynamic_batch_opset_and_parity(digits):
    from trtq.quantize import export

    module, x = digits
    proto, parity = export(module, x[:1], check_inputs=x)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value")
    assert parity.samples == 16 and parity.max_abs < 1e-4
    onnx.checker.check_model(proto)


def test_parity_failure_is_reported(digits):
    import torch

    from trtq.quantize.export import check_parity, export

    module, x = digits
    proto, _ = export(module, x[:2])
    with torch.no_grad():
        module.fc.bias += 1.0  # the ONNX no longer matches the module
    try:
        with pytest.raises(ExportError, match="differs from PyTorch"):
            check_parity(module, proto, x, rtol=1e-3, atol=1e-4)
    finally:
        with torch.no_grad():
            module.fc.bias -= 1.0


def test_checkpoint_loading_is_weights_only_and_strict(tmp_path, digits):
    import torch

    from trtq.models import resolve_factory
    from trtq.quantize import load_checkpoint

    module, _ = digits
    torch.save({"state_dict": module.state_dict()}, tmp_path / "ok.pt")
    loaded = load_checkpoint(tmp_path / "ok.pt", resolve_factory("digits_cnn"))
    assert torch.equal(loaded.fc.weight, module.fc.weight)

    import argparse

    torch.save({"obj": argparse.Namespace(x=1)}, tmp_path / "pickle.pt")  # needs unpickling
    with pytest.raises(ModelError, match="weights-only"):
        load_checkpoint(tmp_path / "pickle.pt", resolve_factory("digits_cnn"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ModelError, match="does not match the model"):
        load_checkpoint(tmp_path / "wrong.pt", resolve_factory("digits_cnn"))
    with pytest.raises(ModelError, match="unknown model 'resnet9000'"):
        resolve_factory("resnet9000")
    with pytest.raises(ModelError, match="cannot import model factory"):
        resolve_factory("no_such_pkg.mod:fn")
    assert resolve_factory("models.digits:DigitsCNN")().fc.out_features == 10
