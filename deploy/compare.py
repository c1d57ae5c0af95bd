"""Compare a candidate model's outputs with a reference's on the same data.

Metrics per output (``ref`` = reference, ``d = cand - ref``):

* ``max_abs``: ``max |d|``;  ``max_rel``: ``max |d| / max |ref|`` (error relative to the
  reference's magnitude; element-wise ratios explode near zero and say little);
* ``cosine``: per-sample cosine of the flattened outputs, mean and minimum;
* ``sqnr_db``: ``10 log10(sum ref^2 / sum d^2)`` over all samples;
* for classifiers (``[N, C]`` outputs, C >= 2): ``top1`` = share of samples whose argmax
  agrees, ``top5`` = share whose reference argmax is in the candidate's top 5;
* the task metric the output's shape and values call for (``task`` says which):
  sequences ``[N, T, C]`` (C >= 2): ``position_top1`` = share of positions whose argmax
  agrees, ``sequence`` = share of samples whose greedy CTC decoding (argmax per step,
  repeats merged, class 0 the blank) is identical; maps ``[N, K, H, W]`` (H, W > 1):
  ``mask_iou`` = IoU of the thresholded masks (at 0.5 for probabilities in [0, 1], else 0 for
  logits); embeddings (2-D outputs that are not class scores): ``neighbours`` = share of
  samples whose nearest other sample is the same (see :func:`neighbour_agreement`).
  ``--metric`` (``tasks``) overrides the choice, per output or for all (:func:`parse_metric_overrides`).

A :class:`ComparisonReport` is truthy when every output meets the thresholds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from trtq.core.readers import PreprocessSpec, open_data
from trtq.deploy.runner import QdqMode, Runner, open_runner, run_all
from trtq.core.errors import TrtqError


@dataclass(frozen=True)
class Thresholds:
    """Pass criteria: minimum mean cosine, and minimum top-1 agreement for classifiers."""

    min_cosine: float = 0.97
    min_top1: float | None = None


@dataclass(frozen=True)
class OutputMetrics:
    name: str
    max_abs: float
    max_rel: float
    cosine: float
    min_cosine: float
    sqnr_db: float
    top1: float | None = None
    top5: float | None = None
    task: str = "tensor"  # classifier | sequence | map | embedding | tensor
    position_top1: float | None = None
    sequence: float | None = None
    mask_iou: float | None = None
    neighbours: float | None = None

    def passes(self, t: Thresholds) -> bool:
        ok = self.cosine >= t.min_cosine
        if t.min_top1 is not None and self.top1 is not None:
            ok = ok and self.top1 >= t.min_top1
        return ok

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) and k != "sqnr_db" else v)
                for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ComparisonReport:
    reference: str
    candidate: str
    samples: int
    outputs: tuple[OutputMetrics, ...]
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __bool__(self) -> bool:
        return all(o.passes(self.thresholds) for o in self.outputs)

    @property
    def passed(self) -> bool:
        return bool(self)

    def to_json(self) -> dict:
        return {"reference": self.reference, "candidate": self.candidate, "samples": self.samples,
                "passed": self.passed, "thresholds": self.thresholds.__dict__,
                "outputs": [o.to_json() for o in self.outputs]}


def neighbour_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of samples whose nearest other sample (cosine similarity of the flattened
    outputs, e.g. sentence embeddings) is the same in ``candidate`` as in ``reference``:
    how often a retrieval built on the candidate returns what fp32 returns."""

    def nearest(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1).astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    if len(reference) < 2:
        raise ValueError("neighbour agreement needs at least 2 samples")
    return float((nearest(reference) == nearest(candidate)).mean())


#: The task each ``--metric`` name implies (``METRIC`` or ``OUTPUT=METRIC``).
METRIC_TASKS = {"top1": "classifier", "top5": "classifier", "sequence": "sequence", "position_top1": "sequence",
                "mask_iou": "map", "neighbours": "embedding", "cosine": "tensor", "min_cosine": "tensor",
                "sqnr": "tensor", "sqnr_db": "tensor"}
TASKS = ("classifier", "sequence", "map", "embedding", "tensor")


