"""Most exported ONNX files fix the batch dimension (often at 1): every stage must run at it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.conftest import make_cnn
from trtq.core.errors import DataError


def _fixed_batch(batch: int) -> onnx.ModelProto:
    model = make_cnn()
    for value in (model.graph.input[0], model.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = batch
    return model


@pytest.mark.parametrize("batch", [1, 4])
def test_every_stage_runs_at_the_models_batch(tmp_path, batch):
    import trtq

    model = _fixed_batch(batch)
    onnx.save(model, tmp_path / "fixed.onnx")
    data = np.random.default_rng(0).normal(0, 1, (42, 3, 8, 8)).astype(np.float32)  # not a multiple of 4
    result = trtq.quantize_model(onnx=tmp_path / "fixed.onnx", calib_data=data, out_dir=tmp_path / "out",
                                 progress=False, target="cosine>=0.999", bias_correction=True,
                                 layer_clipping=True, equalize=True, batch_size=32)
    assert result.report.outputs[0].cosine > 0.99
    out = onnx.load(result.files["mixed"])
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_value == batch  # declared shapes kept
    # No evaluation data with a target: half the 42 samples calibrate (cut to whole batches), 11
    # choose the plan, 10 are the held-out check the report shows.
    assert result.table.samples == (21 if batch == 1 else 20)
    assert "held-out part of the calibration data" in result.eval_source


def test_too_few_samples_for_the_fixed_batch_is_one_clear_error():
    from trtq.core import input_specs
    from trtq.core.readers import collect_arrays

    specs = input_specs(_fixed_batch(4))
    with pytest.raises(DataError, match="batches of exactly 4 samples .* only 3"):
        collect_arrays(np.zeros((3, 3, 8, 8), np.float32), specs)


def test_samples_left_out_by_a_fixed_batch_are_said_once(caplog):
    from trtq.calibration import calibrate
    from trtq.core import readers

    readers._said.clear()
    model = _fixed_batch(4)
    data = np.random.default_rng(0).normal(0, 1, (34, 3, 8, 8)).astype(np.float32)
    with caplog.at_level("WARNING", logger="trtq.core.readers"):
        for _ in range(2):  # every pass of a job reads the data again: one line, not one per pass
            assert calibrate(model, data, "minmax", progress=False).samples == 32
        assert calibrate(model, data, "minmax", samples=30, progress=False).samples == 28
    said = [r.getMessage() for r in caplog.records]
    assert said == ["the model runs batches of exactly 4 samples (its inputs fix the batch dimension): the data's "
                    "last 2 sample(s), which do not fill a batch, are left out",
                    "the model runs batches of exactly 4 samples (its inputs fix the batch dimension): 28 samples "
                    "are used where 30 were asked"]
