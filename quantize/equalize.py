"""Cross-layer equalization (CLE) for depthwise-separable CNNs.

In a depthwise-separable block the activation between two convolutions (``conv1 -> ReLU6
-> conv2``) has channels whose ranges differ by orders of magnitude, and one per-tensor
int8 scale leaves the small channels a few levels. For a positive per-channel factor
``s``::

    conv2(act(conv1(x))) = (s * W2)(act_s((W1 / s) x + b1 / s))

is the same function: ``conv1``'s output channel ``c`` (weights and bias) is divided by
``s_c``, ``conv2``'s input channel ``c`` multiplied by it, and the activation in between
follows (ReLU commutes with a positive scale; ``Clip(0, M)`` becomes ``Min(ReLU(x), M / s)``
with a per-channel bound, which is why the function stays exact).

Weights are quantized per output channel, so dividing ``conv1``'s output channels costs
nothing, and neither does scaling a *depthwise* ``conv2`` (its input channel is its output
channel); for a dense ``conv2`` the scaling changes its per-output-channel ranges. So the
factors are chosen SmoothQuant-style, ``s_c = r_c^alpha / w_c^(1 - alpha)`` (``r_c``: the
channel's calibrated range, ``w_c``: ``conv2``'s weight range on that input channel),
normalized so the tensor's largest channel keeps its range; ``alpha = 1`` equalizes the
activation channels fully. ``alpha`` is chosen **per pair** by the int8 output error of
``conv2`` (symmetric int8 activation per tensor, weights per output channel), with the
factors and range from the even-numbered calibration samples and the error measured on
odd-numbered ones; leaving the pair alone is always a candidate.

TensorRT-style output only: ORT's CPU kernels cannot fold the per-channel ``Min`` into a
QuantizeLinear, so ``--target-runtime ort-cpu`` does not use it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from trtq.core.onnx_model import input_specs, load_model
from trtq.core.progress import progress_bar
from trtq.core.budget import current_budget, run_sliced
from trtq.core.readers import collect_arrays, fit_batch_size
from trtq.quantize.graph import GraphIndex, copy_model, float_session, get_attr, remove_unused_initializers
from trtq.quantize.qdq import fake_quantize
from trtq.core.errors import QuantizationError, require
from trtq.quantize.results import Transformed
from trtq.core.runtime import ort_session

log = logging.getLogger(__name__)

#: Candidate strengths; ``None`` (leave the pair alone) is always tried too.
DEFAULT_ALPHAS = (0.5, 0.75, 1.0)
#: No channel is scaled by more than this (either way): keeps weights and fp16 regions sane.
MAX_FACTOR = 64.0
_FLOOR = 1e-6


@dataclass(frozen=True)
class ConvPair:
    """``conv1 -> [act] -> conv2``: ``tensor`` is conv2's input, ``depthwise`` its kind."""

    conv1: str
    act: str | None
    conv2: str
    tensor: str
    depthwise: bool


@dataclass(frozen=True)
class EqualizedPair:
    pair: ConvPair
    alpha: float | None  # None: left alone
    sqnr_before_db: float  # conv2's local int8 output SQNR without equalization
    sqnr_after_db: float  # ... with the chosen alpha

    def to_json(self) -> dict:
        return {"conv1": self.pair.conv1, "conv2": self.pair.conv2, "tensor": self.pair.tensor,
                "depthwise": self.pair.depthwise, "alpha": self.alpha,
                "sqnr_before_db": round(self.sqnr_before_db, 2), "sqnr_after_db": round(self.sqnr_after_db, 2)}


def _clip_bounds(node: onnx.NodeProto, g: GraphIndex) -> tuple[float | None, float | None] | None:
    """``(min, max)`` of a Clip with constant bounds (attribute or input form), else ``None``."""
    lo, hi = get_attr(node, "min"), get_attr(node, "max")
    for i, name in ((1, "min"), (2, "max")):
        if len(node.input) > i and node.input[i]:
            value = g.constant(node.input[i])
            if value is None:
                return None
            if name == "min":
                lo = float(value)
            else:
                hi = float(value)
    return lo, hi


