"""EfficientNet-Lite0 and all-MiniLM-L6-v2 at each precision trtq writes, side by side.

Each model goes through the ``trtq quantize`` job (``quantize_model``) once per precision:
all fp16, the default int8 (GPTQ, SmoothQuant), all FP8 E4M3 (amax/448 scales; GPTQ
rounds int8 weights only, so FP8 weights are rounded to nearest) and, for MiniLM, INT4
weight-only on every constant-weight MatMul with the rest in fp16 (blocks of 128 and 32;
GPTQ at 4 bits, and nearest rounding for comparison), and the ladder: ``--target`` with
``--gpu hopper`` (int8 -> fp8 -> fp16 -> fp32 per layer group; EfficientNet-Lite0
``top1>=0.99``, MiniLM ``cosine>=0.998``; "MACs quantized" is int8 + fp8 there, the shares
per precision follow the build column). Every result is measured
against fp32 on evaluation sets that share no source with calibration (held-out photos /
later sentences), Q/DQ executed in float; then TensorRT-RTX builds it (for its default
targets: SM80+, SM89+ with fp8 layers) where it is installed.

    python bench/precisions.py [--models efficientnet_lite0,minilm] [--eval 300] [--no-build] [--only ladder]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: The ladder's target per model (the issue's for EfficientNet-Lite0).
LADDER_TARGETS = {"efficientnet_lite0": "top1>=0.99", "minilm": "cosine>=0.998"}
#: MiniLM's ladder from INT4 weights: the issue's INT4 cosine.
INT4_LADDER_TARGET = "cosine>=0.99"


def variants(name: str):
    """(label, plan, extra job options, the precisions whose MAC share is shown)."""
    from trtq.quantize.precision import Precision, PrecisionPlan

    out = [(p, PrecisionPlan(Precision(p)), {}, (Precision(p),)) for p in ("fp16", "int8", "fp8")]
    if name == "minilm":
        int4 = PrecisionPlan.from_flags("fp16", int4w=["MatMul"])
        out += [("int4w gptq", int4, {}, (Precision.INT4W,)),
                ("int4w nearest", int4, {"gptq": False}, (Precision.INT4W,)),
                ("int4w/32 gptq", int4, {"int4_block": 32}, (Precision.INT4W,)),
                ("int4w/32 near", int4, {"int4_block": 32, "gptq": False}, (Precision.INT4W,))]
    out.append(("ladder hopper", PrecisionPlan(Precision.INT8), {"target": LADDER_TARGETS[name], "gpu": "hopper"},
                (Precision.INT8, Precision.FP8)))
    if name == "minilm":  # the ladder from INT4 weights up: int4w -> int8 -> fp16 -> fp32
        out.append(("ladder int4w/32", PrecisionPlan.from_flags("fp16", int4w=["MatMul"]),
                    {"target": INT4_LADDER_TARGET, "int4_block": 32}, (Precision.INT4W, Precision.INT8)))
    return out


def data(name: str, n_eval: int):
    import numpy as np

    if name == "efficientnet_lite0":
        from trtq.models import images
        from trtq.models.registry import EFFICIENTNET_PREPROCESS

        crops = images.held_out_crops(n_eval)
        return {"model": name}, {"images": np.stack([EFFICIENTNET_PREPROCESS.apply(c) for c in crops])}, \
            {"*": "classifier"}
    from trtq.models.text import minilm_dir, sentences
    from trtq.quantize.hf import load_tokenizer, tokenize

    held = tokenize(load_tokenizer(minilm_dir()), sentences(n_eval, skip=512))
    return {"hf": minilm_dir(), "samples": 256}, held, {"*": "embedding"}


def main() -> None:
    import trtq
    from trtq.deploy import OrtRunner, compare_outputs, run_all
    from trtq.quantize.precision import Precision

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet_lite0,minilm")
    ap.add_argument("--eval", type=int, default=300)
    ap.add_argument("--no-build", action="store_true", help="skip the TensorRT-RTX builds")
    ap.add_argument("--only", help="only the variants whose label contains this (e.g. ladder, int4w)")
    args = ap.parse_args()
    print(f"{'model':18} {'precision':13} {'top-1 / nbrs':>12} {'cosine':>7} {'SQNR dB':>8} {'MACs quantized':>14} "
          f"{'size MB':>8} {'job s':>6}  TensorRT-RTX build")
    for name in args.models.split(","):
        source, held, tasks = data(name, args.eval)
        ref = None
        for label, plan, extra, shown in variants(name):
            if args.only and args.only not in label:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                result = trtq.quantize_model(Path(tmp) / "out", progress=False, plan=plan, **source, **extra)
                seconds = time.perf_counter() - t
                path = result.files.get("mixed") or result.files["int8"]
                if ref is None:
                    ref = run_all(OrtRunner(result.files["fp32"]), held, batch_size=32)
                m = compare_outputs(ref, run_all(OrtRunner(path), held, batch_size=32), tasks=tasks).outputs[0]
                share = m.top1 if m.top1 is not None else m.neighbours
                quantized = sum(result.mixed.mac_share(p) for p in shown if p is not Precision.FP16)
                build = "-" if args.no_build else _build(path, name)
                shares = ""
                if "target" in extra:
                    search = result.quantized.search
                    shares = (f"  [{extra['target']}: {'met' if search.met else 'NOT met'}; MACs "
                              + ", ".join(f"{v:.1%} {k}" for k, v in result.mixed.mac_shares().items())
                              + f"; cost {result.mixed.relative_cost():.2f}x fp16; {len(search.steps)} evaluations]")
                print(f"{name:18} {label:13} {share:12.1%} {m.cosine:7.4f} {m.sqnr_db:8.1f} {quantized:14.1%} "
                      f"{Path(path).stat().st_size / 1e6:8.1f} {seconds:6.0f}  {build}{shares}", flush=True)


def _build(path, name: str) -> str:
    try:
        from trtq.deploy.build import BuildOptions, build_engine

        shapes = {} if name != "minilm" else {k: ((1, 8), (8, 64), (8, 128)) for k in ("input_ids", "attention_mask")}
        built = build_engine(path, BuildOptions(max_batch=8, progress=False, shapes=shapes))
        return f"yes ({', '.join(built.info.compute_capabilities) or built.info.backend})"
    except Exception as exc:  # not installed, or the build failed: say which
        return f"no: {str(exc)[:80]}"


if __name__ == "__main__":
    main()
