"""The whole default ``trtq quantize`` job against ONNX Runtime's ``quantize_static``: time and memory.

For each model, in one invocation and each tool in its own process (peak RSS of the process
tree, ``bench/proctree.py``):

* floor: one fp32 inference pass of ONNX Runtime over the calibration samples (batch 8);
* ORT: ``quantize_static`` as people use it for TensorRT (QDQ, symmetric int8, per-channel,
  MinMax), fed the same samples at batch 16;
* trtq: the default ``trtq quantize`` (SmoothQuant, calibration, GPTQ, Q/DQ), then its
  fidelity report on ``--eval`` evaluation samples. "job" is the process's wall time less
  the fidelity evaluation and report-writing stages (from report.json's ``time``; writing the
  reports draws their charts with matplotlib), "eval" those two stages.

Models: EfficientNet-Lite0 (224², the registered model), all-MiniLM-L6-v2 (128 tokens), and
the zoo's fully convolutional text detector (``trtq.models.zoo`` segmenter) at 640² and 1024².

    python bench/job.py                                   # all, 64 calibration samples
    python bench/job.py --models segmenter640,segmenter1024 --samples 64,128 --max-memory 768MB
    python bench/job.py --models efficientnet_lite0,minilm --samples 128 --repeat 3   # medians of 3 rounds
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import run_measured  # noqa: E402
from zoo import ort_child  # noqa: E402

MODELS = ("efficientnet_lite0", "minilm", "segmenter640", "segmenter1024")


def write_model(name: str, samples: int, n_eval: int, work: Path) -> tuple[Path, Path, Path]:
    """``NAME.onnx`` (fp32), calibration and evaluation ``.npz`` files in ``work``."""
    import onnx

    onnx_path = work / f"{name}.onnx"
    calib, evald = work / f"{name}.calib{samples}.npz", work / f"{name}.eval.npz"
    if name == "efficientnet_lite0":
        from trtq.models import images
        from trtq.models.registry import EFFICIENTNET_PREPROCESS
        from trtq.pipeline.job import QuantizeJob
        from trtq.pipeline.source import resolve_source

        def prep(crops):
            return {"images": np.stack([EFFICIENTNET_PREPROCESS.apply(c) for c in crops])}

        if not onnx_path.is_file():
            onnx.save(resolve_source(QuantizeJob(model=name, progress=False, samples=8, eval_samples=8)).model,
                      onnx_path)
        data = prep(images.calibration_crops(samples)), prep(images.evaluation_crops(n_eval))
    elif name == "minilm":
        from trtq.models.text import minilm_dir, other_sentences, sentences
        from trtq.pipeline.job import QuantizeJob
        from trtq.pipeline.source import resolve_source
        from trtq.quantize.hf import load_tokenizer, tokenize

        if not onnx_path.is_file():
            onnx.save(resolve_source(QuantizeJob(hf=minilm_dir(), progress=False, samples=8, eval_samples=8)).model,
                      onnx_path)
        tok = load_tokenizer(minilm_dir())
        data = tokenize(tok, sentences(samples)), tokenize(tok, other_sentences(n_eval))
    else:
        from trtq.models import synthetic
        from trtq.models.zoo import ZOO

        side = int(name.removeprefix("segmenter"))
        if not onnx_path.is_file():
            onnx.save(ZOO["segmenter"].build(), onnx_path)
        data = ({"image": synthetic.scenes(samples, 0, side, side)[0]},
                {"image": synthetic.scenes(n_eval, 1, side, side)[0]})
    np.savez(calib, **data[0])
    np.savez(evald, **data[1])
    return onnx_path, calib, evald


def floor_child(model_path: str, calib_path: str) -> None:
    """One fp32 pass of ONNX Runtime over the samples, batch 8."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    with np.load(calib_path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    n = len(next(iter(data.values())))
    for i in range(0, n, 8):
        session.run(None, {k: v[i:i + 8] for k, v in data.items()})


def _writing_seconds(log: str) -> float:
    """The "writing" stage's seconds from the job's last line of stage times (report.json is
    written inside that stage, so it cannot hold it)."""
    match = re.search(r"writing ([0-9.]+) s", Path(log).read_text())
    return float(match.group(1)) if match else 0.0


