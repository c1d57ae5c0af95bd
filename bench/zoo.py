"""The model zoo (``trtq.models.zoo``) through three quantizers, each in its own process.

For every zoo model: ONNX Runtime's ``quantize_static`` as people use it for TensorRT (QDQ,
symmetric int8, per-channel weights, MinMax), the default ``trtq quantize``, and ``trtq
quantize --target`` on the model's task metric. All three calibrate on the same samples
(seed 0); ``--target`` searches on the evaluation set (seed 1); every int8 model is then
measured against fp32 on a check set (seed 2) that no tool saw, with Q/DQ executed in float
(TensorRT's arithmetic). Time is the wall time of the whole tool process (trtq's includes its
own fidelity report); peak RSS is that of the tool's process tree (``bench/proctree.py``).

    python bench/zoo.py                      # all models, 128 samples per set
    python bench/zoo.py --models recognizer,segmenter --samples 256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import run_measured  # noqa: E402

#: --target per task metric: stricter than the defaults reach on most models, so the search works.
TARGETS = {"top1": "top1>=0.99", "sequence": "sequence>=0.99", "mask_iou": "mask_iou>=0.99"}
#: --variants: the default job with one choice changed, to see which defaults hold across the zoo.
VARIANTS = {"--no-gptq": ["--no-gptq"], "--no-smoothquant": ["--no-smoothquant"],
            "--bias-correction": ["--bias-correction"], "--method entropy": ["--method", "entropy"],
            "--method percentile": ["--method", "percentile"], "--method mse": ["--method", "mse"],
            "--method auto": ["--method", "auto"], "--layer-clipping": ["--layer-clipping"]}


def ort_child(model_path: str, calib_path: str, out_path: str) -> None:
    """ONNX Runtime's quantize_static, fed at the batch the model accepts (a static batch of 1 too)."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    model = onnx.load(model_path)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch = dim.dim_value if dim.HasField("dim_value") else 16
    with np.load(calib_path, allow_pickle=False) as z:
        calib = {k: z[k] for k in z.files}
    n = len(next(iter(calib.values())))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{k: v[i:i + batch] for k, v in calib.items()} for i in range(0, n - batch + 1, batch)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(model_path, out_path, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


def task_metric(fp32: Path, int8: Path, check: Path, metric: str) -> tuple[float | None, float, float]:
    """The task metric of the first output, the lowest mean cosine over all outputs and the
    first output's SQNR (dB)."""
    from trtq.deploy import compare

    report = compare(fp32, int8, check, mode="qdq-float")
    first = report.outputs[0]
    return getattr(first, metric), min(o.cosine for o in report.outputs), first.sqnr_db


def _row(r: dict) -> str:
    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    shown = ("failed" if r["rc"] else "invalid" if r["error"]
             else fmt(r["value"], ".4f" if r["metric"] == "mask_iou" else ".1%"))
    return (f"{r['model']:14} {r['tool']:22} {r['metric']:9} {shown:>7} {fmt(r['min_cosine'], '.4f'):>8} "
            f"{fmt(r['sqnr_db'], '.1f'):>7} {fmt(r['int8_mac_share'], '.1%'):>9} {r['seconds']:7.1f} "
            f"{r['rss_mb']:7.0f}" + (f"  ({r['error'][:90]})" if r["error"] else ""))


def main() -> None:
    from trtq.models.zoo import ZOO, write_zoo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo names [all]")
    ap.add_argument("--samples", type=int, default=128, help="samples per data set [128]")
    ap.add_argument("--no-target", action="store_true", help="skip the --target runs")
    ap.add_argument("--variants", action="store_true",
                    help="also run the default job with one option changed (" + ", ".join(VARIANTS) + ")")
    ap.add_argument("--keep", type=Path, help="keep models, data and logs in this folder (and reuse the models "
                    "and data found there)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    names = tuple(args.models.split(","))
    trtq = str(Path(sys.executable).parent / "trtq")
    work = args.keep or Path(tempfile.mkdtemp(prefix="trtq-zoo-"))
    t = time.perf_counter()
    sets = ("calib", "eval", "check")
    files = {n: {"onnx": work / f"{n}.onnx", **{k: work / f"{n}.{k}.npz" for k in sets}} for n in names}
    if not (args.keep and all(p.is_file() for f in files.values() for p in f.values())):
        files = write_zoo(work, names, args.samples, sets=sets)  # (a kept folder from an earlier run is reused)
    print(f"zoo built and trained in {time.perf_counter() - t:.0f} s; {args.samples} samples per set; "
          f"metrics on the check set (seed 2)\n", flush=True)
    header = (f"{'model':14} {'tool':22} {'metric':9} {'value':>7} {'min cos':>8} {'SQNR dB':>7} {'int8 MACs':>9} "
              f"{'time s':>7} {'RSS MB':>7}")
    print(header + "\n" + "-" * len(header), flush=True)
    results = []
    for name in names:
        spec, f = ZOO[name], files[name]
        runs = {"ort quantize_static": (str(work / f"{name}.ort.onnx"), [
            sys.executable, __file__, "--ort-child", str(f["onnx"]), str(f["calib"]), str(work / f"{name}.ort.onnx")])}
        base = [trtq, "quantize", "--onnx", str(f["onnx"]), "--calib-data", str(f["calib"]), "--eval-data",
                str(f["eval"]), "--samples", str(args.samples), "--eval-samples", str(args.samples), "--no-progress"]
        runs["trtq default"] = (str(work / name / "default" / "model.int8.onnx"),
                                base + ["--out", str(work / name / "default")])
        for label, extra in (VARIANTS.items() if args.variants else ()):
            folder = work / name / label.strip("-").replace(" ", "_")
            runs[f"trtq {label}"] = (str(folder / "model.int8.onnx"), base + ["--out", str(folder), *extra])
        if not args.no_target:
            target = TARGETS[spec.metric]
            runs[f"trtq {target}"] = (str(work / name / "target" / "model.mixed.onnx"),
                                      base + ["--out", str(work / name / "target"), "--target", target])
        for tool, (out, cmd) in runs.items():
            r = run_measured(cmd, work / f"{name}.{tool.replace(' ', '_').replace('>=', '_')}.log")
            value = cosine = sqnr = share = error = None
            if r["rc"] == 0:
                try:
                    value, cosine, sqnr = task_metric(f["onnx"], Path(out), f["check"], spec.metric)
                except Exception as exc:  # the tool wrote something that does not load or run: say so
                    error = f"{type(exc).__name__}: {exc}"
                report = Path(out).parent / "report.json"
                if report.is_file():
                    share = json.loads(report.read_text())["precision"]["int8_mac_share"]
            results.append({"model": name, "tool": tool, "metric": spec.metric, "value": value,
                            "min_cosine": cosine, "sqnr_db": sqnr, "int8_mac_share": share, "error": error, **r})
            print(_row(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"\nlogs and models: {work}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--ort-child":
        ort_child(*sys.argv[2:])
    else:
        main()
