"""The collector: run the model once per batch and feed every observed tensor to its observer.

One ONNX Runtime session runs the calibration graph (:mod:`calibration.augment`): the
model plus, per tensor, its min/max/sum and, for histogram methods, its values or an even
subsample of them. Each batch's statistics are fed to the observers and dropped, so
memory does not grow with the number of samples. The model runs in a worker thread while
the observers work on the previous batch.

A NaN sum, or a non-finite min or max, means NaN/Inf somewhere in the tensor: that batch is
run again through a second session that exposes those tensors in full, so the error names
the tensor and the exact sample. A sum that is infinite while the min and max are finite only
overflowed (attention masks of -3.4e38 do that): the values are finite and the batch is not
run again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
import onnx

from trtq.calibration.augment import DEFAULT_MAX_ELEMENTS, Probe, augment, expose
from trtq.calibration.observers import check_finite, make_observer
from trtq.core.onnx_model import infer_types, input_specs, load_model, model_sha256
from trtq.core.budget import MemoryBudget, RunSizer, chunks, current_budget
from trtq.core.progress import progress_bar
from trtq.core.threads import run_ahead
from trtq.core.readers import count_samples, lazy_batches, length_batches
from trtq.calibration.table import CalibrationTable
from trtq.core.errors import CalibrationError, require
from trtq.core.checks import count_arg, names_arg
from trtq.core.runtime import check_runnable, ort_session

log = logging.getLogger(__name__)

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16}


def float_activations(model: onnx.ModelProto) -> list[str]:
    """Names of every float tensor that varies with the input: graph inputs and node outputs.

    Initializers and outputs of Constant nodes are not activations and are skipped.
    """
    types = {name: t.tensor_type.elem_type for name, t in infer_types(model).items()}
    inits = {i.name for i in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in inits]
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        names.extend(o for o in node.output if o)
    return [n for n in dict.fromkeys(names) if types.get(n) in FLOAT_TYPES]


def _session(model: onnx.ModelProto, providers: Sequence[str] | None):
    ort = require("onnxruntime", "cpu")
    opts = ort.SessionOptions()
    # Full optimization is safe: ORT never fuses away a tensor that feeds a graph output's
    # computation, and the statistics are computed from the calibrated tensors themselves.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort_session(model, opts, providers, "the model (for calibration)")


@runtime_checkable
class Tap(Protocol):
    """Another pass's statistics gathered in the calibration run (one model run for both):
    ``update(first, count, values)`` gets ``values[t]`` for each of its ``tensors``, whole, on
    ``count`` samples starting at stream position ``first``; at most one run's worth is held.
    E.g. :class:`trtq.quantize.smoothquant.SmoothQuantStatistics`."""

    tensors: tuple[str, ...]
    #: Stream positions from which on the tap wants nothing (its tensors are then not fetched);
    #: None: all of them.
    until: int | None

    def update(self, first: int, count: int, values: dict[str, np.ndarray]) -> None: ...


class _Runner:
    """Runs one batch through the calibration graph; re-runs it exactly when a sum is not finite."""

    def __init__(self, proto: onnx.ModelProto, probes: list[Probe], session, providers,
                 budget: MemoryBudget, index: np.ndarray | None = None, taps: Sequence[Tap] = (),
                 tap_only: Iterable[str] = ()) -> None:
        self.proto, self.probes, self.session, self.providers = proto, probes, session, providers
        self.index = index  # the data's sample index of each stream position (None: the same)
        self.taps = list(taps)
        tapped = list(dict.fromkeys(t for tap in self.taps for t in tap.tensors))  # tensors read whole
        self.budget, self.sizer = budget, RunSizer(proto, tapped)
        skipped = set(tap_only)  # outputs only the taps read: fetched while a tap wants them
        self.outputs = [o.name for o in session.get_outputs() if o.name not in skipped]
        self._exact = None

    def _tapped(self, first: int) -> list[str]:
        """The tensors the taps still want at stream position ``first``."""
        return list(dict.fromkeys(t for tap in self.taps if tap.until is None or first < tap.until
                                  for t in tap.tensors))

    def __call__(self, first: int, feed: dict) -> tuple[list[tuple[np.ndarray | None, float, float]], list]:
        """Each probe's (values, min, max) on this batch, and the tapped tensors of each run as
        ``(first, count, {tensor: values})``; run in slices of as many samples as the memory
        budget allows, the slices' statistics joined as one batch's."""
        n = len(next(iter(feed.values()))) if feed else 0
        rows = self.sizer.rows(feed, self.budget)
        if rows >= n:
            stats, tapped = self._run(first, {k: np.asarray(v) for k, v in feed.items()})
            return stats, [(first, n, tapped)]
        parts, taps = [], []
        for i, chunk in enumerate(chunks(feed, rows)):
            stats, tapped = self._run(first + i * rows, chunk)
            parts.append(stats)
            taps.append((first + i * rows, len(next(iter(chunk.values()))), tapped))
        joined = []
        for stats in zip(*parts):
            values = [v for v, _, _ in stats if v is not None]
            joined.append((np.concatenate(values) if values else None, min(lo for _, lo, _ in stats),
                           max(hi for _, _, hi in stats)))
        return joined, taps

    def _run(self, first: int, feed: dict) -> tuple[list[tuple[np.ndarray | None, float, float]], dict]:
        wanted = self._tapped(first)
        outputs = [*self.outputs, *(t for t in wanted if t not in self.outputs)]
        try:
            values = dict(zip(outputs, self.session.run(outputs, feed)))
        except Exception as exc:  # ORT raises its own exception types
            at = first if self.index is None else int(self.index[first])
            raise CalibrationError(f"running calibration batch at sample {at} failed: {exc}") from exc
        tapped = {t: values[t] for t in wanted}
        stats = []
        suspicious = []
        for p in self.probes:
            lo, hi = float(np.min(values[p.lo])), float(np.max(values[p.hi]))
            total = float(np.sum(values[p.total], dtype=np.float64))
            if not (math.isfinite(lo) and math.isfinite(hi)) or math.isnan(total):
                suspicious.append(p.tensor)
            stats.append((values[p.values] if p.values else None, lo, hi))
        if suspicious:
            full = self._run_exact(suspicious, feed)
            for i, p in enumerate(self.probes):
                if p.tensor in full:
                    check_finite(p.tensor, full[p.tensor], first, self.index)  # raises with the exact sample
                    arr = full[p.tensor]
                    stats[i] = (arr if p.values else None, float(arr.min()), float(arr.max()))
        return stats, tapped

    def _run_exact(self, tensors: list[str], feed: dict) -> dict[str, np.ndarray]:
        key = tuple(tensors)  # usually the same few tensors batch after batch
        if self._exact is None or self._exact[0] != key:
            self._exact = key, _session(expose(self.proto, tensors), self.providers)
        return {t: np.asarray(a, dtype=np.float32) for t, a in zip(tensors, self._exact[1].run(tensors, feed))}


def _in_runs(stream, runner: _Runner):
    """``stream``'s batches, each cut into the runs the memory budget allows (stream positions kept)."""
    for first, feed in stream:
        n = len(next(iter(feed.values()))) if feed else 0
        rows = runner.sizer.rows(feed, runner.budget)
        if rows >= n:
            yield first, feed
        else:
            for i, chunk in enumerate(chunks(feed, rows)):
                yield first + i * rows, chunk


