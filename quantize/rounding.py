"""Error-compensating weight rounding (GPTQ) for int8 weights.

Rounding each weight to the nearest int8 level ignores what the layer computes. GPTQ
(Frantar et al., 2022) quantizes a layer's weight columns one at a time and spreads each
column's rounding error over the columns not yet quantized, weighted by the inverse of
``H = X^T X`` (``X``: the layer's inputs on calibration data), which minimizes the layer's
output error ``||(W - Q) X||`` far better than nearest rounding. The per-output-channel
scales stay those of :func:`quantize.qdq.weight_params` (``max|w| / qmax``); only which int8
level each weight gets changes, so the result is still plain TensorRT-style int8.

:func:`gptq_weights` returns, per layer, a float weight lying exactly on its int8 grid
(``q * scale``, each channel's largest weight kept at ``±qmax``), so quantizing it
reproduces the chosen levels exactly. :func:`substitute_weights` puts them into a model for
the layers that run in int8 (``apply_plan(..., weights=...)`` does it for the plan's int8
nodes, so fp16/fp32 layers keep their original weights); calibrate the original model.
Layers: dense Conv (any kernel; ``X`` = im2col patches), depthwise Conv (one small ``H`` per
channel), Gemm and 2-D constant-weight MatMul. Others keep nearest rounding.
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

from trtq.core.onnx_model import input_specs, load_model
from trtq.core.progress import progress_bar
from trtq.core.budget import MemoryBudget, current_budget, sample_shapes, select
from trtq.core.readers import collect_arrays, static_batch_size
from trtq.core.threads import run_ahead
from trtq.quantize.graph import GraphIndex, copy_model, float_session, get_attr, remove_unused_initializers
from trtq.quantize.hessian import (DEPTHWISE_POSITIONS, MIN_ROWS, POSITIONS, GptqStatistics, _Layer,  # noqa: F401
                                   _patch_bytes, _patches, _positions)
from trtq.quantize.qdq import QMAX
from trtq.core.errors import QuantizationError
from trtq.quantize.results import RoundedWeights

log = logging.getLogger(__name__)

#: Relative damping added to H's diagonal (GPTQ's default): keeps the inverse stable.
DAMP = 0.01
#: Columns per lazy-update block in the GPTQ loop (exact at any size: only the order of the
#: updates changes). 32 rather than GPTQ's 128: the per-column rank-1 updates inside a block are
#: NumPy calls over the rest of the block, the block-to-block update is one BLAS product; on
#: all-MiniLM-L6-v2 the loop took 5.4 s at 128, 4.2 s at 32, with identical layer SQNRs.
BLOCK = 32
#: INT4 block scales tried below ``amax / 7`` (a clipped block's largest weights saturate,
#: the rest get finer levels): per block and output, the one with the least output error.
CLIP_FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


@dataclass(frozen=True)
class RoundedLayer:
    node: str
    rows: int  # input rows H was built from
    sqnr_nearest_db: float  # the layer's int8-weight output SQNR with nearest rounding (on H)
    sqnr_db: float  # ... with GPTQ rounding

    def to_json(self) -> dict:
        return {"node": self.node, "rows": self.rows, "sqnr_nearest_db": round(self.sqnr_nearest_db, 2),
                "sqnr_db": round(self.sqnr_db, 2)}


# --- the GPTQ core --------------------------------------------------------------------------

def _lower_inverse(m: np.ndarray) -> np.ndarray:
    """Inverses of lower-triangular ``m`` ``[P, n, n]``, by halves: ``[[A, 0], [C, B]]^-1 =
    [[A^-1, 0], [-B^-1 C A^-1, B^-1]]``. The products are BLAS calls; a triangular
    inverse is a sixth of the work of NumPy's general one (0.25 -> 0.10 s at n = 1536)."""
    n = m.shape[-1]
    if n <= 128:
        return np.linalg.inv(m)
    k = n // 2
    a, b = _lower_inverse(m[:, :k, :k]), _lower_inverse(m[:, k:, k:])
    out = np.zeros_like(m)
    out[:, :k, :k], out[:, k:, k:] = a, b
    out[:, k:, :k] = -(b @ m[:, k:, :k]) @ a
    return out


