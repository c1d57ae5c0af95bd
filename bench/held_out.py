"""The reference models' fidelity on evaluation sets that share no source with calibration.

EfficientNet-Lite0 and all-MiniLM-L6-v2 go through the default ``trtq quantize`` job (the
registered model / ``--hf``, as the README runs them) and through ONNX Runtime's
``quantize_static`` (QDQ, symmetric int8, per-channel, MinMax) on the same calibration
samples and the same BatchNorm-folded fp32 model. Both int8 models are then measured
against fp32, Q/DQ executed in float, on:

* EfficientNet-Lite0: trtq's own evaluation crops (the README's set: other crops, calibration
  photos included), crops of the four held-out photos only, and crops of eight other photos
  (scikit-image's greyscale photos, matplotlib's gift pack) with another seed;
* MiniLM: later standard-library docstring sentences (after those the job calibrates and
  evaluates on), and sentences from other modules' docstrings (none in the first pool).

The defaults were chosen on the first set of each; the others are reported, not tuned on.

    python bench/held_out.py [--models efficientnet_lite0,minilm] [--eval 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ort_peer import ort_quantize_static  # noqa: E402


def efficientnet(out: Path, n_eval: int):
    import trtq
    from trtq.models import images
    from trtq.models.registry import EFFICIENTNET_PREPROCESS

    def prep(crops):
        return {"images": np.stack([EFFICIENTNET_PREPROCESS.apply(c) for c in crops])}

    t = time.perf_counter()
    trtq.quantize_model(out, model="efficientnet_lite0", progress=False)
    seconds = time.perf_counter() - t
    sets = {"README crops (256)": prep(images.evaluation_crops(256)),
            f"held-out photos ({n_eval})": prep(images.held_out_crops(n_eval)),
            f"other photos ({n_eval})": prep(images.other_crops(n_eval))}
    return seconds, prep(images.calibration_crops(128)), sets


def minilm(out: Path, n_eval: int):
    import trtq
    from trtq.models.text import minilm_dir, other_sentences, sentences
    from trtq.quantize.hf import load_tokenizer, tokenize

    t = time.perf_counter()
    trtq.quantize_model(out, hf=minilm_dir(), samples=256, eval_samples=256, progress=False)
    seconds = time.perf_counter() - t
    tok = load_tokenizer(minilm_dir())
    sets = {f"later sentences ({n_eval})": tokenize(tok, sentences(n_eval, skip=512)),
            f"other modules ({n_eval})": tokenize(tok, other_sentences(n_eval))}
    return seconds, tokenize(tok, sentences(256)), sets


def main() -> None:
    import onnx

    from trtq.deploy import OrtRunner, compare_outputs, run_all

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet_lite0,minilm")
    ap.add_argument("--eval", type=int, default=300, help="samples per held-out set [300]")
    args = ap.parse_args()
    builders = {"efficientnet_lite0": efficientnet, "minilm": minilm}
    print(f"{'model':18} {'evaluation set':24} {'tool':22} {'top-1 / nbrs':>12} {'cosine':>7} {'SQNR dB':>8}")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "job"
            seconds, calib, sets = builders[name](out, args.eval)
            fp32 = onnx.load(out / "model.fp32.onnx")
            models = {"trtq default": out / "model.int8.onnx", "ORT quantize_static": ort_quantize_static(fp32, calib)}
            tasks = {"*": "classifier"} if name == "efficientnet_lite0" else {"*": "embedding"}
            for label, data in sets.items():
                ref = run_all(OrtRunner(fp32), data, batch_size=32)
                for tool, model in models.items():
                    m = compare_outputs(ref, run_all(OrtRunner(model), data, batch_size=32), tasks=tasks).outputs[0]
                    share = m.top1 if m.top1 is not None else m.neighbours
                    print(f"{name:18} {label:24} {tool:22} {share:12.1%} {m.cosine:7.4f} {m.sqnr_db:8.1f}",
                          flush=True)
            print(f"{name:18} (trtq default job: {seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
