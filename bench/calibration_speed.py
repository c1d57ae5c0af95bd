"""Calibration speed and memory: trtq's observers next to ONNX Runtime's calibrators.

Same fp32 EfficientNet-Lite0 (BatchNorm folded), same calibration crops, read lazily in
batches of 8 (so the data set itself never sits in memory), same 2-core machine. Each
measurement runs in a fresh process; time is the whole calibration, from the model file
to the ranges (trtq: ``calibrate``; ORT: ``create_calibrator`` + ``collect_data`` +
``compute_data``), with the libraries imported and the photos decoded before the clock
starts; peak RSS is the process's maximum resident set. The ``floor`` row is one plain fp32
pass of ONNX Runtime over the same batches (crops made inside the clock, as for the tools).
ONNX Runtime calibrates the tensors of the op types trtq quantizes (Conv, Gemm, Add);
trtq calibrates the activations its quantizer needs (``quantize.calibration_tensors``).

    python bench/calibration_speed.py                       # 256 and 1024 samples, every method
                                                            # (ORT's histogram methods: 256 only)
    python bench/calibration_speed.py --samples 256 --methods entropy --ort MinMax --repeat 5

With ``--repeat N`` every measurement runs N times, round-robin (so a slow spell of the
machine hits every tool alike); the table shows the median time and the largest peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 8


def batches(samples: int, input_name: str, batch: int = BATCH):
    import numpy as np

    from trtq.models.images import CALIBRATION_PHOTOS, iter_crops
    from trtq.models.registry import EFFICIENTNET_PREPROCESS

    buf = []
    for crop in iter_crops(samples, 224, CALIBRATION_PHOTOS):
        buf.append(EFFICIENTNET_PREPROCESS.apply(crop))
        if len(buf) == batch:
            yield {input_name: np.stack(buf)}
            buf = []
    if buf:
        yield {input_name: np.stack(buf)}


def child(tool: str, method: str, samples: int, model_path: str) -> dict:
    import onnx
    import onnxruntime  # noqa: F401  (imported before the clock starts, for both tools)

    from trtq.models.images import CALIBRATION_PHOTOS, load_photo

    for name in CALIBRATION_PHOTOS:  # the photos are decoded once (cached), outside the clock
        load_photo(name)

    if tool == "floor":  # one plain fp32 pass over the same batches: no tool calibrates faster
        from trtq.core.runtime import ort_session

        session = ort_session(onnx.load(model_path))
        t = time.perf_counter()
        for batch in batches(samples, "images"):
            session.run(None, batch)
        seconds, count = time.perf_counter() - t, 0
    elif tool == "trtq":  # batches of 8 (trtq's default)
        from trtq.calibration import calibrate
        from trtq.quantize import calibration_tensors

        model = onnx.load(model_path)
        tensors = calibration_tensors(model)
        t = time.perf_counter()
        table = calibrate(model, batches(samples, "images"), method, tensors=tensors, progress=False)
        seconds, count = time.perf_counter() - t, len(table)
    else:
        from ort_peer import ort_calibrate

        per_call = 1 if tool == "ort1" else BATCH
        seconds, ranges = ort_calibrate(model_path, ["Conv", "Gemm", "Add"], method,
                                        batches(samples, "images", per_call))
        count = len(ranges.data)
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "tensors": count}


def measure(tool: str, method: str, samples: int, model_path: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", tool, method, str(samples), model_path],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:100]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(results: list[dict]) -> dict:
    """Median time and largest peak RSS of repeated runs (the first error, if any run failed)."""
    import statistics

    failed = [r for r in results if "error" in r]
    if failed:
        return failed[0]
    return {"seconds": statistics.median(r["seconds"] for r in results),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results), "tensors": results[0]["tensors"],
            "spread": (min(r["seconds"] for r in results), max(r["seconds"] for r in results))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--methods", nargs="+", default=["minmax", "percentile", "entropy", "mse", "auto"])
    ap.add_argument("--ort", nargs="+", default=["MinMax", "Percentile", "Entropy"],
                    help="ONNX Runtime calibration methods to run (the baseline is MinMax)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median time is shown")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        tool, method, samples, model_path = args.child
        print(json.dumps(child(tool, method, int(samples), model_path)))
        return

    import onnx

    from trtq.models import get_model_spec
    from trtq.quantize import export, fold_batchnorm

    spec = get_model_spec("efficientnet_lite0")
    with tempfile.TemporaryDirectory() as tmp:
        model_path = str(Path(tmp) / "fp32.onnx")
        proto, _ = export(spec.factory(pretrained=True), spec.calibration_data(2), input_name="images",
                          output_name="logits")
        onnx.save(fold_batchnorm(proto), model_path)
        print(f"EfficientNet-Lite0, batches of {BATCH}, {os.cpu_count()} cores")
        print("ort: ONNX Runtime fed batches of 8 like trtq; ort1: fed one sample per get_next(), as in "
              "ONNX Runtime's calibration examples")
        print(f"{'samples':>7} {'tool':5} {'method':10} {'tensors':>7} {'time s':>7} {'vs ort MinMax':>13} "
              f"{'vs ort1 MinMax':>13} {'peak RSS MB':>11} {'min-max s':>11}")
        for samples in args.samples:
            # ONNX Runtime's histogram methods keep every activation: ~16 GB at 256 samples here.
            ort_methods = [m for m in args.ort if m == "MinMax" or samples <= 256]
            for m in sorted(set(args.ort) - set(ort_methods)):
                print(f"{samples:7d} ort   {m:10} skipped: keeps every activation in memory (~16 GB at 256)")
            configs = ([("floor", "fp32 pass")] + [("ort", m) for m in ort_methods] + [("ort1", "MinMax")]
                       + [("trtq", m) for m in args.methods])
            runs = {c: [] for c in configs}
            for _ in range(args.repeat):
                for tool, method in configs:
                    runs[(tool, method)].append(measure(tool, method, samples, model_path))
            rows = [(tool, method, _summary(runs[(tool, method)])) for tool, method in configs]
            base = next((r for t, m, r in rows if t == "ort" and m == "MinMax" and "seconds" in r), None)
            base1 = next((r for t, m, r in rows if t == "ort1" and "seconds" in r), None)
            for tool, method, r in rows:
                if "error" in r:
                    print(f"{samples:7d} {tool:5} {method:10} failed: {r['error']}")
                    continue
                ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base else "-"
                ratio1 = f"{r['seconds'] / base1['seconds']:.2f}x" if base1 else "-"
                print(f"{samples:7d} {tool:5} {method:10} {r['tensors']:7d} {r['seconds']:7.1f} {ratio:>13} "
                      f"{ratio1:>13} {r['peak_rss_mb']:11.0f} {'%.1f-%.1f' % r['spread']:>11}", flush=True)


if __name__ == "__main__":
    main()