def gptq_levels(w: np.ndarray, h: np.ndarray, scale: np.ndarray, qmax: int = QMAX, damp: float = DAMP,
                act_order: bool = False) -> np.ndarray:
    """Integer levels for ``P`` independent problems: ``w`` ``[P, O, D]`` (rows: output
    channels, columns: inputs), ``h`` ``[P, D, D]`` (``X^T X``), ``scale`` ``[P, O]`` (per
    channel) or ``[P, O, D]`` (a scale per weight: block-wise INT4, blocks expanded).

    Columns are quantized in order; each one's error, divided by the Cholesky factor of
    ``H^-1``, is subtracted from the remaining columns (GPTQ, Algorithm 1, without blocks).
    ``act_order``: in order of decreasing ``H`` diagonal instead (the inputs with the most
    energy first, while the most columns are left to absorb their error); the scales stay
    those given, so blocks keep their scale.
    """
    if act_order:
        perm = np.argsort(-np.einsum("pii->pi", h), axis=1, kind="stable")  # [P, D]
        cols = perm[:, None, :]
        hp = np.take_along_axis(np.take_along_axis(h, perm[:, :, None], axis=1), cols, axis=2)
        sp = np.take_along_axis(scale, cols, axis=2) if scale.ndim == 3 else scale
        q = gptq_levels(np.take_along_axis(w, cols, axis=2), hp, sp, qmax, damp)
        return np.take_along_axis(q, np.argsort(perm, axis=1)[:, None, :], axis=2)
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    p, o, d = w.shape
    diag = np.einsum("pii->pi", h)
    dead = diag <= 0
    h[:, np.arange(d), np.arange(d)] += np.where(dead, 1.0, 0.0)
    w[np.broadcast_to(dead[:, None, :], w.shape)] = 0.0
    mean = np.einsum("pii->pi", h).mean(axis=1)
    h[:, np.arange(d), np.arange(d)] += damp * mean[:, None]
    # H^-1 = U^T U with U upper: with J the reversal, J H J = M M^T (M lower) gives
    # U = J M^-1 J: a Cholesky of H and a triangular inverse, not an inverse of H and a
    # Cholesky of that.
    upper = _lower_inverse(np.linalg.cholesky(h[:, ::-1, ::-1]))[:, ::-1, ::-1]
    s = np.where(scale > 0, scale, 1.0).astype(np.float64)
    # Columns first ([P, D, O]): each step reads and updates whole contiguous columns (the
    # same arithmetic as on [P, O, D], 20-40% less time on MiniLM's layers).
    wt = np.ascontiguousarray(w.transpose(0, 2, 1))
    st = np.ascontiguousarray(s.transpose(0, 2, 1)) if s.ndim == 3 else None
    qt = np.empty(wt.shape, np.float64)
    for start in range(0, d, BLOCK):  # GPTQ's lazy batch updates: the same result, less memory traffic
        end = min(start + BLOCK, d)
        block = wt[:, start:end, :].copy()
        errors = np.empty_like(block)
        u = upper[:, start:end, start:end]
        for i in range(end - start):
            col = block[:, i, :]
            si = st[:, start + i, :] if st is not None else s
            qi = np.clip(np.rint(col / si), -qmax, qmax)
            qt[:, start + i, :] = qi
            err = (col - qi * si) / u[:, i, i][:, None]
            block[:, i + 1:, :] -= u[:, i, i + 1:, None] * err[:, None, :]
            errors[:, i, :] = err
        if end < d:
            wt[:, end:, :] -= upper[:, start:end, end:].transpose(0, 2, 1) @ errors
    return qt.transpose(0, 2, 1)


def output_sqnr_db(w: np.ndarray, levels: np.ndarray, scale: np.ndarray, h: np.ndarray) -> float:
    """``10 log10(tr(W H W^T) / tr(E H E^T))`` with ``E = W - levels * scale``, over all problems."""
    return _sqnr_db(w, [levels * (scale if scale.ndim == w.ndim else scale[..., None])], h)[0]