def conv_pairs(model: onnx.ModelProto) -> list[ConvPair]:
    """Every ``Conv -> [Relu | Clip(0, M)] -> Conv`` chain CLE can rescale exactly: constant
    4-D weights, no other reader of the intermediate tensors, conv2 dense or depthwise."""
    g = GraphIndex(model.graph)
    pairs = []
    for conv2 in model.graph.node:
        if conv2.op_type != "Conv":
            continue
        w2 = g.constant(conv2.input[1])
        x = conv2.input[0]
        if w2 is None or w2.ndim != 4 or len(g.consumers[x]) != 1 or x in g.graph_outputs:
            continue
        producer, act = g.producer.get(x), None
        if producer is not None and producer.op_type in ("Relu", "Clip"):
            if producer.op_type == "Clip":
                bounds = _clip_bounds(producer, g)
                if bounds is None or bounds[0] != 0.0:
                    continue
            act, y = producer, producer.input[0]
            if len(g.consumers[y]) != 1 or y in g.graph_outputs:
                continue
            producer = g.producer.get(y)
        if producer is None or producer.op_type != "Conv":
            continue
        w1 = g.constant(producer.input[1])
        if w1 is None or w1.ndim != 4 or any(g.constant(i) is None for i in producer.input[2:3]):
            continue
        channels, group2 = w1.shape[0], get_attr(conv2, "group", 1)
        if group2 == 1 and w2.shape[1] == channels:
            depthwise = False
        elif group2 == channels and w2.shape[1] == 1 and w2.shape[0] % channels == 0:
            depthwise = True
        else:
            continue
        pairs.append(ConvPair(producer.name, act.name if act is not None else None, conv2.name, x, depthwise))
    return pairs


def input_channel_ranges(w2: np.ndarray, depthwise: bool, channels: int) -> np.ndarray:
    """``max |W2|`` over everything that multiplies input channel ``c``."""
    a = np.abs(w2.astype(np.float64))
    if depthwise:
        return a.reshape(channels, -1).max(axis=1)
    return a.transpose(1, 0, 2, 3).reshape(channels, -1).max(axis=1)


def equalization_factors(ranges: np.ndarray, w_ranges: np.ndarray, alpha: float) -> np.ndarray:
    """``s_c = r_c^alpha / w_c^(1 - alpha)``, normalized so ``max(r / s) == max(r)``, clamped."""
    r = np.maximum(ranges, _FLOOR)
    s = r ** alpha / np.maximum(w_ranges, _FLOOR) ** (1 - alpha)
    s *= (r / s).max() / r.max()
    return np.clip(s, 1 / MAX_FACTOR, MAX_FACTOR)


