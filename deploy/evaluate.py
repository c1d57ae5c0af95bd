"""Fidelity of candidate models against a fixed fp32 reference, on a fixed evaluation set.

:class:`FidelityEvaluator` runs the reference once and keeps its outputs, then scores any
number of candidates (Q/DQ simulated in float, fp16 regions as ONNX Runtime runs them):
the sensitivity analysis and the automatic precision search call it dozens of times.
:class:`Target` parses accuracy targets such as ``top1>=0.97`` or ``cosine>=0.99``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import onnx

from trtq.deploy.compare import compare_outputs
from trtq.deploy.runner import OrtRunner, QdqMode, run_all
from trtq.core.errors import TrtqError
from trtq.core.onnx_model import input_specs, load_model
from trtq.core.readers import fit_batch_size, in_data_order, take_rows

METRICS = ("top1", "cosine", "min_cosine", "sqnr_db", "sequence", "position_top1", "mask_iou", "neighbours")
_TARGET = re.compile(r"^\s*(" + "|".join(("sqnr", *METRICS)) + r")\s*>=\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Target:
    """``metric >= threshold`` on the evaluation set (metric: top1, cosine, min_cosine, sqnr_db)."""

    metric: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> "Target":
        m = _TARGET.match(text or "")
        if not m:
            raise TrtqError(f"cannot read the target '{text}': write METRIC>=VALUE with METRIC one of "
                            f"{', '.join(METRICS)} (e.g. 'top1>=0.97', 'cosine>=0.99', 'sequence>=0.95', "
                            "'mask_iou>=0.95')")
        metric = "sqnr_db" if m.group(1) == "sqnr" else m.group(1)
        return cls(metric, float(m.group(2)))

    def met(self, metrics: Mapping[str, float | None]) -> bool:
        value = metrics.get(self.metric)
        if value is None:
            raise TrtqError(f"the target needs '{self.metric}', which these outputs do not have (top1: a "
                            "classifier's (N, classes) output; sequence/position_top1: (N, T, classes); mask_iou: "
                            "(N, K, H, W) maps; neighbours: embeddings)")
        return value >= self.threshold

    def met_with_margin(self, metrics: Mapping[str, float | None], samples: int, z: float = 1.0) -> bool:
        """:meth:`met`, demanding for a per-sample share (``top1``, ``sequence``, ``neighbours``)
        that the Wilson lower confidence bound of the share over ``samples`` samples, not the
        share itself, reach the threshold. A search that stops at the first plan meeting the
        target on its samples picks plans that were lucky on them; the bound (``z=1``: one-sided
        84%) counters that. ``z=0`` or other metrics: the plain comparison."""
        self.met(metrics)  # a metric the outputs lack: the same clear error
        value = float(metrics[self.metric])
        if z <= 0 or self.metric not in SHARE_METRICS or samples < 1:
            return value >= self.threshold
        return wilson_lower_bound(value, samples, z) >= self.threshold

    def shortfall(self, metrics: Mapping[str, float | None], samples: int, z: float = 1.0,
                  of: int | None = None) -> str:
        """What :meth:`met_with_margin` compared, as text: the metric, and for a share with a
        margin the lower bound that had to reach the threshold (``top1 0.9766, lower bound
        0.9651 < 0.97 on 256 samples``). ``of``: the samples the target is judged on, when the
        evaluation stopped early after ``samples`` of them (no better case could meet it)."""
        value = metrics.get(self.metric)
        if value is None:
            return f"{self.metric} not measured"
        text = f"{self.metric} {_beside(value, self.threshold)}"
        if of is not None and samples < of:
            return text + f" on the first {samples} of {of} samples, which no result on the rest could lift to {self}"
        if z > 0 and self.metric in SHARE_METRICS and samples >= 1:
            bound = wilson_lower_bound(float(value), samples, z)
            text += (f", lower bound {_beside(bound, self.threshold)} {'>=' if bound >= self.threshold else '<'} "
                     f"{self.threshold:g} on {samples} samples")
        else:
            text += f" {'>=' if value >= self.threshold else '<'} {self.threshold:g}"
        return text

    def __str__(self) -> str:
        return f"{self.metric}>={self.threshold:g}"


def _beside(value: float, threshold: float) -> str:
    """``value`` with 4 significant digits, or as many more as it takes to read on the same
    side of ``threshold`` (0.999987 against 0.99999 is not "1")."""
    for digits in range(4, 10):
        text = f"{value:.{digits}g}"
        if (float(text) < threshold) == (value < threshold) and (float(text) == threshold) == (value == threshold):
            return text
    return repr(value)


#: Metrics that are a share of samples (one success or failure per sample).
SHARE_METRICS = ("top1", "sequence", "neighbours")


def wilson_lower_bound(share: float, samples: int, z: float) -> float:
    """The Wilson score interval's lower end for ``share`` observed over ``samples`` trials."""
    n, z2 = samples, z * z
    centre = share + z2 / (2 * n)
    spread = z * math.sqrt(max(share * (1 - share), 0.0) / n + z2 / (4 * n * n))
    return (centre - spread) / (1 + z2 / n)