def _sqnr_db(w: np.ndarray, approximations: Sequence[np.ndarray], h: np.ndarray) -> list[float]:
    """:func:`output_sqnr_db` of each approximation of ``w`` (dequantized weights), the signal
    computed once. The products run in float32: the value decides between roundings several
    dB apart."""
    h32 = h.astype(np.float32)

    def energy(x: np.ndarray) -> float:  # H is symmetric: tr(X H X^T), as BLAS products
        x = x.astype(np.float32)
        return float(np.sum((x @ h32) * x, dtype=np.float64))

    signal = energy(w)
    return [10 * math.log10(max(signal, 1e-30) / max(energy(w - a), 1e-30)) for a in approximations]


# --- layers ---------------------------------------------------------------------------------

def gptq_weights(model: str | os.PathLike | onnx.ModelProto, data: Any, *, samples: int = 64, batch_size: int = 8,
                 qmax: int = QMAX, progress: bool = True, seed: int = 0, block: int | None = None,
                 nodes: Iterable[str] | None = None, budget: MemoryBudget | None = None) -> RoundedWeights[RoundedLayer]:
    """GPTQ-rounded weights of ``model``'s layers (BatchNorm folded), by node name.

    ``data``: calibration inputs; ``samples`` of them build each layer's ``H`` from the
    layer's fp32 inputs. ``qmax``: 127 (TensorRT), 63 for 7-bit weights. Layers with too
    few input rows (see :data:`MIN_ROWS`) or where GPTQ does not beat nearest rounding on
    the statistics are left out. ``block``: block-wise scales along the input dimension
    (INT4 weights: ``qmax=7``, ``block=128``), for MatMul/Gemm layers only; ``nodes``: only
    these layers. ``budget``: the memory the statistics pass may hold (default: the current
    :class:`~trtq.core.budget.MemoryBudget`); the result does not depend on it.
    """
    src = load_model(model)
    statistics = GptqStatistics(src, samples, seed=seed, block=block, nodes=nodes)
    layers = statistics.layers
    if not layers:
        return RoundedWeights()
    specs = input_specs(src)
    static = static_batch_size(specs)
    batch_size = static or batch_size  # a fixed batch dim wins
    feed = collect_arrays(data, specs, batch_size, samples)
    # A transformer's padded positions stay (unlike in calibration and SmoothQuant): their
    # queries attend to the sentence's tokens, and their rows give the wide MLP layers the
    # MIN_ROWS per column GPTQ needs (64 sentences cut to their tokens fall short of that).
    tensors = list(statistics.tensors)
    n = len(next(iter(feed.values())))
    statistics.samples = statistics.until = n
    # Within the memory budget: the layer inputs fetched per run (groups of tensors, the model
    # run once per group) and the samples per run (the batch in slices). Positions are drawn
    # per layer and batch, so neither changes the statistics.
    budget = budget or current_budget()
    shapes = sample_shapes(feed)
    sizes = budget.tensor_bytes(src, shapes)
    fetched = select(sizes, tensors)
    groups = budget.groups(fetched)
    per_sample = (budget.ort_bytes(sizes) + 2 * max(sum(fetched[t] for t in grp) for grp in groups)
                  + max(_patch_bytes(layer, fetched[layer.node.input[0]]) for layer in layers))
    rows = static or budget.rows(per_sample, batch_size)
    sessions = [float_session(src, grp) for grp in groups]
    runs = [(start, first, k) for start in range(0, n, batch_size)
            for first in range(start, min(start + batch_size, n), rows) for k in range(len(groups))]

    def run(item) -> tuple:
        start, first, k = item
        stop = min(first + rows, start + batch_size, n)
        values = sessions[k].run(groups[k], {name: v[first:stop] for name, v in feed.items()})
        return start, first, k, stop - first, dict(zip(groups[k], values))

    # The model runs ahead (in a thread) while the previous run is folded into the layers'
    # statistics.
    with progress_bar("GPTQ statistics", n, enabled=progress) as bar:
        for start, first, k, count, values in run_ahead(iter(runs), run):
            statistics.update(first, count, values)
            if k == len(groups) - 1:
                bar.advance(count)
            del values
    return _round_layers(src, statistics.finish(), qmax, block, progress)


