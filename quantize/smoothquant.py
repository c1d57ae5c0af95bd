"""SmoothQuant: move activation outliers into the weights before int8, layer by layer.

Transformer activations have a few channels with magnitudes far above the rest (here up to
30 on LayerNorm outputs and 25 on GELU outputs of all-MiniLM-L6-v2, most values below 1),
so one per-tensor int8 scale leaves the ordinary channels a handful of levels. For a
linear layer ``Y = X W`` (``W``: ``[in, out]``) and a per-input-channel factor ``s``::

    Y = (X / s) (s W)        s_j = max|X_j|^alpha / max|W_j,:|^(1 - alpha)

is the same function; ``X / s`` has flat channel ranges, and per-output-channel weight
quantization absorbs most of what ``s W`` gains. ``X / s`` is a ``Mul`` inserted in front
of the layers that read ``X`` (other readers of ``X``, such as the residual stream, keep
the original), which TensorRT fuses into the QuantizeLinear that follows it.

``alpha`` is chosen **per layer group** (the layers reading one tensor: Q, K and V share
one factor) on calibration data, by the error it matters for: the relative error of
``Q(X / s) Q(s W)`` against ``X W`` on sampled rows of ``X`` (int8 activations per tensor,
weights per output channel, symmetric, as :mod:`quantize.qdq` writes them). Leaving a
group alone is one of the candidates, so smoothing is applied only where it helps.
Measured on all-MiniLM-L6-v2: LayerNorm-fed groups 23 -> 36 dB, GELU-fed 20-24 -> 29-34 dB.
The rewritten fp32 model computes the same outputs (float rounding aside); calibrate it,
then quantize it.

**INT4 weight-only** (``weight_only=block``, the ``int4w`` layers; activation-aware scaling
as in AWQ): the activations stay in float, so what matters is the error of the 4-bit
weights where the activations are large. The factors are ``s_j = mean|X_j|^alpha`` (channels
the data uses most get finer weight levels), and each group's candidate (``None`` again
included) is scored by the relative error of ``(X / s) Q4(s W)`` against ``X W``, with
``Q4`` the block-wise weights :mod:`quantize.qdq` writes (one scale ``amax / 7`` per block of
``block`` inputs and per output) rounded to nearest; GPTQ then rounds the scaled weights.
The factors are normalized so that ``X / s`` never exceeds ``X``'s own largest magnitude
(the activations run in fp16).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from trtq.calibration.observers import make_observer
from trtq.calibration.table import TensorRange
from trtq.core.onnx_model import input_specs, load_model
from trtq.core.progress import progress_bar
from trtq.core.budget import current_budget, run_sliced
from trtq.core.readers import Padding, by_length, collect_arrays, fit_batch_size
from trtq.quantize.graph import GraphIndex, copy_model, float_session, get_attr, insert_before, remove_unused_initializers
from trtq.quantize.qdq import INT4_QMAX, expand_blocks, fake_quantize, int4_block_scales
from trtq.core.errors import QuantizationError
from trtq.quantize.results import Transformed

log = logging.getLogger(__name__)

#: Candidate migration strengths; ``None`` (leave the group alone) is always tried too.
DEFAULT_ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
#: Candidate strengths of the weight-only (AWQ-style) factors ``mean|X|^alpha``.
WEIGHT_ONLY_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
_FLOOR = 1e-5
#: Activation rows (from the held-out half of the samples) each candidate is scored on. 1024
#: rather than 2048: 6 of all-MiniLM-L6-v2's 24 groups chose a neighbouring alpha, held-out
#: fidelity was the same or better (later sentences 95.3% -> 96.0% neighbours, cosine 0.9969
#: both; other modules 96.3% -> 96.7%, 0.9966 -> 0.9967), and SmoothQuant took 7.2 -> 4.8 s.
SCORED_ROWS = 1024
#: Output columns a candidate's error is measured on, at most (every k-th): the products
#: are most of SmoothQuant's time (MiniLM's Q/K/V group has 1152 outputs, its MLP 1536).
SCORED_COLUMNS = 512


@dataclass(frozen=True)
class SmoothedGroup:
    """One group of linear layers reading ``tensor`` and what smoothing did to it."""

    tensor: str
    nodes: tuple[str, ...]
    alpha: float | None  # None: left alone (no candidate beat it)
    sqnr_before_db: float  # local int8 SQNR of the group's output without smoothing
    sqnr_after_db: float  # ... with the chosen alpha (= before when left alone)
    kind: str = "int8"  # "int8" (SmoothQuant) or "int4w" (weight-only, activation-aware factors)
    smoothed: str | None = None  # the tensor ``X / s`` the group now reads (None: left alone)

    def to_json(self) -> dict:
        return {"tensor": self.tensor, "nodes": list(self.nodes), "alpha": self.alpha, "kind": self.kind,
                "sqnr_before_db": round(self.sqnr_before_db, 2), "sqnr_after_db": round(self.sqnr_after_db, 2)}


def smoothquant_tensors(model: onnx.ModelProto, nodes: Iterable[str] | None = None) -> list[str]:
    """The tensors :func:`smooth_quant` gathers statistics of (its groups' inputs)."""
    groups = linear_groups(model)
    if nodes is None:
        return list(groups)
    wanted = set(nodes)
    return [t for t, members in groups.items() if any(n.name in wanted for n in members)]


def _linear_weight(node: onnx.NodeProto, g: GraphIndex) -> np.ndarray | None:
    """The ``[in, out]`` float32 weight of a MatMul/Gemm whose second input is constant and
    first is not; ``None`` for anything else."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or g.is_constant(node.input[0]):
        return None
    w = g.constant(node.input[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None
    if node.op_type == "Gemm":
        if get_attr(node, "transA", 0):
            return None
        return w.T if get_attr(node, "transB", 0) else w
    return w


def linear_groups(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Linear layers with constant weights, grouped by the activation tensor they read."""
    g = GraphIndex(model.graph)
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if _linear_weight(node, g) is not None:
            groups.setdefault(node.input[0], []).append(node)
    return groups


def _group_error(x: np.ndarray, w: np.ndarray, ref: np.ndarray, ch_max: np.ndarray, s: np.ndarray) -> float:
    """Relative squared error of the int8 group output ``Q(x/s) Q(s w)`` vs ``ref = x w``
    (products in float32, the errors summed in float64: the float32 rounding is four orders
    of magnitude below the int8 error being compared)."""
    s32 = s.astype(np.float32)
    xq = fake_quantize(x / s32, float((ch_max / s).max()))
    ws = w * s32[:, None]
    wq = fake_quantize(ws, np.abs(ws).max(axis=0, keepdims=True))
    return _relative_error(xq @ wq, ref)


def _scored_columns(w: np.ndarray) -> np.ndarray:
    """Every k-th output column of ``w`` (``[in, out]``), at most :data:`SCORED_COLUMNS`: the
    weights are quantized per output column, so a column's error does not depend on the
    others, and the candidates are compared on the same columns (Q, K and V alike)."""
    step = -(-w.shape[1] // SCORED_COLUMNS)
    return np.ascontiguousarray(w[:, ::step]) if step > 1 else w


def _relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """``|out - ref|^2 / |ref|^2``, the squares summed in float64."""
    d = out - ref
    return float(np.einsum("ij,ij->", d, d, dtype=np.float64) / max(np.einsum("ij,ij->", ref, ref, dtype=np.float64), 1e-30))


def _int4_fake(w: np.ndarray, block: int) -> np.ndarray:
    """``w`` (``[in, out]``) as block-wise INT4 weights, dequantized (nearest rounding)."""
    scale = expand_blocks(int4_block_scales(w, 0, block), 0, block, w.shape[0])
    return np.clip(np.rint(w / scale), -INT4_QMAX, INT4_QMAX) * scale


def _weight_only_error(x: np.ndarray, w: np.ndarray, ref: np.ndarray, s: np.ndarray, block: int) -> float:
    """Relative squared error of ``(x / s) Q4(s w)`` vs ``ref = x w`` (activations in float)."""
    s32 = s.astype(np.float32)
    wq = _int4_fake(w * s32[:, None], block).astype(np.float32)
    return _relative_error((x / s32) @ wq, ref)


def weight_only_factors(ch_mean: np.ndarray, ch_max: np.ndarray, alpha: float) -> np.ndarray:
    """``s_j = mean|X_j|^alpha``, scaled so that ``max_j max|X_j| / s_j`` equals ``max|X|``
    (the smoothed activations never grow, which fp16 needs)."""
    s = np.maximum(ch_mean, _FLOOR) ** alpha
    return (s * (np.max(ch_max / s) / max(float(np.max(ch_max)), _FLOOR))).astype(np.float64)


def choose_weight_only_alpha(x: np.ndarray, w: np.ndarray, ch_mean: np.ndarray, ch_max: np.ndarray, block: int,
                             alphas: Sequence[float] = WEIGHT_ONLY_ALPHAS
                             ) -> tuple[float | None, float, float, np.ndarray | None]:
    """:func:`choose_alpha` for INT4 weight-only layers (``block`` inputs per scale)."""
    x, w = x.astype(np.float32), _scored_columns(w.astype(np.float32))
    ref = x @ w
    return _best_alpha(alphas, lambda alpha: weight_only_factors(ch_mean, ch_max, alpha),
                       lambda s: _weight_only_error(x, w, ref, s, block), w.shape[0])


def _best_alpha(alphas: Sequence[float], factors, error, channels: int
                ) -> tuple[float | None, float, float, np.ndarray | None]:
    """The candidate (``None``: factors of 1) with the least ``error(factors(alpha))``:
    ``(alpha, sqnr_before_db, sqnr_after_db, s)``."""
    base = error(np.ones(channels))
    best: tuple[float | None, float, np.ndarray | None] = (None, base, None)
    for alpha in alphas:
        s = factors(alpha)
        err = error(s)
        if err < best[1]:
            best = (alpha, err, s)
    return best[0], _db(base), _db(best[1]), best[2]


def _db(err: float) -> float:
    return 10 * math.log10(1 / max(err, 1e-30))


def smooth_factors(ch_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` (floored, so dead channels stay finite)."""
    return (np.maximum(ch_max, _FLOOR) ** alpha / np.maximum(w_max, _FLOOR) ** (1 - alpha)).astype(np.float64)


def choose_alpha(x: np.ndarray, w: np.ndarray, ch_max: np.ndarray,
                 alphas: Sequence[float] = DEFAULT_ALPHAS) -> tuple[float | None, float, float, np.ndarray | None]:
    """The candidate (``None``: no smoothing) with the least group output error on rows ``x``.

    Returns ``(alpha, sqnr_before_db, sqnr_after_db, s)``.
    """
    x, w, ch_max = x.astype(np.float32), w.astype(np.float32), ch_max.astype(np.float64)
    w_max = np.abs(w).max(axis=1).astype(np.float64)  # the factors: from every output
    w = _scored_columns(w)
    ref = x @ w  # once for every candidate
    return _best_alpha(alphas, lambda alpha: smooth_factors(ch_max, w_max, alpha),
                       lambda s: _group_error(x, w, ref, ch_max, s), w.shape[0])


@dataclass
class _Stats:
    """Per tensor: channel maxima over all samples and over the even-numbered ones (the
    "calibration half"), and rows sampled from the odd-numbered ones (the "held-out half")."""

    ch_max: np.ndarray
    ch_max_even: np.ndarray
    rows_odd: np.ndarray
    ch_mean: np.ndarray  # mean |X_j| over all samples
    ch_mean_even: np.ndarray  # ... over the even-numbered ones
    ch_lo: np.ndarray  # min X_j over all samples (signed): the range of X / s follows from these
    ch_hi: np.ndarray  # max X_j


class SmoothQuantStatistics:
    """What SmoothQuant needs of its groups' input tensors, accumulated batch by batch:
    ``update(first, count, values)`` with ``values[tensor]`` the tensor on ``count`` samples
    that start at position ``first`` of the stream (samples split into even and odd by
    position); :meth:`result` at the end. Fed by SmoothQuant's own pass, or by the
    calibration pass as a tap (``calibrate(..., taps=[...])``): one model run for both."""

    until = None  # every sample of the stream

    def __init__(self, tensors: Sequence[str], samples: int, batch_size: int, rows: int = SCORED_ROWS) -> None:
        self.tensors = tuple(tensors)
        self.rows = rows
        self.per_batch = -(-rows // max(-(-samples // max(batch_size, 1)), 1))  # sampled rows per batch
        self._rng = np.random.default_rng(0)
        self._max: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
        self._even: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
        self._sampled: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
        self._sums: dict[str, list] = {t: [0.0, 0, 0.0, 0] for t in tensors}  # |x| sum and rows: all, even
        self._lo: dict[str, np.ndarray] = {}
        self._hi: dict[str, np.ndarray] = {}

    def update(self, first: int, count: int, values: Mapping[str, np.ndarray]) -> None:
        for t in self.tensors:
            v = np.asarray(values[t], np.float32)
            width = v.shape[-1]
            per_sample = v.ndim >= 2 and v.shape[0] == count  # rows of sample k: v[k]
            if not per_sample:  # no sample axis to split on: alternate rows
                v = v.reshape(-1, width)
            start = first % 2 if per_sample else 0  # where the even-numbered samples start
            flat = v.reshape(-1, width)
            lo, hi = flat.min(axis=0), flat.max(axis=0)
            self._lo[t] = lo if t not in self._lo else np.minimum(self._lo[t], lo)
            self._hi[t] = hi if t not in self._hi else np.maximum(self._hi[t], hi)
            # |x| once; each half (views) reduced once, the whole from the halves.
            magnitude = np.abs(v)
            even_abs, odd_abs = (magnitude[k::2].reshape(-1, width) for k in (start, 1 - start))
            sums = self._sums[t]
            for half, keep in ((even_abs, True), (odd_abs, False)):
                if not len(half):
                    continue
                top, total = half.max(axis=0), half.sum(axis=0, dtype=np.float64)
                self._max[t].append(top)
                sums[0] = sums[0] + total
                sums[1] += len(half)
                if keep:
                    self._even[t].append(top)
                    sums[2] = sums[2] + total
                    sums[3] += len(half)
            odd = v[1 - start::2].reshape(-1, width)
            if len(odd):
                pick = self._rng.choice(len(odd), size=min(self.per_batch, len(odd)), replace=False)
                self._sampled[t].append(odd[np.sort(pick)])

    def result(self) -> dict[str, _Stats]:
        def mean(total, count):
            return np.asarray(total, np.float64) / max(count, 1)

        out = {}
        for t in self.tensors:
            sums, top = self._sums[t], self._max[t]
            rows = np.concatenate(self._sampled[t] or [np.zeros((0, top[0].size), np.float32)])
            if len(rows) > self.rows:  # runs smaller than the batch sampled more: an even subsample of them all
                rows = rows[np.sort(self._rng.choice(len(rows), self.rows, replace=False))]
            out[t] = _Stats(np.max(top, axis=0), np.max(self._even[t] or top, axis=0), rows,
                            mean(*sums[:2]), mean(*sums[2:]) if sums[3] else mean(*sums[:2]),
                            self._lo[t], self._hi[t])
        return out


def _statistics(model: onnx.ModelProto, tensors: list[str], feed: dict[str, np.ndarray], batch_size: int,
                rows: int, progress: bool, padding: Padding | None = None) -> dict[str, _Stats]:
    session = float_session(model, tensors)
    n = len(next(iter(feed.values())))
    per_run = current_budget().rows_for(model, feed, tensors)  # samples per run, within the budget
    stats = SmoothQuantStatistics(tensors, n, batch_size, rows)
    with progress_bar("SmoothQuant statistics", n, enabled=progress) as bar:
        for i in range(0, n, batch_size):
            count = min(batch_size, n - i)
            batch = {k: v[i:i + batch_size] for k, v in feed.items()}
            if padding is not None:
                batch = padding.trim(batch)
            values = run_sliced(lambda f: session.run(tensors, f), batch, per_run)
            stats.update(i, count, dict(zip(tensors, values)))
            bar.advance(count)
    return stats.result()


def smoothed_ranges(model: onnx.ModelProto, records: Sequence[SmoothedGroup], statistics: Mapping[str, _Stats],
                    method: str, samples: int) -> dict[str, TensorRange]:
    """The ranges of the tensors SmoothQuant added (``X / s``, the ``Mul`` outputs), from the
    channel extremes of ``X``: ``min_j min(X_j) / s_j`` and ``max_j max(X_j) / s_j`` (``s > 0``)
    are exactly the minimum and maximum of ``X / s``, so a calibration of the original model
    plus these is a calibration of the smoothed one (float rounding aside, 1e-6 relative).
    ``model``: the smoothed model; ``method``: the calibration method named in the ranges."""
    g = GraphIndex(model.graph)
    out = {}
    for record in records:
        if record.smoothed is None or record.tensor not in statistics:
            continue
        mul = g.producer[record.smoothed]
        inv = g.constant(mul.input[1]).astype(np.float32)
        st = statistics[record.tensor]
        lo, hi = float((st.ch_lo * inv).min()), float((st.ch_hi * inv).max())
        observer = make_observer(method, record.smoothed)  # as calibrate() feeds a min/max observer
        observer.update(np.array([lo, hi], np.float32), first_sample=0, extremes=(lo, hi))
        out[record.smoothed] = dataclasses.replace(observer.compute(), samples=samples)
    return out


def smooth_quant(model: str | os.PathLike | onnx.ModelProto, data: Any, *,
                 alphas: Sequence[float] = DEFAULT_ALPHAS, samples: int = 64, rows: int = SCORED_ROWS,
                 batch_size: int = 16, progress: bool = True, weight_only: int | None = None,
                 nodes: Iterable[str] | None = None,
                 statistics: Mapping[str, _Stats] | None = None) -> Transformed[SmoothedGroup]:
    """An fp32 copy of ``model`` with SmoothQuant applied where it lowers the int8 error.

    ``data``: calibration inputs (any form the readers take); ``samples`` of them give the
    channel maxima and ``rows`` sampled activation rows per group score each candidate.
    ``weight_only``: the INT4 block size; the factors are then chosen for block-wise INT4
    weights with float activations (see the module docstring; ``alphas`` defaults to
    :data:`WEIGHT_ONLY_ALPHAS`). ``nodes``: only these linear layers (e.g. the plan's int4w
    ones); a group is the listed layers reading one tensor. ``statistics``: the groups' input
    statistics already gathered (:class:`SmoothQuantStatistics` as a calibration tap, over
    :func:`smoothquant_tensors`); ``data`` is then not read.
    Returns the model and one :class:`SmoothedGroup` per linear-layer group (including the
    ones left alone). Models without linear layers come back unchanged.
    """
    src = load_model(model)
    out = copy_model(src)
    groups = linear_groups(out)
    if nodes is not None:
        wanted = set(nodes)
        groups = {t: kept for t, members in groups.items() if (kept := [n for n in members if n.name in wanted])}
    if weight_only is not None and alphas is DEFAULT_ALPHAS:
        alphas = WEIGHT_ONLY_ALPHAS
    if not groups:
        return Transformed(out)
    tensors = list(groups)
    if statistics is not None:
        stats = statistics
        missing = [t for t in tensors if t not in stats]
        if missing:
            raise QuantizationError(f"SmoothQuant statistics lack the group input(s) {missing[:3]}")
    else:
        batch_size = fit_batch_size(input_specs(src), batch_size)  # a fixed batch dim wins
        feed = collect_arrays(data, input_specs(src), batch_size, samples)
        if not feed:
            raise QuantizationError("SmoothQuant needs calibration data; none was given")
        feed, padding, _ = by_length(feed, input_specs(src))  # padded token positions are cut batch by batch
        stats = _statistics(src, tensors, feed, batch_size, rows, progress, padding)
    g = GraphIndex(out.graph)
    index = {id(n): i for i, n in enumerate(out.graph.node)}
    inserts: dict[int, list[onnx.NodeProto]] = {}
    report = []
    for tensor, nodes in groups.items():
        weights = [_linear_weight(n, g) for n in nodes]
        w = np.concatenate(weights, axis=1)
        st = stats[tensor]
        if st.ch_max.shape[0] != w.shape[0]:
            raise QuantizationError(f"tensor '{tensor}' has {st.ch_max.shape[0]} channels in its last axis, but "
                                    f"'{nodes[0].name}' expects {w.shape[0]} inputs")
        if len(st.rows_odd):
            # Scored as it will be used: factors and int8 range from one half of the samples,
            # the error on the other half, so a factor that only fits the data it was computed
            # on (and clips new values) loses to leaving the group alone.
            if weight_only is None:
                alpha, before, after, _ = choose_alpha(st.rows_odd, w, st.ch_max_even, alphas)
            else:
                alpha, before, after, _ = choose_weight_only_alpha(st.rows_odd, w, st.ch_mean_even, st.ch_max_even,
                                                                   weight_only, alphas)
        else:
            alpha, before, after = None, float("nan"), float("nan")
        kind = "int8" if weight_only is None else "int4w"
        if alpha is None:
            report.append(SmoothedGroup(tensor, tuple(n.name for n in nodes), alpha, before, after, kind))
            continue
        if weight_only is None:
            s = smooth_factors(st.ch_max, np.abs(w).max(axis=1).astype(np.float64), alpha)
        else:
            s = weight_only_factors(st.ch_mean, st.ch_max, alpha)
        inv = g.add_initializer(f"{tensor}_smooth_scale", (1.0 / s).astype(np.float32))
        smoothed = g.unique(f"{tensor}_smoothed")
        report.append(SmoothedGroup(tensor, tuple(n.name for n in nodes), alpha, before, after, kind, smoothed))
        first = min(index[id(n)] for n in nodes)
        inserts.setdefault(first, []).append(
            helper.make_node("Mul", [tensor, inv], [smoothed], name=g.unique(f"{tensor}_SmoothQuant")))
        for node in nodes:
            b = g.constant(node.input[1]).astype(np.float64)
            transposed = node.op_type == "Gemm" and get_attr(node, "transB", 0)
            scaled = b * (s[None, :] if transposed else s[:, None])
            node.input[0] = smoothed
            node.input[1] = g.add_initializer(f"{node.input[1]}_smoothed", scaled.astype(np.float32))
    insert_before(out.graph, inserts)
    remove_unused_initializers(out.graph)
    moved = [r for r in report if r.alpha is not None]
    log.info("SmoothQuant (%s): %d of %d linear-layer groups smoothed", "int8" if weight_only is None else
             f"int4 weight-only, blocks of {weight_only}", len(moved), len(report))
    return Transformed(out, tuple(report))


__all__ = ["DEFAULT_ALPHAS", "WEIGHT_ONLY_ALPHAS", "SmoothQuantStatistics", "SmoothedGroup", "choose_alpha",
           "choose_weight_only_alpha", "linear_groups", "smooth_factors", "smooth_quant", "smoothed_ranges",
           "smoothquant_tensors", "weight_only_factors"]