class FidelityEvaluator:
    """``evaluator(candidate_model) -> {metric: value}`` against cached reference outputs.

    Metrics are those of :func:`deploy.compare.output_metrics`, the worst over the model's
    outputs: ``cosine`` (mean), ``min_cosine``, ``sqnr_db`` and, for classifiers, ``top1``.
    """

    def __init__(self, reference: str | os.PathLike | onnx.ModelProto, data: Any, *, batch_size: int = 32,
                 samples: int | None = None, tasks: Mapping[str, str] | None = None) -> None:
        self.tasks = dict(tasks or {})  # output -> task; unnamed outputs: what their shape suggests
        # The evaluation inputs, kept as arrays: every candidate sees exactly the same samples.
        reference = load_model(reference)
        batch_size = fit_batch_size(input_specs(reference), batch_size)  # a fixed batch dim wins
        self.feed = _collect_inputs(reference, data, batch_size, samples)
        self.samples = len(next(iter(self.feed.values())))
        self.batch_size = batch_size
        with OrtRunner(reference, name="fp32") as runner:
            self.reference = run_all(runner, self.feed, batch_size=batch_size, progress=False)
            # Padded token data whose outputs have no sequence axis runs longest first (the
            # runner cuts each batch after its longest sample); None: in data order.
            self.order = runner.padding.order(self.feed) if runner.padding is not None else None
        self.calls = 0
        self.last_samples = self.samples  # how many samples the last call ran (fewer: it stopped early)

    def head(self, samples: int) -> "FidelityEvaluator":
        """An evaluator on the first ``samples`` samples, sharing this one's arrays (no re-run)."""
        other = object.__new__(FidelityEvaluator)
        n = min(samples, self.samples)
        other.feed = {k: take_rows(v, slice(0, n)) for k, v in self.feed.items()}
        other.reference = {k: v[:n] for k, v in self.reference.items()}
        other.samples, other.batch_size, other.calls, other.tasks = n, self.batch_size, 0, self.tasks
        other.last_samples = n
        other.order = None
        if self.order is not None:  # the head's own samples, still longest first
            other.order = self.order[self.order < n]
        return other

    def outputs(self, model: onnx.ModelProto) -> dict[str, np.ndarray]:
        return self._outputs(model)[0]

    def _outputs(self, model: onnx.ModelProto, hopeless: Callable[[dict], bool] | None = None):
        """The candidate's outputs, batch by batch; with ``hopeless``, the run stops after the first
        batch whose best-case metrics (see :func:`best_case`) it rejects. Returns the outputs
        (of the samples run) and, when it stopped early, the metrics of those samples."""
        parts = []
        order = self.order
        with OrtRunner(model, mode=QdqMode.FLOAT, name="candidate") as runner:
            for i in range(0, self.samples, self.batch_size):
                rows = slice(i, i + self.batch_size) if order is None else order[i:i + self.batch_size]
                parts.append(runner.infer({k: take_rows(v, rows) for k, v in self.feed.items()}))
                done = min(i + self.batch_size, self.samples)
                if hopeless is not None and done < self.samples:
                    got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                    ref = {k: (v[:done] if order is None else v[order[:done]]) for k, v in self.reference.items()}
                    partial = report_metrics(compare_outputs(ref, got, tasks=self.tasks))
                    if hopeless(best_case(partial, done, self.samples)):
                        self.last_samples = done
                        return got, partial
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        self.last_samples = self.samples
        return (out if order is None else in_data_order(out, order)), None

    def __call__(self, model: onnx.ModelProto, hopeless: Callable[[dict], bool] | None = None) -> dict[str, float | None]:
        """The metrics of ``model`` on every sample. ``hopeless(best)``: called after each batch
        with the best metrics the rest of the samples could still give; when it returns True
        the run stops there, and the metrics of the samples run so far are returned (a search
        that would reject the model anyway saves the rest of the run)."""
        self.calls += 1
        out, partial = self._outputs(model, hopeless)
        return partial if partial is not None else report_metrics(compare_outputs(self.reference, out, tasks=self.tasks))


#: Metrics that are means over samples, each sample's value at most 1: the rest of the samples
#: can raise them to at most ``(mean * done + rest) / total``. ``min_cosine`` can only fall.
_MEANS = ("top1", "cosine", "sequence", "position_top1")


def best_case(metrics: Mapping[str, float | None], done: int, total: int) -> dict[str, float | None]:
    """The best ``metrics`` measured on ``done`` of ``total`` samples could end at when the other
    samples are perfect; metrics without such a bound (SQNR, mask IoU, neighbours) are unbounded
    (1e9)."""
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        if value is None or key == "min_cosine":
            out[key] = value
        elif key in _MEANS:
            out[key] = (value * done + (total - done)) / total
        else:
            out[key] = 1e9
    return out


def report_metrics(report) -> dict[str, float | None]:
    """A ComparisonReport as target metrics: the worst over the outputs of ``cosine``,
    ``min_cosine``, ``sqnr_db`` and (classifiers) ``top1``."""
    worst: dict[str, float | None] = {}
    for o in report.outputs:
        for key, value in (("cosine", o.cosine), ("min_cosine", o.min_cosine), ("sqnr_db", o.sqnr_db),
                           ("top1", o.top1), ("sequence", o.sequence), ("position_top1", o.position_top1),
                           ("mask_iou", o.mask_iou), ("neighbours", o.neighbours)):
            if value is None:
                if key in ("cosine", "min_cosine", "sqnr_db", "top1"):
                    worst.setdefault(key, None)  # the task metrics appear only where an output has them
                continue
            value = float(value) if math.isfinite(value) else 1e9
            current = worst.get(key)
            worst[key] = value if current is None else min(current, value)
    return worst


def _collect_inputs(model, data, batch_size: int, samples: int | None) -> dict[str, np.ndarray]:
    from trtq.core.readers import collect_arrays

    arrays = collect_arrays(data, input_specs(load_model(model)), batch_size, samples)
    if not arrays:
        raise TrtqError("the evaluation data is empty")
    return arrays


__all__ = ["METRICS", "SHARE_METRICS", "FidelityEvaluator", "Target", "best_case", "report_metrics", "wilson_lower_bound"]
