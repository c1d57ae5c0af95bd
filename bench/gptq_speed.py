"""GPTQ statistics and rounding on EfficientNet-Lite0: this tree against an earlier commit's.

Both run ``gptq_weights`` on the same BatchNorm-folded model (as the default job prepares it)
and the same 64 calibration crops; the earlier version is read from git (``--baseline``) and
imported beside the current one. Prints each one's statistics and rounding time, and how the
layers' output SQNR on the statistics compares (same fidelity: the README table).

    python bench/gptq_speed.py [--baseline d177b3e] [--samples 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_baseline(commit: str):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:quantize/rounding.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "rounding_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("rounding_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _timed(module, model, data, samples: int) -> tuple[float, float, object]:
    spent = [0.0]
    original = module._round_layer

    def round_layer(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    module._round_layer = round_layer
    t = time.perf_counter()
    result = module.gptq_weights(model, data, samples=samples, progress=False)
    total = time.perf_counter() - t
    module._round_layer = original
    return total - spent[0], spent[0], result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="d177b3e", help="the commit to compare with [d177b3e]")
    ap.add_argument("--samples", type=int, default=64)
    args = ap.parse_args()
    from trtq.pipeline.job import QuantizeJob
    from trtq.pipeline.source import resolve_source
    from trtq.pipeline.stages import prepare_fp32
    from trtq.quantize import rounding

    job = QuantizeJob(progress=False, eval_samples=8)
    source = resolve_source(job)
    model = prepare_fp32(job, source).model
    rows = {}
    for label, module in (("baseline " + args.baseline, _load_baseline(args.baseline)), ("this tree", rounding)):
        stats, rounding_s, result = _timed(module, model, source.calib, args.samples)
        rows[label] = (stats, rounding_s, {r.node: r.sqnr_db for r in result.layers})
        print(f"{label:18} statistics {stats:6.1f} s   rounding {rounding_s:5.1f} s   layers {len(result.layers)}",
              flush=True)
    (base_stats, _, base), (stats, _, now) = rows.values()
    common = sorted(set(base) & set(now))
    gain = [now[k] - base[k] for k in common]
    print(f"statistics {base_stats / stats:.1f}x faster; layer output SQNR (on the statistics) this tree minus "
          f"baseline: median {sorted(gain)[len(gain) // 2]:+.2f} dB, min {min(gain):+.2f}, max {max(gain):+.2f} "
          f"over {len(common)} layers")


if __name__ == "__main__":
    sys.exit(main())