def _median(rows: list[dict]) -> dict:
    out = {"rc": 0}
    for key in ("seconds", "job", "eval", "rss_mb", "time_ratio", "rss_ratio"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = float(np.median(values)) if values else None
    return out


def _row(name: str, samples: int, tool: str, r: dict) -> str:
    ratio = (f"{r['time_ratio']:8.2f} {r['rss_ratio']:8.2f}" if r.get("time_ratio") is not None
             else f"{'':8} {'':8}")
    status = "" if r["rc"] == 0 else f"  (exit {r['rc']}, see {r['log']})"
    ev = f"{r['eval']:7.1f}" if r.get("eval") is not None else f"{'-':>7}"
    return (f"{name:20} {samples:7d} {tool:18} {r['seconds']:7.1f} {r['job']:7.1f} {ev} "
            f"{r['rss_mb']:7.0f} {ratio}{status}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)} [all]")
    ap.add_argument("--samples", default="64", help="calibration sample counts, comma-separated [64]")
    ap.add_argument("--eval", type=int, default=32, help="evaluation samples of trtq's fidelity report [32]")
    ap.add_argument("--max-memory", help="trtq's --max-memory (default: trtq's default)")
    ap.add_argument("--keep", type=Path, help="keep models, data and logs in this folder")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds, each running the three in turn; then the median of each column, the ratios "
                         "taken within each round (on a shared 2-core machine one run moves by +-15%%) [1]")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="trtq-job-"))
    work.mkdir(parents=True, exist_ok=True)
    trtq = str(Path(sys.executable).parent / "trtq")
    header = (f"{'model':20} {'samples':>7} {'tool':18} {'wall s':>7} {'job s':>7} {'eval s':>7} {'RSS MB':>7} "
              f"{'time/ORT':>8} {'RSS/ORT':>8}")
    print(header + "\n" + "-" * len(header), flush=True)
    results = []
    for name in args.models.split(","):
        for samples in (int(s) for s in args.samples.split(",")):
            model, calib, evald = write_model(name, samples, args.eval, work)
            tag = f"{name}.{samples}"
            out = work / tag
            cmd = [trtq, "quantize", "--onnx", str(model), "--calib-data", str(calib), "--eval-data", str(evald),
                   "--samples", str(samples), "--eval-samples", str(args.eval), "--no-progress", "--out", str(out)]
            if args.max_memory:
                cmd += ["--max-memory", args.max_memory]
            runs = {
                "fp32 pass (floor)": [sys.executable, __file__, "--floor-child", str(model), str(calib)],
                "ORT quantize_static": [sys.executable, __file__, "--ort-child", str(model), str(calib),
                                        str(work / f"{tag}.ort.onnx")],
                "trtq quantize": cmd,
            }
            rounds = []
            for round_ in range(args.repeat):
                rows = {}
                for tool, command in runs.items():
                    r = run_measured(command, work / f"{tag}.{tool.split()[0]}.log")
                    r["job"], r["eval"] = r["seconds"], None
                    report = out / "report.json"
                    if tool.startswith("trtq") and r["rc"] == 0 and report.is_file():
                        stages = {s["stage"]: s["seconds"] for s in json.loads(report.read_text())["time"]["stages"]}
                        r["eval"] = stages.get("fidelity evaluation", 0.0) + _writing_seconds(r["log"])
                        r["job"] = r["seconds"] - r["eval"]
                    ort = rows.get("ORT quantize_static")
                    if ort and ort["rc"] == 0 and tool != "ORT quantize_static":
                        r["time_ratio"], r["rss_ratio"] = r["job"] / ort["seconds"], r["rss_mb"] / ort["rss_mb"]
                    rows[tool] = r
                    label = tool if args.repeat == 1 else f"{tool[:14]} #{round_ + 1}"
                    print(_row(name, samples, label, r), flush=True)
                    results.append({"model": name, "samples": samples, "tool": tool, "round": round_ + 1, **r})
                rounds.append(rows)
            if args.repeat > 1:  # the median of each column over the rounds; ratios within each round
                for tool in runs:
                    done = [rows[tool] for rows in rounds if rows[tool]["rc"] == 0]
                    if done:
                        print(_row(name, samples, f"{tool[:11]} median", _median(done)), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"\nlogs and models: {work}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--ort-child":
        ort_child(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "--floor-child":
        floor_child(*sys.argv[2:])
    else:
        main()
