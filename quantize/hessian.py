"""The statistics GPTQ rounds by: each layer's ``H = X^T X`` on calibration inputs.

:class:`GptqStatistics` gathers them batch by batch from the layers' fp32 inputs, whoever
runs the model: :func:`quantize.rounding.gptq_weights` in its own pass, or the calibration
run as a tap (``calibrate(..., taps=[statistics])``, one model run for both). ``X`` is the
layer's input rows (MatMul/Gemm), im2col patches at sampled output positions (dense Conv),
or per-channel patches (depthwise Conv, one small ``H`` per channel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import onnx

from trtq.core.onnx_model import load_model
from trtq.quantize.graph import GraphIndex, get_attr

#: Spatial positions sampled per sample and conv input (im2col rows).
POSITIONS = 256
#: ... for depthwise convs, whose per-channel ``H`` has only ``kh * kw`` columns: 64
#: positions of 64 samples are 4096 rows for at most 25 columns, and a quarter of the time.
DEPTHWISE_POSITIONS = 64
#: Samples that share one draw of positions (per layer): the statistics are the same whatever
#: runs the stream is cut into (GPTQ's own pass: batches of 8).
POSITION_BLOCK = 8
#: MatMul/Gemm input rows gathered before their ``X^T X`` is taken (at most PRODUCT_BYTES of
#: them per layer input).
PRODUCT_ROWS = 4096
PRODUCT_BYTES = 12 << 20
#: A layer needs at least this many input rows per input column (``rows >= MIN_ROWS * D``):
#: fewer, and GPTQ fits the calibration samples rather than the layer (the classifier of
#: EfficientNet-Lite0 sees one row per sample: 64 rows for 1280 columns).
MIN_ROWS = 4


@dataclass
class _Layer:
    node: onnx.NodeProto
    kind: str  # "dense", "depthwise", "gemm"
    matrix: np.ndarray  # [P, O, D]
    h: np.ndarray  # [P, D, D] accumulated
    rows: int = 0
    geometry: tuple | None = None  # convs: kernel, strides, pads, dilations
    pending: list = field(default_factory=list)  # MatMul/Gemm: input rows not yet in h
    hopeless: bool = False  # the samples cannot give it MIN_ROWS rows per column: H is not gathered


def _conv_geometry(node: onnx.NodeProto, w: np.ndarray):
    if get_attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    kh, kw = w.shape[2:]
    pads = list(get_attr(node, "pads", [0, 0, 0, 0]))
    return (kh, kw), list(get_attr(node, "strides", [1, 1])), pads, list(get_attr(node, "dilations", [1, 1]))


def _positions(shape: tuple, geometry, rng: np.random.Generator, most: int = POSITIONS) -> np.ndarray:
    """Up to ``most`` output positions (flat indices, sorted) drawn for one batch."""
    (kh, kw), strides, pads, dil = geometry
    height, width = shape[2:]
    oh = (height + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (width + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // strides[1] + 1
    return np.sort(rng.choice(oh * ow, min(most, oh * ow), replace=False))


def _patches(x: np.ndarray, geometry, idx: np.ndarray) -> np.ndarray:
    """im2col at the output positions ``idx``, laid out for the products that follow:
    ``[C, kh * kw, N * M]``.

    One ``take`` per tap along the flattened spatial axis (padding read as zeros), then one
    transposing copy: no padded copy of the activation, no multi-array fancy indexing (both
    were most of this pass's time).
    """
    (kh, kw), strides, pads, dil = geometry
    n, c, height, width = x.shape
    ow = (width + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // strides[1] + 1
    m = len(idx)
    oy, ox = idx // ow * strides[0] - pads[0], idx % ow * strides[1] - pads[1]
    iy = np.broadcast_to((np.arange(kh) * dil[0])[:, None, None] + oy, (kh, kw, m)).reshape(kh * kw, m)
    ix = np.broadcast_to((np.arange(kw) * dil[1])[None, :, None] + ox, (kh, kw, m)).reshape(kh * kw, m)
    inside = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
    flat = np.clip(iy, 0, height - 1) * width + np.clip(ix, 0, width - 1)
    patches = np.take(x.reshape(n, c, height * width), flat, axis=2)  # [N, C, kk, M]
    if not inside.all():
        patches *= inside
    return np.ascontiguousarray(patches.transpose(1, 2, 0, 3)).reshape(c, kh * kw, n * m)


def _layers(model: onnx.ModelProto, g: GraphIndex) -> list[_Layer]:
    layers = []
    for node in model.graph.node:
        w = g.constant(node.input[1]) if len(node.input) > 1 else None
        if w is None or w.dtype != np.float32 or g.is_constant(node.input[0]):
            continue
        if node.op_type == "Conv" and w.ndim == 4 and _conv_geometry(node, w) is not None:
            group, o = get_attr(node, "group", 1), w.shape[0]
            geometry = _conv_geometry(node, w)
            if group == 1:
                layers.append(_Layer(node, "dense", w.reshape(1, o, -1), np.zeros((1, w[0].size, w[0].size)),
                                     geometry=geometry))
            elif w.shape[1] == 1 and o == group:  # depthwise, multiplier 1
                d = w.shape[2] * w.shape[3]
                layers.append(_Layer(node, "depthwise", w.reshape(o, 1, d), np.zeros((o, d, d)), geometry=geometry))
        elif node.op_type == "Gemm" and w.ndim == 2 and not get_attr(node, "transA", 0):
            m = w if get_attr(node, "transB", 0) else w.T
            layers.append(_Layer(node, "gemm", m[None], np.zeros((1, m.shape[1], m.shape[1]))))
        elif node.op_type == "MatMul" and w.ndim == 2:
            layers.append(_Layer(node, "gemm", w.T[None], np.zeros((1, w.shape[0], w.shape[0]))))
    return layers


def _patch_bytes(layer: _Layer, input_bytes: int) -> int:
    """Bytes per sample of the im2col patches :func:`_patches` builds from this layer's input."""
    if layer.kind == "gemm":
        return 0
    kk = layer.geometry[0][0] * layer.geometry[0][1]
    channels = layer.matrix.shape[0] if layer.kind == "depthwise" else layer.matrix.shape[2] // kk
    most = DEPTHWISE_POSITIONS if layer.kind == "depthwise" else POSITIONS
    return kk * min(input_bytes, channels * most * 4)


def _accumulate(layer: _Layer, x: np.ndarray | None, idx: np.ndarray | None) -> None:
    """Add this batch's ``X^T X`` (float32 products, summed into float64); convs at the
    output positions ``idx``. MatMul/Gemm rows are gathered until there are
    :data:`PRODUCT_ROWS` of them (or :data:`PRODUCT_BYTES`), then multiplied at once: a product
    of a few hundred rows (short sentences) costs almost what a thousand do. ``x=None``
    flushes what is gathered."""
    if layer.kind == "gemm":
        if x is not None:
            rows = x.astype(np.float32, copy=False).reshape(-1, x.shape[-1])
            layer.pending.append(rows)
            layer.rows += len(rows)
        gathered = sum(len(r) for r in layer.pending)
        width = layer.h.shape[1]
        if gathered and (x is None or gathered >= PRODUCT_ROWS or gathered * width * 4 >= PRODUCT_BYTES):
            rows = layer.pending[0] if len(layer.pending) == 1 else np.concatenate(layer.pending)
            layer.pending.clear()
            layer.h[0] += rows.T @ rows  # NumPy multiplies a matrix by its own transpose with SYRK
        return
    if x is None:
        return  # convs add each batch at once
    x = x.astype(np.float32, copy=False)
    patches = _patches(x, layer.geometry, idx)  # [C, kk, rows]
    c, kk, rows = patches.shape
    if layer.kind == "dense":  # one BLAS product over all channels and taps
        flat = patches.reshape(c * kk, rows)
        layer.h[0] += flat @ flat.T
    else:  # depthwise: a [kk, kk] product per channel
        layer.h += patches @ patches.transpose(0, 2, 1)
    layer.rows += rows


def _hopeless(layer: _Layer, x: np.ndarray, idx: np.ndarray | None, count: int, samples: int) -> bool:
    """Whether ``samples`` samples like this batch of ``count`` give the layer fewer than
    ``MIN_ROWS`` input rows per column (``_round_layer`` would keep nearest rounding)."""
    rows = x.size // max(x.shape[-1], 1) if layer.kind == "gemm" else len(idx) * x.shape[0]
    return rows * samples < MIN_ROWS * layer.matrix.shape[2] * count


class GptqStatistics:
    """Each layer's ``H`` on the first ``samples`` samples of a stream of runs:
    ``update(first, count, values)`` with ``values[tensor]`` for every tensor in
    :attr:`tensors` (the layers' inputs) on ``count`` samples starting at stream position
    ``first``; :meth:`finish` once the stream ends. Output positions of conv layers are drawn
    per layer and block of :data:`POSITION_BLOCK` stream positions, so the statistics do not
    depend on how the stream is cut into runs. ``block``: only MatMul/Gemm layers (INT4);
    ``nodes``: only these layers."""

    def __init__(self, model: onnx.ModelProto, samples: int, *, seed: int = 0, block: int | None = None,
                 nodes: Iterable[str] | None = None) -> None:
        src = load_model(model)
        wanted = None if nodes is None else set(nodes)
        self.layers = [layer for layer in _layers(src, GraphIndex(src.graph))
                       if (wanted is None or layer.node.name in wanted) and (block is None or layer.kind == "gemm")]
        self.samples, self.seed = samples, seed
        self.until = samples  # a calibration tap: nothing past the first ``samples``
        self.tensors = tuple(dict.fromkeys(layer.node.input[0] for layer in self.layers))
        # MatMul/Gemm layers reading one tensor (a transformer's Q, K and V) share one H: it
        # is accumulated once, for the first of them.
        owner: dict[str, _Layer] = {}
        self._shared: dict[int, _Layer] = {}
        for layer in self.layers:
            if layer.kind == "gemm":
                first = owner.setdefault(layer.node.input[0], layer)
                if first is not layer and first.h.shape == layer.h.shape:
                    layer.h = first.h
                    self._shared[id(layer)] = first

    def update(self, first: int, count: int, values: Mapping[str, np.ndarray]) -> None:
        if first >= self.samples:
            return
        keep = min(count, self.samples - first)
        for i, layer in enumerate(self.layers):
            if layer.node.input[0] not in values or id(layer) in self._shared or layer.hopeless:
                continue
            x = np.asarray(values[layer.node.input[0]])
            per_sample = x.ndim > 0 and x.shape[0] == count
            if keep < count and per_sample:
                x = x[:keep]  # a run past the samples wanted: their rows only
            if layer.kind == "gemm" or not per_sample:
                blocks = [(first, x, keep)]
            else:  # positions are drawn per block of POSITION_BLOCK stream positions
                edges = [first, *range((first // POSITION_BLOCK + 1) * POSITION_BLOCK, first + keep, POSITION_BLOCK),
                         first + keep]
                blocks = [(a, x[a - first:b - first], b - a) for a, b in zip(edges, edges[1:])]
            for at, part, n in blocks:
                idx = None if layer.kind == "gemm" else _positions(
                    part.shape, layer.geometry, np.random.default_rng((self.seed, i, at // POSITION_BLOCK * POSITION_BLOCK)),
                    DEPTHWISE_POSITIONS if layer.kind == "depthwise" else POSITIONS)
                if at == 0 and _hopeless(layer, part, idx, n, self.samples):
                    # E.g. a 1152-input 1x1 conv at 7x7 (3136 rows from 64 samples, 4608
                    # needed): its H would be gathered for nearest rounding all the same.
                    layer.hopeless = True
                    break
                _accumulate(layer, part, idx)

    def finish(self) -> list["_Layer"]:
        """The layers, their ``H`` complete (what was still gathered multiplied in). The
        statistics let go of them: whoever rounds them holds the only references, so the
        ``H`` matrices are freed with the rounding, not kept for the rest of a job."""
        layers, self.layers = self.layers, []
        for layer in layers:
            if id(layer) not in self._shared:
                _accumulate(layer, None, None)
        for layer in layers:
            if id(layer) in self._shared:
                layer.rows = self._shared[id(layer)].rows
        self._shared = {}
        return layers


__all__ = ["DEPTHWISE_POSITIONS", "MIN_ROWS", "POSITIONS", "GptqStatistics"]
