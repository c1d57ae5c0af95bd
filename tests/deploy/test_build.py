"""Engine builds with whatever TensorRT is installed (TensorRT-RTX builds without a GPU)."""

import dataclasses
import json
import os
import re

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from trtq.calibration import calibrate
from trtq.deploy.backend import load_backend
from trtq.deploy.build import BuildOptions, build_engine, parse_shapes
from trtq.deploy.engine_info import EngineInfo, save_engine
from trtq.deploy.plan import precision_plan
from trtq.quantize import quantize
from tests.conftest import has_module
from trtq.cli import main
from trtq.core.errors import BuildError, DependencyError, TrtqError

needs_trt = pytest.mark.skipif(not (has_module("tensorrt") or has_module("tensorrt_rtx")
                                    or has_module("tensorrt_rtx_bindings")),
                               reason="needs TensorRT or TensorRT-RTX: pip install 'trtq[rtx]'")


@pytest.fixture
def int8_model(cnn_model, cnn_data):
    return quantize(cnn_model, calibrate(cnn_model, cnn_data, progress=False))


def test_precision_plan_reads_qdq(cnn_model, int8_model):
    assert set(precision_plan(int8_model).values()) == {"int8"}
    assert set(precision_plan(cnn_model).values()) == {"fp32"}


def test_parse_shapes():
    assert parse_shapes("images:1x3x8x8/4x3x8x8/16x3x8x8") == ("images", ((1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8)))
    with pytest.raises(BuildError, match="NAME:MIN/OPT/MAX"):
        parse_shapes("images:1x3x8x8")


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(DependencyError, match="unknown TensorRT backend"):
        load_backend("onnxruntime")


@needs_trt
def test_build_int8_engine_with_sidecar(tmp_path, int8_model):
    built = build_engine(int8_model, BuildOptions(max_batch=8, progress=True))  # via IProgressMonitor
    engine = built.engine
    assert len(engine) > 1000
    paths = built.save(tmp_path / "m.engine")
    assert EngineInfo.load(paths[0]) == built.info
    meta = json.loads(paths[1].read_text())
    assert EngineInfo.from_json(meta) == built.info and built.info.max_batch == 8
    assert meta["inputs"][0]["profile"] == {"min": [1, 3, 8, 8], "opt": [8, 3, 8, 8], "max": [8, 3, 8, 8]}
    assert meta["outputs"][0]["name"] == "logits" and set(meta["precision"].values()) == {"int8"}
    if meta["backend"] == "tensorrt_rtx":
        assert "SM75" not in meta["compute_capabilities"] and "SM89" in meta["compute_capabilities"]
        rt = load_backend().module.Runtime(load_backend().module.Logger())
        header = engine[: rt.engine_header_size]
        assert rt.get_engine_validity(header) is not None


