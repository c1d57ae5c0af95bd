import numpy as np
import pytest

from trtq.calibration import CalibrationTable, TensorRange
from trtq.calibration.trt_cache import from_trt_cache, hex_to_scale, load_trt_cache, save_trt_cache
from trtq.core.errors import CalibrationError


def test_documented_example():
    assert hex_to_scale("3c010204") == pytest.approx(1 / 127)
    t = from_trt_cache("TRT-101401-EntropyCalibration2\nimages: 3c010204\n")
    assert t["images"].amax == pytest.approx(1.0, rel=1e-6) and t.method == "trt-cache:EntropyCalibration2"


def test_round_trip_keeps_scales(tmp_path):
    rng = np.random.default_rng(0)
    ranges = {f"t{i}": TensorRange(f"t{i}", -float(a), float(b), "entropy", 8)
              for i, (a, b) in enumerate(rng.uniform(0.01, 50, (20, 2)))}
    table = CalibrationTable(ranges, "entropy", "ab" * 32, 8)
    path = save_trt_cache(table, tmp_path / "cal.cache")
    assert path.read_text().splitlines()[0] == "TRT-101401-EntropyCalibration2"
    back = load_trt_cache(path)
    for name, r in ranges.items():
        assert np.float32(back[name].amax / 127) == np.float32(r.amax / 127)


def test_reads_a_cache_written_by_another_tool():
    # As TensorRT 8-10 writes it: upper/lower-case hex, short hex for tiny scales, a name with colons.
    text = "TRT-8601-MinMaxCalibration\ninput_1: 3C010204\n/model/conv1/Conv_output_0: 3d4ccccd\n"
    t = from_trt_cache(text)
    assert t["input_1"].amax == pytest.approx(1.0, rel=1e-6)
    assert t["/model/conv1/Conv_output_0"].amax == pytest.approx(0.05 * 127, rel=1e-6)


@pytest.mark.parametrize("hex_scale", ["0", "00000000", "00000001", "80000000"])
def test_zero_and_denormal_scales_are_refused_with_the_tensor_name(hex_scale):
    """A zero scale would quantize the tensor to nothing (it used to become amax 1.0, silently)."""
    with pytest.raises(CalibrationError, match="scale .* of 'act' is not a positive, normal float32"):
        from_trt_cache(f"TRT-8601-MinMaxCalibration\nact: {hex_scale}\n")


def test_malformed_caches_are_refused(tmp_path):
    with pytest.raises(CalibrationError, match="not a TensorRT calibration cache"):
        from_trt_cache('{"format": "trtq.calibration"}')
    with pytest.raises(CalibrationError, match="line 2 is malformed"):
        from_trt_cache("TRT-101401-EntropyCalibration2\nimages 3c010204\n")
    with pytest.raises(CalibrationError, match="not a positive, normal"):
        from_trt_cache("TRT-101401-EntropyCalibration2\nx: 7f800000\n")
    with pytest.raises(CalibrationError, match="does not exist"):
        load_trt_cache(tmp_path / "missing.cache")


def test_load_table_checks_the_model(tmp_path, cnn_model, cnn_data):
    import onnx

    from trtq.calibration import calibrate, load_table
    from tests.conftest import make_cnn

    onnx.save(cnn_model, tmp_path / "m.onnx")
    table = calibrate(cnn_model, cnn_data, progress=False)
    table.save(tmp_path / "t.json")
    save_trt_cache(table, tmp_path / "t.cache")
    assert load_table(tmp_path / "t.json", tmp_path / "m.onnx") == table
    other = make_cnn(seed=3)
    with pytest.raises(CalibrationError, match="computed for another model"):
        load_table(tmp_path / "t.json", other)
    assert load_table(tmp_path / "t.json", other, force=True) == table
    cache = load_table(tmp_path / "t.cache", cnn_model)
    assert set(cache.ranges) == set(table.ranges)
    (tmp_path / "foreign.cache").write_text("TRT-1-MinMaxCalibration\nnot_in_model: 3c010204\n")
    with pytest.raises(CalibrationError, match="does not have"):
        load_table(tmp_path / "foreign.cache", cnn_model)