def _scale_w2(w2: np.ndarray, s: np.ndarray, depthwise: bool) -> np.ndarray:
    if depthwise:
        return w2 * np.repeat(s, w2.shape[0] // len(s))[:, None, None, None]
    return w2 * s[None, :, None, None]


class _Conv2:
    """conv2 alone, in ONNX Runtime: inputs and weights fed, for scoring candidates."""

    def __init__(self, node: onnx.NodeProto, bias: np.ndarray | None) -> None:
        ort = require("onnxruntime", "cpu")

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        conv = helper.make_node("Conv", ["x", "w"] + (["b"] if bias is not None else []), ["y"], **attrs)
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "w")]
        if bias is not None:
            inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, None))
        graph = helper.make_graph([conv], "conv2", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort_session(model, opts)
        self.bias = bias

    def __call__(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        feed = {"x": x.astype(np.float32), "w": w.astype(np.float32)}
        if self.bias is not None:
            feed["b"] = self.bias.astype(np.float32)
        return self.session.run(["y"], feed)[0].astype(np.float64)


def pair_error(conv2: "_Conv2", x: np.ndarray, w2: np.ndarray, ranges: np.ndarray, s: np.ndarray,
               depthwise: bool, reference: np.ndarray) -> float:
    """Relative squared error of conv2's int8 output ``conv(Q(x / s), Q(s * W2))`` vs fp32."""
    shape = (1, -1, 1, 1)
    xq = fake_quantize((x / s.reshape(shape)).astype(np.float32), float((ranges / s).max()))
    ws = _scale_w2(w2.astype(np.float64), s, depthwise).astype(np.float32)
    wq = fake_quantize(ws, np.abs(ws).reshape(len(ws), -1).max(axis=1).reshape(-1, 1, 1, 1))
    y = conv2(xq, wq)
    if depthwise:  # each output channel is one input channel's: weigh every channel alike
        per_channel = ((y - reference) ** 2).mean(axis=(0, 2, 3)) / np.maximum((reference ** 2).mean(axis=(0, 2, 3)), 1e-30)
        return float(per_channel.mean())
    return float(((y - reference) ** 2).mean() / max((reference ** 2).mean(), 1e-30))


def _db(err: float) -> float:
    return 10 * math.log10(1 / max(err, 1e-30))


def _statistics(model: onnx.ModelProto, tensors: list[str], feed: dict[str, np.ndarray], batch_size: int,
                keep: int, progress: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per tensor: channel ``max|x|`` over the even-numbered samples, and up to ``keep``
    odd-numbered samples kept whole (to score on)."""
    session = float_session(model, tensors)
    n = len(next(iter(feed.values())))
    per_run = current_budget().rows_for(model, feed, tensors)  # samples per run, within the budget
    even: dict[str, np.ndarray] = {}
    odd: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    kept = 0
    with progress_bar("equalization statistics", n, enabled=progress) as bar:
        for i in range(0, n, batch_size):
            batch = {k: v[i:i + batch_size] for k, v in feed.items()}
            values = run_sliced(lambda f: session.run(tensors, f), batch, per_run)
            count = len(values[0])
            parity = (np.arange(count) + i) % 2
            take = np.flatnonzero(parity == 1)[:max(keep - kept, 0)]
            for t, v in zip(tensors, values):
                v = np.asarray(v, np.float32)
                m = np.abs(v[parity == 0]).max(axis=(0, 2, 3)) if (parity == 0).any() else None
                if m is not None:
                    even[t] = m if t not in even else np.maximum(even[t], m)
                if len(take):
                    odd[t].append(v[take])
            kept += len(take)
            bar.advance(count)
    return even, {t: np.concatenate(v) for t, v in odd.items() if v}


def equalize(model: str | os.PathLike | onnx.ModelProto, data: Any, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
             samples: int = 64, keep: int = 4, batch_size: int = 8,
             progress: bool = True) -> Transformed[EqualizedPair]:
    """An fp32 copy of ``model`` with cross-layer equalization where it lowers int8 error.

    ``model`` should have BatchNorm folded (the pairs are Conv -> Conv). ``samples``
    calibration inputs: even-numbered ones give the channel ranges, ``keep`` odd-numbered
    ones score each candidate. Returns the model and one :class:`EqualizedPair` per pair
    (including the ones left alone); models without such pairs come back unchanged.
    """
    src = load_model(model)
    out = copy_model(src)
    pairs = conv_pairs(out)
    if not pairs:
        return Transformed(out)
    batch_size = fit_batch_size(input_specs(src), batch_size)  # a fixed batch dim wins
    feed = collect_arrays(data, input_specs(src), batch_size, samples)
    if not feed or len(next(iter(feed.values()))) < 2:
        raise QuantizationError("cross-layer equalization needs at least 2 calibration samples")
    ranges, held_out = _statistics(src, [p.tensor for p in pairs], feed, batch_size, keep, progress)
    g = GraphIndex(out.graph)
    nodes = {n.name: n for n in out.graph.node}
    report, clips = [], []
    for pair in pairs:
        conv1, conv2 = nodes[pair.conv1], nodes[pair.conv2]
        w1, w2 = g.constant(conv1.input[1]), g.constant(conv2.input[1])
        b2 = g.constant(conv2.input[2]) if len(conv2.input) > 2 and conv2.input[2] else None
        r, x = ranges[pair.tensor], held_out.get(pair.tensor)
        w_ranges = input_channel_ranges(w2, pair.depthwise, w1.shape[0])
        alpha, before, after, best = None, float("nan"), float("nan"), None
        if x is not None and r.max() > 0:
            run = _Conv2(conv2, b2)
            reference = run(x, w2)
            base = pair_error(run, x, w2, r, np.ones_like(r), pair.depthwise, reference)
            best_err = base
            for a in alphas:
                s = equalization_factors(r, w_ranges, a)
                err = pair_error(run, x, w2, r, s, pair.depthwise, reference)
                if err < best_err:
                    alpha, best_err, best = a, err, s
            before, after = _db(base), _db(best_err)
        report.append(EqualizedPair(pair, alpha, before, after))
        if best is not None:
            _apply(g, conv1, conv2, best, pair.depthwise)
            act = nodes.get(pair.act) if pair.act else None
            if act is not None and act.op_type == "Clip" and _clip_bounds(act, g)[1] is not None:
                clips.append((act.name, best))
    for name, s in clips:  # node-list edits last: the loop above holds references into it
        _bound_per_channel(g, name, s)
    remove_unused_initializers(out.graph)
    moved = [e for e in report if e.alpha is not None]
    log.info("cross-layer equalization: %d of %d conv pairs rescaled", len(moved), len(report))
    return Transformed(out, tuple(report))


def _apply(g: GraphIndex, conv1: onnx.NodeProto, conv2: onnx.NodeProto, s: np.ndarray, depthwise: bool) -> None:
    """Divide conv1's output channels by ``s`` and multiply conv2's input channels by it."""
    w1 = g.constant(conv1.input[1]).astype(np.float64)
    conv1.input[1] = g.add_initializer(f"{conv1.input[1]}_equalized", (w1 / s[:, None, None, None]).astype(np.float32))
    if len(conv1.input) > 2 and conv1.input[2]:
        b1 = g.constant(conv1.input[2]).astype(np.float64)
        conv1.input[2] = g.add_initializer(f"{conv1.input[2]}_equalized", (b1 / s).astype(np.float32))
    w2 = g.constant(conv2.input[1]).astype(np.float64)
    conv2.input[1] = g.add_initializer(f"{conv2.input[1]}_equalized", _scale_w2(w2, s, depthwise).astype(np.float32))


def _bound_per_channel(g: GraphIndex, clip_name: str, s: np.ndarray) -> None:
    """``Clip(0, M)`` on channels scaled by ``1 / s``: ``Min(Relu(x), M / s)`` (same output name)."""
    graph = g.graph
    index = next(i for i, n in enumerate(graph.node) if n.name == clip_name)
    clip = graph.node[index]
    _, hi = _clip_bounds(clip, g)
    out, source = clip.output[0], clip.input[0]
    relu_out = g.unique(f"{out}_relu")
    bound = g.add_initializer(f"{clip_name}_equalized_max", (hi / s).reshape(-1, 1, 1).astype(np.float32))
    relu = helper.make_node("Relu", [source], [relu_out], name=clip_name)
    cap = helper.make_node("Min", [relu_out, bound], [out], name=g.unique(f"{clip_name}_max"))
    del graph.node[index]
    graph.node.insert(index, cap)
    graph.node.insert(index, relu)


__all__ = ["ConvPair", "DEFAULT_ALPHAS", "EqualizedPair", "conv_pairs", "equalization_factors", "equalize",
           "input_channel_ranges", "pair_error"]
