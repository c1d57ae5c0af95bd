"""Triton model repository export; configs are parsed with Triton's own ModelConfig schema."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

from trtq.deploy.engine_info import SIDECAR_FORMAT, SIDECAR_VERSION
from trtq.deploy.serving import ModelSignature, TensorSpec, export_triton, model_config_text
from tests.conftest import make_matmul
from trtq.cli import main
from trtq.core.errors import OutputError, TrtqError

pytest.importorskip("google.protobuf", reason="needs protobuf (tritonclient[grpc]): pip install 'trtq[test]'")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="needs tritonclient[grpc]: pip install 'trtq[test]'")


def parse(text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _io(config):
    def dt(t):
        return model_config_pb2.DataType.Name(t.data_type)

    return ([(t.name, dt(t), list(t.dims)) for t in config.input],
            [(t.name, dt(t), list(t.dims)) for t in config.output])


def test_onnx_export_matches_the_model(tmp_path, cnn_path):
    folder = export_triton(cnn_path, tmp_path / "repo", name="tiny")
    config = parse((folder / "config.pbtxt").read_text())
    assert config.name == "tiny" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 32
    assert _io(config) == ([("input", "TYPE_FP32", [3, 8, 8])], [("logits", "TYPE_FP32", [4])])
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    copied = onnx.load(folder / "1" / "model.onnx")
    assert copied.graph == onnx.load(cnn_path).graph
    assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt"]


def test_static_batch_model_gets_max_batch_zero(tmp_path):
    model = make_matmul()
    for vi in (*model.graph.input, *model.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 4
    path = tmp_path / "static.onnx"
    onnx.save(model, path)
    config = parse((export_triton(path, tmp_path / "repo") / "config.pbtxt").read_text())
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert _io(config) == ([("x", "TYPE_FP32", [4, 6])], [("y", "TYPE_FP32", [4, 5])])
    with pytest.raises(TrtqError, match="max-batch 0"):
        export_triton(path, tmp_path / "repo2", max_batch=4)


def test_existing_version_is_kept_unless_overwrite(tmp_path, cnn_path):
    repo = tmp_path / "repo"
    export_triton(cnn_path, repo, name="m", max_batch=4)
    with pytest.raises(OutputError, match="already exists"):
        export_triton(cnn_path, repo, name="m", max_batch=16)
    assert parse((repo / "m" / "config.pbtxt").read_text()).max_batch_size == 4
    export_triton(cnn_path, repo, name="m", max_batch=16, overwrite=True)
    assert parse((repo / "m" / "config.pbtxt").read_text()).max_batch_size == 16
    export_triton(cnn_path, repo, name="m", version=2)
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2", "config.pbtxt"]
    with pytest.raises(TrtqError, match="not usable"):
        export_triton(cnn_path, repo, name="../evil")


def _fake_engine(tmp_path, backend: str, max_batch: int):
    path = tmp_path / "net.engine"
    path.write_bytes(b"not really an engine")
    meta = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "backend": backend, "backend_version": "10.9",
            "compute_capabilities": [], "onnx_sha256": "0" * 64,
            "inputs": [{"name": "images", "dtype": "float16", "shape": ["N", 3, 32, 32],
                        "profile": {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [max_batch, 3, 32, 32]}}],
            "outputs": [{"name": "scores", "dtype": "float", "shape": ["N", 10]},
                        {"name": "label", "dtype": "int64", "shape": ["N"]}],
            "precision": {}}
    (tmp_path / "net.engine.json").write_text(json.dumps(meta))
    return path


def test_engine_export_takes_the_profile_and_refuses_tensorrt_rtx(tmp_path):
    path = _fake_engine(tmp_path, "tensorrt", 16)
    folder = export_triton(path, tmp_path / "repo", instance_count=2)
    config = parse((folder / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 16
    assert _io(config) == ([("images", "TYPE_FP16", [3, 32, 32])],
                           [("scores", "TYPE_FP32", [10]), ("label", "TYPE_INT64", [])])
    assert config.instance_group[0].count == 2
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    assert (folder / "1" / "model.plan").read_bytes() == path.read_bytes()
    with pytest.raises(TrtqError, match="optimization profile"):
        export_triton(path, tmp_path / "repo", max_batch=32, overwrite=True)
    (tmp_path / "rtx").mkdir()
    rtx = _fake_engine(tmp_path / "rtx", "tensorrt_rtx", 8)
    with pytest.raises(TrtqError, match="TensorRT-RTX"):
        export_triton(rtx, tmp_path / "repo3")
    assert not (tmp_path / "repo3").exists()


def test_names_with_quotes_and_slashes_are_escaped():
    sig = ModelSignature((TensorSpec('in "x"\\/0', "INT64", (-1, -1)),), (TensorSpec("/out/y:0", "BOOL", (-1,)),),
                         "onnxruntime_onnx")
    config = parse(model_config_text("m", sig, 4))
    assert [t.name for t in config.input] == ['in "x"\\/0'] and list(config.input[0].dims) == [-1]
    assert config.output[0].name == "/out/y:0" and list(config.output[0].dims) == []


def test_cli_export_triton(tmp_path, cnn_path):
    result = CliRunner().invoke(main, ["export-triton", str(cnn_path), "--repo", str(tmp_path / "repo"),
                                       "--max-batch", "32", "--max-queue-delay-us", "500"])
    assert result.exit_code == 0, result.output
    assert "max_batch_size: 32" in result.output and "model.onnx" in result.output
    config = parse((tmp_path / "repo" / "cnn" / "config.pbtxt").read_text())  # named after the file
    assert config.max_batch_size == 32 and config.dynamic_batching.max_queue_delay_microseconds == 500
    again = CliRunner().invoke(main, ["export-triton", str(cnn_path), "--repo", str(tmp_path / "repo")])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert [p.name for p in (tmp_path / "repo").iterdir()] == ["cnn"]