def gptq_from_statistics(model: str | os.PathLike | onnx.ModelProto, statistics: GptqStatistics, *,
                         qmax: int = QMAX, progress: bool = True) -> RoundedWeights[RoundedLayer]:
    """:func:`gptq_weights` from statistics gathered elsewhere (a tap of the calibration run)
    on a model ``model`` was made from by SmoothQuant: the same nodes, a layer reading ``X / s``
    (a ``Mul`` by ``1 / s`` of the tensor the statistics saw) with weights ``s W``. Its ``H`` is
    then ``diag(1/s) H diag(1/s)``, exactly the ``H`` of its own input."""
    src = load_model(model)
    g = GraphIndex(src.graph)
    nodes = {n.name: n for n in src.graph.node}
    layers = []
    for layer in statistics.finish():
        node = nodes.get(layer.node.name)
        if node is None:
            raise QuantizationError(f"GPTQ statistics name a layer '{layer.node.name}' this model lacks")
        w = g.constant(node.input[1])
        if layer.kind == "gemm":
            m = w if (node.op_type == "Gemm" and get_attr(node, "transB", 0)) else w.T
            matrix, h = m[None], layer.h
            if node.input[0] != layer.node.input[0]:  # smoothed: node reads X * (1 / s)
                mul = g.producer.get(node.input[0])
                inv = None if mul is None or mul.op_type != "Mul" or mul.input[0] != layer.node.input[0] \
                    else g.constant(mul.input[1])
                if inv is None:
                    raise QuantizationError(f"'{node.name}' reads '{node.input[0]}', not a rescaling of the "
                                            f"tensor '{layer.node.input[0]}' the GPTQ statistics saw")
                inv = inv.astype(np.float64).reshape(-1)
                h = h * inv[None, :, None] * inv[None, None, :]
        else:
            matrix, h = w.reshape(layer.matrix.shape), layer.h
            if node.input[0] != layer.node.input[0]:
                raise QuantizationError(f"'{node.name}' reads another tensor than the GPTQ statistics saw")
        layers.append(dataclasses.replace(layer, node=node, matrix=matrix, h=h))
    return _round_layers(src, layers, qmax, None, progress)


def _round_layers(src: onnx.ModelProto, layers: list, qmax: int, block: int | None,
                  progress: bool) -> RoundedWeights[RoundedLayer]:
    g = GraphIndex(src.graph)
    weights, report = {}, []
    with progress_bar("GPTQ rounding", len(layers), unit="layers", enabled=progress) as bar:
        for layer in layers:
            done = _round_layer(g, layer, qmax, block)
            if done is None:
                log.info("GPTQ: %s keeps nearest rounding (%d input rows for %d columns)", layer.node.name,
                         layer.rows, layer.matrix.shape[2])
            else:
                weights[layer.node.name], row = done
                report.append(row)
            bar.advance(1)
    log.info("GPTQ: %d of %d layers rounded", len(weights), len(layers))
    return RoundedWeights(weights, tuple(report))


def substitute_weights(model: onnx.ModelProto, weights: Mapping[str, np.ndarray],
                       nodes: Iterable[str] | None = None, *, inplace: bool = False) -> onnx.ModelProto:
    """A copy of ``model`` with ``weights[node]`` as the weight (input 1) of each named node
    (only those in ``nodes``, when given); ``inplace=True`` edits and returns ``model`` itself."""
    out = model if inplace else copy_model(model)
    g = GraphIndex(out.graph)
    wanted = None if nodes is None else set(nodes)
    for node in out.graph.node:
        if node.name in weights and (wanted is None or node.name in wanted):
            old = g.constant(node.input[1])
            if old is None or old.shape != weights[node.name].shape:
                raise QuantizationError(f"GPTQ weights for '{node.name}' do not fit this model; recompute them")
            node.input[1] = g.add_initializer(f"{node.input[1]}_gptq", weights[node.name].astype(np.float32))
    remove_unused_initializers(out.graph)
    return out


