"""What a Triton user expects from `trtq serve` and `trtq export-triton`: the numbers Triton's
ONNX Runtime backend computes, its model-control and statistics endpoints, and configs that
name the TensorRT accelerator."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

from tests.deploy.test_serving import running, tritonhttp
from trtq.calibration import calibrate
from trtq.deploy import OrtRunner
from trtq.deploy.serving import ServedModel, ServeOptions, export_triton
from trtq.quantize import quantize

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="needs tritonclient[grpc]: pip install 'trtq[test]'")


@pytest.fixture
def int8_path(tmp_path, cnn_model, cnn_data):
    path = tmp_path / "tiny.int8.onnx"
    onnx.save(quantize(cnn_model, calibrate(cnn_model, cnn_data, progress=False)), path)
    return path


def _infer(client, x):
    inp = tritonhttp.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer("tiny", [inp]).as_numpy("logits")


def test_default_numerics_are_onnxruntimes_and_tensorrt_math_is_float_qdq(int8_path, cnn_data):
    import onnxruntime as ort

    x = cnn_data[:4]
    plain = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with OrtRunner(int8_path, mode="tensorrt-math") as runner:
        float_qdq = runner.infer({"input": x})["logits"]
    for mode, expected, numerics in (("onnxruntime", plain, "onnxruntime"),
                                     ("tensorrt-math", float_qdq, "tensorrt-math")):
        served = ServedModel(int8_path, name="tiny", options=ServeOptions(mode=mode))
        with running(served) as (url, _):
            client = tritonhttp.InferenceServerClient(url)
            np.testing.assert_allclose(_infer(client, x), expected, rtol=1e-6, atol=1e-6)
            assert client.get_model_metadata("tiny")["parameters"]["numerics"] == numerics
            config = client.get_model_config("tiny")
            assert config["parameters"]["numerics"]["string_value"] == numerics


def test_repository_index_load_unload_and_statistics(int8_path, cnn_data):
    served = ServedModel(int8_path, name="tiny", options=ServeOptions(max_delay_ms=0))
    with running(served) as (url, _):
        client = tritonhttp.InferenceServerClient(url)
        assert client.get_model_repository_index() == [{"name": "tiny", "version": "1", "state": "READY",
                                                        "reason": ""}]
        for i in range(5):
            _infer(client, cnn_data[i:i + 1])
        _infer(client, cnn_data[:3])
        stats = client.get_inference_statistics("tiny")["model_stats"][0]
        assert stats["name"] == "tiny" and stats["inference_count"] == 8
        infer = stats["inference_stats"]
        assert infer["success"]["count"] == 6 and infer["fail"]["count"] == 0
        for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
            assert infer[phase]["count"] == 6 and infer[phase]["ns"] >= 0
        sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
        assert sizes == {1: 5, 3: 1} and stats["execution_count"] == 6
        client.unload_model("tiny")
        assert not client.is_model_ready("tiny")
        assert client.get_model_repository_index()[0]["state"] == "UNAVAILABLE"
        with pytest.raises(Exception, match="not loaded"):
            _infer(client, cnn_data[:1])
        client.load_model("tiny")  # reads the file from disk again
        assert client.is_model_ready("tiny")
        _infer(client, cnn_data[:1])
        stats = client.get_inference_statistics("tiny")["model_stats"][0]["inference_stats"]
        assert stats["success"]["count"] == 7 and stats["fail"]["count"] == 1
        with pytest.raises(Exception, match="not supported"):
            client.load_model("tiny", files={"file:1/model.onnx": b"x"})
        with pytest.raises(Exception, match="unknown model"):
            client.load_model("other")


def test_export_with_the_tensorrt_accelerator(tmp_path, int8_path, cnn_model):
    from google.protobuf import text_format

    folder = export_triton(int8_path, tmp_path / "repo", name="tiny", accelerator="tensorrt")
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "INT8"
    assert config.instance_group == [] or config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    onnx.save(cnn_model, tmp_path / "fp32.onnx")
    folder = export_triton(tmp_path / "fp32.onnx", tmp_path / "repo", name="fp32", accelerator="tensorrt")
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"] \
        == "FP32"


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_a_cpu_without_vnni_is_told_at_startup(int8_path, monkeypatch):
    import trtq.quantize.targets

    records = _Records()
    logger = logging.getLogger("trtq.serve")
    logger.addHandler(records)
    try:
        monkeypatch.setattr(trtq.quantize.targets, "needs_reduce_range", lambda *a, **k: True)
        ServedModel(int8_path, name="tiny").close()
        (record,) = [r for r in records.records if r.getMessage() == "numerics"]
        assert "no VNNI" in record.fields["message"] and "logits" in record.fields["max_abs_gap_on_probe"]
        records.records.clear()
        monkeypatch.setattr(trtq.quantize.targets, "needs_reduce_range", lambda *a, **k: False)
        ServedModel(int8_path, name="tiny").close()
        assert not [r for r in records.records if r.getMessage() == "numerics"]
    finally:
        logger.removeHandler(records)


def test_a_malformed_model_control_body_is_a_400(int8_path):
    from tests.deploy.test_serving import _request

    served = ServedModel(int8_path, name="tiny")
    with running(served) as (url, _):
        for body in (b"{not json", b"[1, 2]", b'{"parameters": 3}'):
            status, payload, _ = _request(url, "POST", "/v2/repository/models/tiny/load", body)
            assert status == 400 and b"request body" in payload, (body, status, payload)
        assert _request(url, "POST", "/v2/repository/models/tiny/load", b"")[0] == 200
