"""``--target-runtime ort-cpu`` on EfficientNet-Lite0: fidelity and latency on this CPU.

For each int8 model: top-1 agreement and logit cosine with fp32 on the held-out crops,
once with Q/DQ simulated in float and once with ONNX Runtime's fused integer kernels
(what a CPU deployment runs), and the median latency at batch 1 and 8 next to fp32's,
measured in the same run with the rounds interleaved (``--repeat`` rounds, the median of
each model's per-round medians).

Rows: fp32; ONNX Runtime's quantize_static configured for its CPU kernels (uint8
activations, int8 per-channel weights, reduce_range as this CPU needs) and configured
TensorRT-style (symmetric int8); trtq TensorRT-style; trtq ``ort-cpu`` (and, on a CPU
with VNNI, with the 7-bit weights a CPU without VNNI gets). trtq rows use
minmax calibration and GPTQ weight rounding, as ``trtq quantize`` does by default.

    python bench/ort_cpu.py [--repeat 5] [--iterations 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixed_precision import efficientnet  # noqa: E402  (the same data as the other benches)
from ort_peer import ort_quantize_static  # noqa: E402


def trtq_int8(model, calib, runtime: str, reduce_range: bool | None = None):
    from trtq.calibration import calibrate
    from trtq.quantize import calibration_tensors, quantize
    from trtq.quantize.rounding import gptq_weights, substitute_weights
    from trtq.quantize.targets import QuantTarget

    target = QuantTarget.parse(runtime, reduce_range)
    table = calibrate(model, calib, "minmax", batch_size=16, tensors=calibration_tensors(model, target),
                      progress=False)
    rounded = substitute_weights(model, gptq_weights(model, calib, qmax=target.weight_qmax, progress=False).weights)
    return quantize(rounded, table, target=target, force=True)  # same activations: the table applies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--iterations", type=int, default=30, help="timed calls per model, batch and round")
    args = ap.parse_args()

    from trtq.deploy import OrtRunner, QdqMode, compare_outputs, run_all
    from trtq.deploy.benchmark import benchmark
    from trtq.quantize.targets import needs_reduce_range

    reduce_range = needs_reduce_range()
    model, calib, held_out = efficientnet()
    rows = {
        "fp32": model,
        "onnxruntime quantize_static, CPU config": ort_quantize_static(model, calib, for_cpu=True,
                                                                       reduce_range=reduce_range),
        "onnxruntime quantize_static, symmetric": ort_quantize_static(model, calib),
        "trtq --target-runtime tensorrt": trtq_int8(model, calib, "tensorrt"),
        "trtq --target-runtime ort-cpu": trtq_int8(model, calib, "ort-cpu"),
    }
    if not reduce_range:  # what a CPU without VNNI gets (run here with VNNI: no saturation to show)
        rows["trtq --target-runtime ort-cpu --reduce-range"] = trtq_int8(model, calib, "ort-cpu", True)
    ref = run_all(OrtRunner(model), held_out, batch_size=32)
    fidelity = {}
    for label, m in rows.items():
        if label == "fp32":
            continue
        fidelity[label] = [compare_outputs(ref, run_all(OrtRunner(m, mode=mode), held_out, batch_size=32),
                                           tasks={"*": "classifier"}).outputs[0] for mode in (QdqMode.FLOAT, QdqMode.ORT_INT8)]
    runners = {label: OrtRunner(m, mode=QdqMode.ORT_INT8, name=label) for label, m in rows.items()}
    p50 = {(label, b): [] for label in rows for b in (1, 8)}
    for _ in range(args.repeat):
        for batch in (1, 8):
            for label, runner in runners.items():
                p50[label, batch].append(benchmark(runner, batch, args.iterations, warmup=3).latency_ms["p50"])
    ms = {k: statistics.median(v) for k, v in p50.items()}

    print(f"EfficientNet-Lite0, {len(held_out['images'])} held-out crops; this CPU "
          f"{'lacks' if reduce_range else 'has'} VNNI (reduce_range={reduce_range}); latency: ONNX Runtime "
          f"CPU, integer kernels, median of {args.repeat} interleaved rounds x {args.iterations} calls")
    print(f"{'model':42s} {'top1 float':>10s} {'top1 fused':>10s} {'gap':>6s} {'cos fused':>9s} "
          f"{'b1 ms':>6s} {'vs fp32':>7s} {'b8 ms':>6s} {'vs fp32':>7s}")
    for label in rows:
        if label == "fp32":
            cols = f"{'-':>10s} {'-':>10s} {'-':>6s} {'-':>9s}"
        else:
            sim, fused = fidelity[label]
            cols = (f"{sim.top1:10.1%} {fused.top1:10.1%} {100 * (fused.top1 - sim.top1):+6.1f} "
                    f"{fused.cosine:9.4f}")
        print(f"{label:42s} {cols} {ms[label, 1]:6.2f} {ms[label, 1] / ms['fp32', 1]:6.2f}x "
              f"{ms[label, 8]:6.1f} {ms[label, 8] / ms['fp32', 8]:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
