"""int8 fidelity of trtq, each algorithm on and off, next to ONNX Runtime's quantizer.

Both reference models, the same data for every row, every model run the same way (ONNX
Runtime, Q/DQ executed in float: what TensorRT computes), TensorRT-style int8 throughout
(symmetric, zero point 0, per-channel weights, no fp16 layers):

* EfficientNet-Lite0: 128 calibration crops, 256 held-out crops; top-1 agreement with
  fp32, mean logit cosine, SQNR.
* all-MiniLM-L6-v2 (``pip install -e '.[hf]'``): 256 calibration sentences, 256 held-out
  sentences; mean and minimum embedding cosine, nearest-neighbour retrieval agreement.

ONNX Runtime's row is ``quantize_static`` (QDQ, MinMax, symmetric int8 activations and
weights, per-channel, its default op types), on the same calibration data.

    python bench/accuracy.py [--models efficientnet_lite0 minilm]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixed_precision import efficientnet, minilm  # noqa: E402  (the same data as that bench)
from ort_peer import ort_quantize_static  # noqa: E402


def trtq_variants(model, calib, smoothquant: bool, bias_correction: bool, linear_only: bool = False,
                  clipping: bool = False, equalize: bool = False, gptq: bool = False):
    from trtq.calibration import calibrate
    from trtq.quantize import calibration_tensors, quantize
    from trtq.quantize.bias_correction import correct_bias
    from trtq.quantize.clipping import refine_clipping
    from trtq.quantize.equalize import equalize as equalize_pairs
    from trtq.quantize.rounding import substitute_weights, gptq_weights
    from trtq.quantize.smoothquant import linear_groups, smooth_quant

    base = smooth_quant(model, calib, samples=256, progress=False).model if smoothquant else model
    if equalize:
        base = equalize_pairs(base, calib, progress=False).model
    table = calibrate(base, calib, "minmax", batch_size=16, tensors=calibration_tensors(base), progress=False)
    if clipping:
        table = refine_clipping(base, table, calib, progress=False).table
    nodes = [n.name for group in linear_groups(base).values() for n in group] if linear_only else None
    rounded = substitute_weights(base, gptq_weights(base, calib, progress=False).weights) if gptq else base
    int8 = quantize(rounded, table, nodes=nodes, force=gptq)  # same activations: the table applies
    if bias_correction:
        int8 = correct_bias(base, int8, calib, samples=64, batch_size=16, progress=False).model
    return int8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "minilm"],
                    choices=["efficientnet_lite0", "minilm"])
    args = ap.parse_args()

    from trtq.deploy import OrtRunner, compare_outputs, run_all
    from trtq.deploy.compare import neighbour_agreement

    for name in args.models:
        model, calib, held_out = efficientnet() if name == "efficientnet_lite0" else minilm(held_out=256)
        classifier = name == "efficientnet_lite0"
        ref = run_all(OrtRunner(model), held_out, batch_size=32)
        out_name = next(iter(ref))
        rows = [("onnxruntime quantize_static (MinMax)", lambda: ort_quantize_static(model, calib))]
        for sq, bc in ((False, False), (True, False), (False, True), (True, True)):
            if bc and not classifier:
                continue  # no Conv/Gemm biases in the exported transformer: nothing to correct
            label = "trtq minmax" + (" + SmoothQuant" if sq else "") + (" + bias correction" if bc else "")
            rows.append((label, lambda sq=sq, bc=bc: trtq_variants(model, calib, sq, bc)))
        rows.append(("trtq + SmoothQuant + GPTQ", lambda: trtq_variants(model, calib, True, False, gptq=True)))
        if classifier:
            rows.append(("trtq + SmoothQuant + GPTQ + bias correction",
                         lambda: trtq_variants(model, calib, True, True, gptq=True)))
            rows.append(("trtq + cross-layer equalization", lambda: trtq_variants(model, calib, True, False,
                                                                                 equalize=True)))
            rows.append(("trtq + cross-layer equalization + bias correction",
                         lambda: trtq_variants(model, calib, True, True, equalize=True)))
        rows.append(("trtq + SmoothQuant" + (" + bias correction" if classifier else "") + " + layer clipping",
                     lambda: trtq_variants(model, calib, True, classifier, clipping=True)))
        if not classifier:
            rows.append(("trtq + SmoothQuant, linear layers only",
                         lambda: trtq_variants(model, calib, True, False, linear_only=True)))
        print(f"\n{name}: {len(next(iter(held_out.values())))} held-out samples, TensorRT-style int8, Q/DQ in float")
        if classifier:
            print(f"{'variant':52s} {'top-1 agree':>11s} {'cosine':>7s} {'SQNR dB':>8s} {'time s':>7s}")
        else:
            print(f"{'variant':52s} {'cosine':>7s} {'min cos':>7s} {'retrieval':>9s} {'SQNR dB':>8s} {'time s':>7s}")
        for label, make in rows:
            t = time.perf_counter()
            int8 = make()
            seconds = time.perf_counter() - t
            out = run_all(OrtRunner(int8), held_out, batch_size=32)
            m = compare_outputs(ref, out, tasks={"*": "classifier" if classifier else "embedding"}).outputs[0]
            if classifier:
                print(f"{label:52s} {m.top1:11.1%} {m.cosine:7.4f} {m.sqnr_db:8.1f} {seconds:7.1f}", flush=True)
            else:
                nn = neighbour_agreement(ref[out_name], out[out_name])
                print(f"{label:52s} {m.cosine:7.4f} {m.min_cosine:7.4f} {nn:9.1%} {m.sqnr_db:8.1f} {seconds:7.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