def parse_metric_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["top1", "box=cosine"]`` -> ``{"*": "classifier", "box": "tensor"}``: the task each
    output is read as (``*`` = every output not named). Unknown metrics raise TrtqError."""
    tasks: dict[str, str] = {}
    for item in items:
        output, _, metric = item.rpartition("=")
        metric = metric.strip()
        if metric not in METRIC_TASKS:
            raise TrtqError(f"unknown metric '{metric}' in '{item}'; choose one of {', '.join(METRIC_TASKS)} "
                            "(optionally OUTPUT=METRIC for one output)")
        tasks[output.strip() or "*"] = METRIC_TASKS[metric]
    return tasks


def auto_task(ref: np.ndarray) -> str:
    """The task an output's shape suggests (see the module docstring)."""
    if ref.ndim == 2 and ref.shape[1] >= 2:
        return "classifier"
    if ref.ndim == 3 and ref.shape[2] >= 2:
        return "sequence"
    if ref.ndim == 4 and ref.shape[2] > 1 and ref.shape[3] > 1:
        return "map"
    if ref.ndim == 2 and len(ref) >= 2:
        return "embedding"
    return "tensor"


def _check_task(name: str, ref: np.ndarray, task: str) -> None:
    """A task given by ``--metric`` that the output's shape cannot have: one clear error."""
    need = {"classifier": (ref.ndim == 2 and ref.shape[1] >= 2, "(N, classes)"),
            "sequence": (ref.ndim == 3 and ref.shape[2] >= 2, "(N, T, classes)"),
            "map": (ref.ndim >= 3 and ref.shape[-1] > 1 and ref.shape[-2] > 1, "(N, [K,] H, W)"),
            "embedding": (len(ref) >= 2, "at least 2 samples")}
    ok, shape = need.get(task, (True, ""))
    if not ok:
        raise TrtqError(f"output '{name}' cannot be read as a {task} output: it has shape {tuple(ref.shape)}, "
                        f"the {task} metrics need {shape}; give another --metric for it (e.g. {name}=cosine)")


def output_metrics(name: str, ref: np.ndarray, cand: np.ndarray, task: str | None = None) -> OutputMetrics:
    """Metrics of one output (see the module docstring); ``task`` overrides :func:`auto_task`."""
    if ref.shape != cand.shape:
        raise TrtqError(f"output '{name}' has shape {cand.shape} in the candidate and {ref.shape} "
                        "in the reference; they cannot be compared")
    if task is None:
        task = auto_task(ref)
    else:
        _check_task(name, ref, task)
    n = len(ref)
    peak = signal = noise = 0.0
    dots, norms, row_err = np.empty(n), np.empty(n), np.empty(n)
    for start, r, c in _row_blocks(ref, cand):
        d = c - r
        rows = slice(start, start + len(r))
        peak = max(peak, float(np.abs(r).max(initial=0.0)))
        row_err[rows] = np.abs(d).max(axis=1, initial=0.0)
        dots[rows] = np.einsum("ij,ij->i", r, c)
        norms[rows] = np.sqrt(np.einsum("ij,ij->i", r, r) * np.einsum("ij,ij->i", c, c))
        signal += float(np.einsum("ij,ij->", r, r))
        noise += float(np.einsum("ij,ij->", d, d))
    max_abs = float(row_err.max(initial=0.0))
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(row_err == 0, 1.0, 0.0))
    sqnr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-300) / noise)
    top1 = top5 = None
    if task == "classifier":
        ref_top = ref.argmax(axis=1)
        cand_top5 = np.argsort(-cand, axis=1)[:, :5]
        top1 = float((cand_top5[:, 0] == ref_top).mean())
        top5 = float((cand_top5 == ref_top[:, None]).any(axis=1).mean())
    return OutputMetrics(name, max_abs, max_abs / peak if peak > 0 else math.inf if max_abs else 0.0,
                         float(cos.mean()), float(cos.min()), sqnr, top1, top5, task=task,
                         **_task_metrics(ref, cand, task))


#: Output elements reduced at a time in float64 (32 MB a temporary): the metrics of a large
#: output (a 1024×1024 map on 32 samples is 268 MB in float64) never hold it whole in float64.
CHUNK_ELEMENTS = 1 << 22