def calibrate(model: str | os.PathLike | onnx.ModelProto, data: Any, method: str = "minmax", *,
              batch_size: int = 8, samples: int | None = None,
              providers: Sequence[str] | None = None, tensors: Iterable[str] | None = None,
              max_elements: int | None = DEFAULT_MAX_ELEMENTS, progress: bool = True,
              budget: MemoryBudget | None = None, taps: Sequence[Tap] = ()) -> CalibrationTable:
    """Run ``data`` through ``model`` and return the range of every float activation.

    ``data`` is any form accepted by :func:`calibration.readers.iter_batches`. ``tensors``
    restricts calibration to the named tensors (default: all float activations).
    ``samples`` caps the number of calibration samples. Ranges are computed by the observer
    registered as ``method`` in :data:`calibration.observers.OBSERVERS`. Only per-tensor
    statistics leave ONNX Runtime (see :mod:`calibration.augment`): min, max and sum of
    every value and, for histogram methods, every value of a tensor whose batch holds at
    most ``max_elements`` values, else an even subsample of its rows (``None``: all).
    Memory does not grow with the number of samples, and ONNX Runtime's working memory stays
    within ``budget`` (default: :func:`trtq.core.budget.current_budget`): a batch it would
    not fit runs in slices. Token data of a model with an ``attention_mask`` input and an open
    sequence axis runs longest first, each batch cut after its longest sample
    (:class:`trtq.core.readers.Padding`). ``taps``: other passes' statistics gathered from
    the same runs (see :class:`Tap`); their tensors count against the budget too, and a batch
    the budget would run in slices is then taken as smaller batches (observers see one update
    per run), so that only a run's worth of tapped tensors waits at a time.
    """
    batch_size = count_arg(batch_size, "batch_size")
    samples = count_arg(samples, "samples", optional=True)
    max_elements = count_arg(max_elements, "max_elements", optional=True)
    tensors = names_arg(tensors, "tensors")
    proto = load_model(model)
    check_runnable(proto)
    make_observer(method, "probe")  # fail fast on an unknown method
    specs = input_specs(proto)
    available = float_activations(proto)
    names = tensors if tensors is not None else available
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise CalibrationError(f"tensors {unknown[:5]} are not float activations of the model")
    observers = {n: make_observer(method, n) for n in names}
    needs_values = any(getattr(o, "needs_values", True) for o in observers.values())
    graph, probes = augment(proto, names, values=needs_values, batch_size=batch_size,
                            max_elements=max_elements)
    tapped = list(dict.fromkeys(t for tap in taps for t in tap.tensors))
    untapped = sorted(set(tapped) - set(available))
    if untapped:
        raise CalibrationError(f"tensors {untapped[:5]} are not float activations of the model")
    exposed = {o.name for o in graph.graph.output}
    tap_only = [t for t in tapped if t not in exposed]
    graph.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tap_only)
    # A transformer's padded token data runs longest first, each batch cut after its longest
    # sample (trtq.core.readers.Padding): most padded positions are never run.
    ordered = length_batches(data, specs, batch_size, samples)
    stream, index = ordered if ordered is not None else (lazy_batches(data, specs, batch_size, samples), None)
    run = _Runner(proto, probes, _session(graph, providers), providers, budget or current_budget(), index, taps,
                  tap_only)
    seen = 0
    with progress_bar(f"calibrating ({method})", count_samples(data, samples), enabled=progress) as bar:
        # Three stages in three threads: reading/decoding the next batch, running the model
        # on the current one, and the observers on the previous one. Array data is read
        # slice by slice as the model runs it.
        if taps:  # taps read whole tensors: one run at a time, never a batch's slices at once
            stream = _in_runs(stream, run)
        batches = run_ahead(stream, lambda b: b)
        for first, n, (stats, runs) in run_ahead(batches, lambda b: (b[0], len(next(iter(b[1].values()))), run(*b))):
            for p, (values, lo, hi) in zip(probes, stats):
                obs = observers[p.tensor]
                if values is None:  # min/max observers need only the extremes
                    values = np.array([lo, hi], np.float32)
                obs.update(values, first_sample=first, extremes=(lo, hi))
            for at, count, tapped in runs:
                for tap in taps:
                    if all(t in tapped for t in tap.tensors):
                        tap.update(at, count, {t: tapped[t] for t in tap.tensors})
            del stats, runs
            seen += n
            bar.advance(n)
    ranges = {n: dataclasses.replace(o.compute(), samples=seen) for n, o in observers.items()}
    log.info("calibrated %d tensors on %d samples (%s)", len(ranges), seen, method)
    return CalibrationTable(ranges, method, model_sha256(proto), seen)