@needs_trt
def test_cli_build_inspect_and_errors(tmp_path, int8_model):
    onnx.save(int8_model, tmp_path / "m.onnx")
    runner = CliRunner()
    res = runner.invoke(main, ["build", str(tmp_path / "m.onnx"), "--max-batch", "4", "--compute-capability",
                               "SM89", "--no-progress"])
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "m.engine").is_file()
    res = runner.invoke(main, ["inspect", str(tmp_path / "m.engine"), "--layers"])
    assert res.exit_code == 0 and "int8" in res.output
    res = runner.invoke(main, ["build", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "x.engine"),
                               "--shapes", "nope:1x1/1x1/1x1"])
    assert res.exit_code == 2 and "unknown inputs" in res.stderr and not (tmp_path / "x.engine").exists()
    res = runner.invoke(main, ["inspect", str(tmp_path / "missing.engine")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


@needs_trt
def test_parser_errors_name_the_node(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="broken_conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(np.zeros((4, 5, 3, 3), np.float32), "w")])  # 5 != 3 channels
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(BuildError, match="broken_conv|could not build"):
        build_engine(model, BuildOptions(progress=False))


@needs_trt
def test_quantize_engine_flag(tmp_path, cnn_model, cnn_data, monkeypatch):
    onnx.save(cnn_model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", cnn_data)
    runner = CliRunner()
    args = ["quantize", "--onnx", str(tmp_path / "m.onnx"), "--calib-data", str(tmp_path / "x.npy"),
            "--engine", "--no-progress"]
    res = runner.invoke(main, args + ["--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "out" / "model.int8.engine.json").read_text())["precision"]
    if not has_module("tensorrt"):  # ask for the backend that is missing: fails before any work
        monkeypatch.setenv("TRTQ_BACKEND", "tensorrt")
        res = runner.invoke(main, args + ["--out", str(tmp_path / "out2")])
        assert res.exit_code == 2 and "pip install 'trtq[gpu]'" in res.stderr
        assert not (tmp_path / "out2").exists()
    if has_module("tensorrt_rtx") and not has_module("tensorrt"):  # no Hopper target in TensorRT-RTX: said first
        monkeypatch.delenv("TRTQ_BACKEND", raising=False)
        res = runner.invoke(main, args + ["--gpu", "hopper", "--out", str(tmp_path / "out3")])
        assert res.exit_code == 2 and "no target for hopper GPUs" in res.stderr, res.output
        assert not (tmp_path / "out3").exists()


@needs_trt
def test_engine_checks_before_touching_the_gpu(tmp_path, int8_model):
    from trtq.deploy import Engine

    built = build_engine(int8_model, BuildOptions(max_batch=4, progress=False))
    engine, info = built.engine, built.info
    path, meta_path = built.save(tmp_path / "m.engine")
    (tmp_path / "bare.engine").write_bytes(engine)
    with pytest.raises(BuildError, match="has no sidecar"):
        Engine(tmp_path / "bare.engine")
    stale = dataclasses.replace(info, backend_version="0.0.1")
    save_engine(engine, stale, tmp_path / "old.engine")
    with pytest.raises(BuildError, match="was built with .* 0.0.1.*rebuild it"):
        Engine(tmp_path / "old.engine")
    if not _gpu_present():
        with pytest.raises(TrtqError, match="cannot run here|needs an NVIDIA GPU|pip install 'trtq\\[gpu\\]'"):
            Engine(path)


def _gpu_present() -> bool:
    return has_module("cuda") and (os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl"))


@pytest.mark.gpu
@needs_trt
def test_engine_matches_onnx_runtime_on_gpu(tmp_path, int8_model, cnn_data):
    from trtq.deploy import Engine, OrtRunner, compare_outputs

    caps = ("CURRENT",) if load_backend().is_rtx else ()  # TensorRT-RTX: this GPU, whatever it is
    path, _ = build_engine(int8_model, BuildOptions(max_batch=16, compute_capabilities=caps,
                                                    progress=False)).save(tmp_path / "m.engine")
    with Engine(path) as eng, OrtRunner(int8_model) as ort_runner:
        for batch in (1, 7, 16):
            x = {"input": cnn_data[:batch]}
            report = compare_outputs(ort_runner.infer(x), eng.infer(x))
            assert report.outputs[0].cosine > 0.99, report
        assert eng.layer_information()
    with Engine(path, cuda_graphs=True) as graphed, Engine(path) as plain:
        x = {"input": cnn_data[:8]}
        expected = plain.infer(x)["logits"]
        for _ in range(3):  # plain run, capture, replay
            np.testing.assert_allclose(graphed.infer(x)["logits"], expected, rtol=1e-5, atol=1e-6)
        y = {"input": cnn_data[8:12]}  # new shape: re-captured
        np.testing.assert_allclose(graphed.infer(y)["logits"], plain.infer(y)["logits"], rtol=1e-5, atol=1e-6)


def _qdq_relu(zero_point: int):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="act_quant"),
         helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="act_dequant"),
         helper.make_node("Relu", ["dq"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
         numpy_helper.from_array(np.array(zero_point, np.int8), "zp")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _qlinear_conv():
    from onnx import TensorProto, helper, numpy_helper

    consts = {"xs": np.float32(0.1), "xz": np.uint8(0), "w": np.ones((1, 1, 3, 3), np.int8), "ws": np.float32(0.1),
              "wz": np.int8(0), "ys": np.float32(0.1), "yz": np.uint8(0)}
    graph = helper.make_graph(
        [helper.make_node("QLinearConv", ["x", *consts], ["y"], name="qconv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 1, 2, 2])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@needs_trt
@pytest.mark.parametrize("model, match", [(_qdq_relu(3), r"node 'act_quant' \(QuantizeLinear\).*zero point"),
                                          (_qlinear_conv(), r"node 'qconv' \(QLinearConv\): UNSUPPORTED_NODE")])
def test_unsupported_constructs_fail_with_the_node(tmp_path, model, match):
    onnx.save(model, tmp_path / "bad.onnx")
    res = CliRunner().invoke(main, ["build", str(tmp_path / "bad.onnx"), "--no-progress"])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert "\n" not in err and re.search(match, err), err
    assert not (tmp_path / "bad.engine").exists()


@needs_trt
def test_corrupt_or_truncated_engine_is_a_clear_error(tmp_path, int8_model):
    from trtq.deploy import Engine

    built = build_engine(int8_model, BuildOptions(max_batch=2, progress=False))
    save_engine(built.engine[: len(built.engine) // 3], built.info, tmp_path / "cut.engine")
    save_engine(b"\x00" * 4096, built.info, tmp_path / "zero.engine")
    for name in ("cut.engine", "zero.engine"):
        with pytest.raises(TrtqError) as info:
            Engine(tmp_path / name)
        assert "\n" not in str(info.value)


def test_no_precision_builder_flags_or_calibrators_anywhere():
    """Precision must come from the ONNX graph: no code may set FP16/INT8 flags or calibrators."""
    import pathlib

    root = pathlib.Path(__file__).parents[2]
    banned = re.compile(r"BuilderFlag\.(FP16|INT8|BF16|FP8|INT4|FP4|OBEY_PRECISION|PREFER_PRECISION)|int8_calibrator"
                        r"|IInt8\w*Calibrator")
    offenders = [str(p) for pkg in ("deploy", "quantize", "calibration", "trtq") for p in (root / pkg).rglob("*.py")
                 if banned.search(p.read_text())]
    assert not offenders


def test_unsupported_compute_capability_message_names_the_way_out():
    """What TensorRT-RTX 1.7 reports on an H200 (seen there): the message must say why and what to use instead."""
    import enum
    import types

    from trtq.deploy import Engine
    from trtq.deploy.backend import Backend

    class Validity(enum.Enum):
        VALID = 0
        INVALID = 1

    class Diagnostics(enum.IntFlag):
        UNSUPPORTED_CC = 4
        OLD_CUDA_DRIVER = 8

    trt = types.SimpleNamespace(EngineValidity=Validity, EngineInvalidityDiagnostics=Diagnostics,
                                __version__="1.7.1.116")
    engine = Engine.__new__(Engine)
    engine.name, engine.info = "m.engine", types.SimpleNamespace(compute_capabilities=("SM80", "SM86"))
    engine.backend = Backend("tensorrt_rtx", trt)
    engine._runtime = types.SimpleNamespace(engine_header_size=8,
                                            get_engine_validity=lambda header: (Validity.INVALID, 4))
    with pytest.raises(BuildError, match=r"cannot run here: unsupported cc \(built for SM80, SM86; .*pip install 'trtq\[gpu\]'"):
        engine._check_rtx_validity(trt, b"\0" * 16)


@needs_trt
def test_engine_signature_for_serving_and_triton(tmp_path, int8_model):
    """Serving and Triton export read an engine's I/O and batch limit from its sidecar."""
    pytest.importorskip("prometheus_client", reason="needs the serve extra: pip install 'trtq[serve]'")
    from trtq.deploy.serving import ServedModel, ServeOptions, export_triton, signature_of

    built = build_engine(int8_model, BuildOptions(max_batch=4, progress=False))
    path, _ = built.save(tmp_path / "tiny.engine")
    sig = signature_of(path)
    assert sig.platform == "tensorrt_plan" and sig.batched
    assert [(t.name, t.datatype, t.shape) for t in sig.inputs] == [("input", "FP32", (-1, 3, 8, 8))]
    assert [(t.name, t.datatype, t.shape) for t in sig.outputs] == [("logits", "FP32", (-1, 4))]
    with pytest.raises(TrtqError, match="optimization profile"):
        ServedModel(path, options=ServeOptions(max_batch=8))
    if built.info.backend == "tensorrt_rtx":
        with pytest.raises(TrtqError, match="TensorRT-RTX"):
            export_triton(path, tmp_path / "repo")
    try:
        served = ServedModel(path)  # max batch: the profile's 4, not the default 32
    except TrtqError as exc:  # no usable GPU here: a clear error, not a crash
        assert re.search(r"GPU|CUDA|cuda|cannot run", str(exc)), exc
        return
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    assert served.max_batch == 4
    out = served.batcher.submit({"input": x}, 3).result(60)["logits"]
    served.close()
    assert out.shape == (3, 4) and np.isfinite(out).all()


def test_gpu_generation_picks_the_rtx_targets_it_has():
    """``trtq quantize --gpu X --engine``: X's compute capabilities that TensorRT-RTX knows (1.7: no
    SM90 or SM100), and a clear error when it knows none or the model's fp8 cannot run there."""
    import enum
    import types

    from trtq.deploy.build import rtx_targets

    trt = types.SimpleNamespace(ComputeCapability=enum.Enum(
        "ComputeCapability", ["NONE", "CURRENT", "SM75", "SM80", "SM86", "SM89", "SM120", "SM121"]))
    assert rtx_targets(trt, BuildOptions(gpu="ada"), fp8=True) == ("SM89",)
    assert rtx_targets(trt, BuildOptions(gpu="blackwell"), fp8=False) == ("SM120", "SM121")
    assert rtx_targets(trt, BuildOptions(gpu="ampere"), fp8=False) == ("SM80", "SM86")
    assert rtx_targets(trt, BuildOptions(gpu="ada", compute_capabilities=("SM120",)), fp8=False) == ("SM120",)
    with pytest.raises(BuildError, match="no target for hopper GPUs .*TensorRT"):
        rtx_targets(trt, BuildOptions(gpu="hopper"), fp8=False)
    with pytest.raises(BuildError, match="fp8 layers.*SM80, SM86 have none"):
        rtx_targets(trt, BuildOptions(gpu="ampere"), fp8=True)
    with pytest.raises(BuildError, match="unknown GPU generation 'volta'"):
        rtx_targets(trt, BuildOptions(gpu="volta"), fp8=False)