def _row_blocks(ref: np.ndarray, cand: np.ndarray):
    """``(first row, ref rows, cand rows)`` as float64 ``[rows, -1]`` blocks of about
    :data:`CHUNK_ELEMENTS` elements (at least one sample each)."""
    n = len(ref)
    per = max(1, CHUNK_ELEMENTS // max(1, ref.size // max(n, 1)))
    for start in range(0, n, per):
        yield (start, ref[start:start + per].reshape(min(per, n - start), -1).astype(np.float64),
               cand[start:start + per].reshape(min(per, n - start), -1).astype(np.float64))


def signal_noise(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    """``(sum ref^2, sum (cand - ref)^2)`` in float64, a block of samples at a time."""
    signal = noise = 0.0
    for _, r, c in _row_blocks(ref, cand):
        d = c - r
        signal += float(np.einsum("ij,ij->", r, r))
        noise += float(np.einsum("ij,ij->", d, d))
    return signal, noise


def _ctc_greedy(steps: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of ``[N, T]`` argmax ids: repeats merged, blanks (0) dropped."""
    out = []
    for row in steps:
        keep = np.concatenate([[True], row[1:] != row[:-1]]) & (row != 0)
        out.append(tuple(row[keep].tolist()))
    return out


def _task_metrics(ref: np.ndarray, cand: np.ndarray, task: str) -> dict:
    """The metrics of ``task`` beyond the generic ones (see the module docstring)."""
    if task == "sequence":
        r, c = ref.argmax(axis=2), cand.argmax(axis=2)
        same = [a == b for a, b in zip(_ctc_greedy(r), _ctc_greedy(c))]
        return {"position_top1": float((r == c).mean()), "sequence": float(np.mean(same))}
    if task == "map":
        threshold = 0.5 if ref.min() >= 0 and ref.max() <= 1 else 0.0
        both = union = 0
        for _, r, c in _row_blocks(ref, cand):
            a, b = r > threshold, c > threshold
            both, union = both + int((a & b).sum()), union + int((a | b).sum())
        return {"mask_iou": both / union if union else 1.0}
    if task == "embedding":
        return {"neighbours": neighbour_agreement(ref, cand)}
    return {}


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], *,
                    reference_name: str = "reference", candidate_name: str = "candidate",
                    thresholds: Thresholds = Thresholds(), tasks: Mapping[str, str] | None = None) -> ComparisonReport:
    """Compare output arrays by name; ``tasks`` maps an output name (or ``*``, every other
    output) to its task (see :data:`TASKS`); outputs it does not name get :func:`auto_task`'s."""
    tasks = dict(tasks or {})
    unknown = sorted(set(tasks) - set(reference) - {"*"})
    if unknown:
        raise TrtqError(f"--metric names output(s) {unknown} the model does not have; its outputs are "
                        f"{sorted(reference)}")
    missing = [n for n in reference if n not in candidate]
    if missing:
        raise TrtqError(f"the candidate has no output(s) {missing}; its outputs are {sorted(candidate)}")
    metrics = tuple(output_metrics(n, reference[n], candidate[n], tasks.get(n, tasks.get("*")))
                    for n in reference)
    samples = len(next(iter(reference.values()))) if reference else 0
    return ComparisonReport(reference_name, candidate_name, samples, metrics, thresholds)


def compare(reference: str | os.PathLike | Runner, candidate: str | os.PathLike | Runner, data: Any, *,
            mode: QdqMode | str = QdqMode.FLOAT, batch_size: int = 32, samples: int | None = None,
            thresholds: Thresholds = Thresholds(), tasks: Mapping[str, str] | None = None,
            preprocess: PreprocessSpec | None = None) -> ComparisonReport:
    """Run ``data`` (arrays, a ``.npy``/``.npz`` path or an image folder) through both models and
    compare every output of the reference. ``mode``: how a Q/DQ ``.onnx`` candidate runs (see
    :func:`open_runner`); ``preprocess``: how an image folder becomes inputs."""
    data = open_data(data, "data", preprocess)
    ref_runner, cand_runner = open_runner(reference), open_runner(candidate, mode=mode)
    try:
        ref_out = run_all(ref_runner, data, batch_size, samples)
        cand_out = run_all(cand_runner, data, batch_size, samples)
    finally:
        for r, given in ((ref_runner, reference), (cand_runner, candidate)):
            if r is not given:
                r.close()
    return compare_outputs(ref_out, cand_out, reference_name=ref_runner.name,
                           candidate_name=cand_runner.name, thresholds=thresholds, tasks=tasks)
