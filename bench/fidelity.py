"""Fidelity of trtq's int8 model next to ONNX Runtime's quantizer, same model, same data.

Both quantize the same BatchNorm-folded fp32 EfficientNet-Lite0 with TensorRT-style
settings (QDQ format, symmetric int8 activations and weights, per-channel weights,
MinMax calibration on the same crops); both are evaluated on the same held-out crops with
the Q/DQ nodes executed in float (what TensorRT computes). Prints a table with ratios.

    python bench/fidelity.py [--calib 128] [--eval 256]
"""

from __future__ import annotations

import argparse
import time

from trtq.calibration import calibrate
from trtq.deploy import OrtRunner, compare_outputs, run_all
from trtq.models import get_model_spec
from trtq.quantize import export, fold_batchnorm, quantize
from trtq.quantize.bias_correction import correct_bias

from ort_peer import ort_quantize_static


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--eval", type=int, default=256)
    args = ap.parse_args()
    spec = get_model_spec("efficientnet_lite0")
    calib, evald = spec.calibration_data(args.calib), spec.evaluation_data(args.eval)
    fp32, _ = export(spec.factory(pretrained=True), calib[:8], input_name="images", output_name="logits")
    fp32 = fold_batchnorm(fp32)
    rows = []
    ref = run_all(OrtRunner(fp32), evald)
    t = time.perf_counter()
    int8 = quantize(fp32, calibrate(fp32, calib, "minmax", progress=False))
    rows.append(("trtq (minmax)", time.perf_counter() - t, int8))
    base_seconds = rows[-1][1]
    t = time.perf_counter()
    corrected = correct_bias(fp32, int8, calib, samples=64, progress=False).model
    rows.append(("trtq (minmax + bias correction)", base_seconds + time.perf_counter() - t, corrected))
    t = time.perf_counter()
    ort_int8 = ort_quantize_static(fp32, {"images": calib})
    rows.append(("onnxruntime quantize_static (MinMax)", time.perf_counter() - t, ort_int8))
    results = []
    for name, seconds, model in rows:
        m = compare_outputs(ref, run_all(OrtRunner(model), evald)).outputs[0]
        results.append((name, seconds, m))
    base = results[2][2]
    print(f"EfficientNet-Lite0, {args.calib} calibration crops, {args.eval} held-out crops, Q/DQ run in float")
    print(f"{'tool':40s} {'top-1 agree':>11s} {'vs ORT':>7s} {'cosine':>7s} {'SQNR dB':>8s} {'time s':>7s}")
    for name, seconds, m in results:
        print(f"{name:40s} {m.top1:11.1%} {m.top1 / base.top1:6.2f}x {m.cosine:7.4f} {m.sqnr_db:8.1f} {seconds:7.1f}")


if __name__ == "__main__":
    main()