def _clip_factors(w: np.ndarray, h: np.ndarray, scale: np.ndarray, size: int, qmax: int) -> np.ndarray:
    """Per block and output: the factor of :data:`CLIP_FACTORS` (applied to ``amax / qmax``)
    whose nearest rounding has the least ``e^T H_bb e`` on the block's own inputs, expanded
    to ``[P, O, D]``."""
    p, o, d = w.shape
    nb = -(-d // size)
    pad = nb * size - d
    hb = np.zeros((p, nb * size, nb * size))
    hb[:, :d, :d] = h
    hb = hb.reshape(p, nb, size, nb, size)[:, np.arange(nb), :, np.arange(nb), :]  # [nb, P, size, size]
    best = np.full((p, o, nb), np.inf)
    choice = np.ones((p, o, nb))
    for c in CLIP_FACTORS:
        e = w - np.clip(np.rint(w / (scale * c)), -qmax, qmax) * scale * c
        e = np.pad(e, ((0, 0), (0, 0), (0, pad))).reshape(p, o, nb, size)
        err = np.einsum("pobi,bpij,pobj->pob", e, hb, e)
        better = err < best
        best = np.where(better, err, best)
        choice = np.where(better, c, choice)
    return np.repeat(choice, size, axis=2)[..., :d]


def _round_layer(g: GraphIndex, layer: _Layer, qmax: int,
                 block: int | None = None) -> tuple[np.ndarray, RoundedLayer] | None:
    node, w = layer.node, layer.matrix.astype(np.float64)
    if layer.rows < MIN_ROWS * w.shape[2]:
        return None
    d = w.shape[2]
    size = block or d  # one block of all inputs: a scale per output channel
    nb = -(-d // size)
    padded = np.zeros((*w.shape[:2], nb * size))
    padded[..., :d] = np.abs(w)
    amax = padded.reshape(*w.shape[:2], nb, size).max(axis=3)  # [P, O, blocks]
    scale = np.repeat(np.where(amax > 0, amax / qmax, 1.0), size, axis=2)[..., :d]  # [P, O, D]
    h = layer.h / max(layer.rows, 1)
    nearest = np.clip(np.rint(w / scale), -qmax, qmax)
    base = scale
    if block is not None:
        scale = scale * _clip_factors(w, h, scale, size, qmax)
    # Block-wise INT4 in act order (+0.5 dB on MiniLM, cosine 0.9848 -> 0.9867 at block 32);
    # int8 in input order (act order moved held-out top-1 by -1.4 to +1.4 points, nothing clear).
    levels = gptq_levels(w, h, scale, qmax, act_order=block is not None)
    # Keep each block's largest weight at +-qmax, so the scale recomputed from the rounded
    # weights is this scale and quantizing them gives these levels exactly.
    blocks = np.moveaxis(padded.reshape(*w.shape[:2], nb, size), 2, 0)  # [nb, P, O, size]
    for b in range(nb):
        top = b * size + blocks[b].argmax(axis=2)
        pp, oo = np.meshgrid(np.arange(w.shape[0]), np.arange(w.shape[1]), indexing="ij")
        levels[pp, oo, top] = np.sign(w[pp, oo, top]) * qmax
    before, after = _sqnr_db(w, [nearest * base, levels * scale], h)
    if after <= before:  # never worse than nearest rounding on the statistics
        return None
    rounded = levels * scale
    original = g.constant(node.input[1])
    if layer.kind == "gemm":
        value = rounded[0] if (node.op_type == "Gemm" and get_attr(node, "transB", 0)) else rounded[0].T
    else:
        value = rounded.reshape(original.shape)
    return value.astype(np.float32), RoundedLayer(node.name, layer.rows, before, after)


__all__ = ["MIN_ROWS", "GptqStatistics", "RoundedLayer", "gptq_from_statistics", "gptq_levels", "gptq_weights",
           "output_sqnr_db", "substitute_weights"]
