"""Per-layer sensitivity to int8 (or INT4 weights), and the automatic precision search built on it.

A **group** is what TensorRT turns into one int8 kernel: a Conv/ConvTranspose/Gemm/MatMul
node, plus the residual ``Add`` its output feeds when TensorRT fuses the two (the Add's
Q/DQ sits on its other input). Groups are named after their main node.

:func:`analyze` measures each group twice on a fixed evaluation set, against the fp32
reference: **only** that group at its floor, int8 unless the plan says otherwise (everything
else fp32: the error it causes alone), and **all but** that group at its floor (the error left
when only it is taken out).
One calibration table serves every variant, and the evaluator keeps the reference outputs,
so each variant costs one model edit and one evaluation run.

:func:`search_precision` starts every group on its **floor**, the precision the base plan
gives it (int8 by default; int4w where the plan asks for INT4 weights; groups the plan keeps
in fp16/fp32 are not searched), and stops there, before any ranking is measured, when that
meets the target. Else it moves groups up in ranking order (by default the most error at
the floor per MAC first: on EfficientNet-Lite0 that kept 66% of the MACs in int8 where
ranking by error alone kept 55%, for the same target): to the first rung of ``rungs``
(default fp16, then fp32; fp8 first on a GPU with FP8 Tensor Cores; int8 first when a floor
is int4w) at which moving every ranked group meets the target. How many of the ranking's
first groups to move is bisected (``log2(groups)`` evaluations, not one per group): fidelity
grows, not always strictly, with the groups moved, so the prefix found meets the target
while the one a group shorter does not. Then it refines: the ranking measured each group
alone, and together some of the moved groups are not needed, so each is tried back on its
floor (largest first) and stays there if the target still holds; a group that must move
then tries the rungs between its floor and the one it is on (int8, fp8 below fp16), the
cheapest first, except a rung that with every group on it did no better than the floors on
any metric. It is deterministic: the order is the ranking (ties broken by graph order), and
each step is one evaluation.

``evaluate(model) -> {metric: value}`` is supplied by the caller
(:class:`deploy.evaluate.FidelityEvaluator` on ONNX Runtime).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from trtq.core.onnx_model import load_model, model_sha256
from trtq.core.progress import progress_bar
from trtq.calibration.table import CalibrationTable
from trtq.quantize.fold import fold_batchnorm
from trtq.quantize.graph import GraphIndex
from trtq.quantize.mixed import MixedModel, apply_plan, node_macs
from trtq.quantize.precision import Precision, PrecisionPlan, PrecisionRule, int4_weight_node
from trtq.quantize.qdq import DEFAULT_INT4_BLOCK
from trtq.quantize.rules import QDQ_RULES
from trtq.core.errors import QuantizationError, require

log = logging.getLogger(__name__)

Metrics = Mapping[str, float | None]
Evaluate = Callable[[onnx.ModelProto], Metrics]
#: The metric ranking uses by default (higher is better for each).
RANK_METRIC = "cosine"


@dataclass(frozen=True)
class LayerGroup:
    name: str
    nodes: tuple[str, ...]
    op_type: str
    macs: int


@dataclass(frozen=True)
class GroupSensitivity:
    group: LayerGroup
    only: Metrics  # only this group at its floor (int8 unless the plan says int4w/fp8), the rest fp32
    all_but: Metrics  # every group at its floor except this one, in fp32 (empty when not measured)
    rungs: Mapping[str, Metrics] = field(default_factory=dict)  # only this group in fp8 (say), the rest fp32
    floor: Precision = Precision.INT8  # the cheapest precision the plan gives it: where the search starts

    def loss(self, metric: str = RANK_METRIC, rung: str | None = None) -> float:
        """How much fidelity this group costs alone (at its floor, or on another measured
        ``rung``): ``1 - metric`` for cosine/top1, ``-sqnr`` for SQNR; 0 where not measured."""
        value = (self.only if rung in (None, self.floor.value) else self.rungs.get(rung, {})).get(metric)
        if value is None:
            return 0.0
        return -value if metric.startswith("sqnr") else 1.0 - value


@dataclass(frozen=True)
class SensitivityReport:
    baseline: Metrics  # every group in int8
    groups: tuple[GroupSensitivity, ...]  # ranked: most sensitive first
    metric: str = RANK_METRIC

    def ranking(self, order: str = "error_per_mac") -> list[LayerGroup]:
        """Groups in the order the search takes them out of int8.

        ``error_per_mac`` (default): the most int8 error per multiply-accumulate first, so
        what is moved costs the least int8 compute; ``error``: the most error first (the
        fewest groups, whatever their size). Ties keep the report's order.
        """
        if order == "error":
            return [g.group for g in self.groups]
        if order != "error_per_mac":
            raise QuantizationError(f"unknown ranking order '{order}': use error_per_mac or error")
        return [g.group for g in sorted(self.groups, key=lambda g: -g.loss(self.metric) / max(g.group.macs, 1))]

    def to_json(self) -> dict:
        return {"metric": self.metric, "all_int8": dict(self.baseline),
                "groups": [{"group": g.group.name, "nodes": list(g.group.nodes), "op_type": g.group.op_type,
                            "macs": g.group.macs, "floor": g.floor.value, f"only_{g.floor.value}": dict(g.only),
                            "all_but_this": dict(g.all_but),
                            **{f"only_{rung}": dict(m) for rung, m in g.rungs.items()}}
                           for g in self.groups]}

    @property
    def rung_names(self) -> list[str]:
        """The precisions measured per group: the floors (int8, int4w...), then any others (fp8)."""
        return list(dict.fromkeys([*(g.floor.value for g in self.groups), *(r for g in self.groups for r in g.rungs)]))

    def plot(self, path: str | os.PathLike, top: int = 30) -> Path:
        """A horizontal bar chart of the ``top`` most sensitive groups (PNG, needs matplotlib)."""
        require("matplotlib", "models").use("Agg")
        import matplotlib.pyplot as plt
        rows = self.groups[:top][::-1]
        rungs = self.rung_names
        fig, ax = plt.subplots(figsize=(8, (0.28 if len(rungs) == 1 else 0.42) * len(rows) + 1.2))
        height = 0.8 / len(rungs)
        ys = np.arange(len(rows))
        for i, (rung, color) in enumerate(zip(rungs, ("#c0504d", "#4f81bd", "#9bbb59", "#8064a2"))):
            ax.barh(ys + (i - (len(rungs) - 1) / 2) * height, [g.loss(self.metric, rung) for g in rows],
                    height=height, color=color, label=rung)
        ax.set_yticks(ys, [g.group.name for g in rows])
        label = f"-{self.metric}" if self.metric.startswith("sqnr") else f"1 - {self.metric}"
        which = rungs[0] if len(rungs) == 1 else " or ".join(rungs)
        ax.set_xlabel(f"{label} with only this group in {which} (vs fp32)")
        ax.set_title(f"{' / '.join(rungs)} sensitivity per layer group")
        if len(rungs) > 1:
            ax.legend(loc="lower right")
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, path)
        return path


def layer_groups(model: onnx.ModelProto) -> list[LayerGroup]:
    """The int8 groups of ``model`` (BatchNorm folded first), in graph order."""
    folded = fold_batchnorm(load_model(model))
    g = GraphIndex(folded.graph)
    macs = node_macs(folded)
    members: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    for node in folded.graph.node:
        rule = QDQ_RULES.get(node.op_type)
        if rule is None or not rule(node, g):
            continue
        owner = node.name
        if node.op_type == "Add":  # joins the Conv it fuses with (the input without Q/DQ)
            quantized = {node.input[iq.index] for iq in rule(node, g)}
            fused = [g.producer[i].name for i in node.input if i not in quantized and i in g.producer]
            owner = next((f for f in fused if f in members), node.name)
        members.setdefault(owner, []).append(node.name)
        kinds.setdefault(owner, node.op_type)
    return [LayerGroup(name, tuple(nodes), kinds[name], sum(macs.get(n, 0) for n in nodes))
            for name, nodes in members.items()]


def _rules(moves: Mapping[LayerGroup, Precision]) -> tuple[PrecisionRule, ...]:
    """Each group's nodes, by exact name, in its precision."""
    return tuple(PrecisionRule(f"name:{n}", precision) for grp, precision in moves.items() for n in grp.nodes)


def _plan(default: Precision, groups: Sequence[LayerGroup], precision: Precision) -> PrecisionPlan:
    return PrecisionPlan(default, _rules(dict.fromkeys(groups, precision)))


def metrics_text(metrics: Metrics) -> str:
    """``cosine 0.9982, top1 0.9479`` (measured metrics only)."""
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if v is not None)


def _table_owns(table: CalibrationTable, proto: onnx.ModelProto) -> bool:
    """Whether ``table`` was calibrated on ``proto``: hashed once per search, not per candidate
    (see :func:`quantize.mixed.apply_plan`). False leaves each candidate to check, and fail."""
    return table.model_sha256 == model_sha256(proto)


def _no_better(metrics: Metrics, than: Metrics) -> bool:
    """Whether ``metrics`` is nowhere above ``than`` (every target metric: higher is better)."""
    keys = [k for k, v in than.items() if v is not None and metrics.get(k) is not None]
    return bool(keys) and all(metrics[k] <= than[k] for k in keys)


#: The precisions a group can climb to, cheapest first: int8 (above an int4w floor), fp8 (GPUs
#: with FP8 Tensor Cores), fp16, fp32. Weight bytes fall with each step down; compute cost
#: too, except int4w, which computes in fp16 (see :data:`quantize.mixed.MAC_COST`).
LADDER = (Precision.INT8, Precision.FP8, Precision.FP16, Precision.FP32)
_RANK = {p: i for i, p in enumerate((Precision.INT4W, *LADDER))}
#: Floors a search starts groups from (the plan's quantized precisions).
FLOORS = (Precision.INT4W, Precision.INT8, Precision.FP8)


def group_floors(model: onnx.ModelProto, base: PrecisionPlan, table: CalibrationTable | None = None,
                 groups: Sequence[LayerGroup] | None = None) -> dict[str, Precision]:
    """The precision ``base`` gives each group's main node, for the groups it quantizes (int4w,
    int8, fp8): where a search starts them. Groups the plan keeps in fp16/fp32 are left out:
    the search does not move what the user pinned."""
    folded = fold_batchnorm(load_model(model))
    resolved = base.resolve(folded, table)
    groups = groups if groups is not None else layer_groups(folded)
    return {grp.name: resolved[grp.name].precision for grp in groups
            if grp.name in resolved and resolved[grp.name].precision in FLOORS}


def _builder(proto: onnx.ModelProto, table: CalibrationTable, weights: Mapping | None,
             int4_weights: Mapping | None, int4_block: int) -> Callable[..., MixedModel]:
    """``plan -> MixedModel`` for the many candidates of one search (the table's ownership
    hashed once; ``check=True`` runs ``onnx.checker`` on the result)."""
    owned = _table_owns(table, proto)

    def build(plan: PrecisionPlan, check: bool = False) -> MixedModel:
        return apply_plan(proto, table, plan, weights=weights, int4_weights=int4_weights, int4_block=int4_block,
                          force=owned, check=check)
    return build


def analyze(model: str | os.PathLike | onnx.ModelProto, table: CalibrationTable, evaluate: Evaluate, *,
            metric: str = RANK_METRIC, groups: Sequence[LayerGroup] | None = None, reverse: bool = True,
            progress: bool = True, weights: Mapping | None = None, int4_weights: Mapping | None = None,
            int4_block: int = DEFAULT_INT4_BLOCK, rungs: Sequence[Precision] = (),
            base: PrecisionPlan = PrecisionPlan(Precision.INT8)) -> SensitivityReport:
    """Measure every group's sensitivity (see the module docstring); ranked, most sensitive first.

    Each group is measured at its floor, the precision ``base`` gives it (int8 by default;
    int4w where the plan asks for INT4 weights); groups ``base`` keeps in fp16/fp32 are not
    measured. ``reverse=False`` skips the all-but-one runs (the ranking needs only the
    one-at-a-time runs), halving the time. ``weights``/``int4_weights``: int8 and INT4 weights
    by node (see :func:`apply_plan`). ``rungs``: other precisions (fp8; int4w, for the groups
    whose weight it applies to) each group is also measured in alone, for the report and its
    chart; the ranking stays the floor's.
    """
    rungs = tuple(Precision.parse(r) for r in rungs)
    if any(r not in (Precision.FP8, Precision.INT4W) for r in rungs):
        raise QuantizationError(f"sensitivity rungs besides the floor can be fp8 and int4w only, got "
                                f"{[r.value for r in rungs]}")
    proto = load_model(model)
    build = _builder(proto, table, weights, int4_weights, int4_block)
    floors = group_floors(proto, base, table, groups)
    groups = [grp for grp in (groups if groups is not None else layer_groups(proto)) if grp.name in floors]
    int4_able = set()
    if Precision.INT4W in rungs:  # a group's main node is a Gemm/MatMul, which BatchNorm folding leaves as it is
        g, nodes = GraphIndex(proto.graph), {n.name: n for n in proto.graph.node}
        int4_able = {grp.name for grp in groups if grp.name in nodes and int4_weight_node(nodes[grp.name], g)}
    if not groups:
        raise QuantizationError("the model has no layers trtq quantizes (Conv, Gemm, MatMul...)"
                                + ("" if base == PrecisionPlan(Precision.INT8) else " in int4w, int8 or fp8 under this plan"))
    baseline = evaluate(build(base).model)
    if baseline.get(metric) is None:
        have = ", ".join(k for k, v in baseline.items() if v is not None)
        raise QuantizationError(f"the ranking metric '{metric}' is not measured on this model's outputs (it has: "
                                f"{have}); rank by one of those")
    rows = []
    with progress_bar("sensitivity", (1 + reverse + len(rungs)) * len(groups), unit="runs", enabled=progress) as bar:
        for grp in groups:
            floor = floors[grp.name]
            only = evaluate(build(_plan(Precision.FP32, [grp], floor)).model)
            bar.advance(1)
            all_but: Metrics = {}
            if reverse:
                all_but = evaluate(build(base.with_overrides(_rules({grp: Precision.FP32}))).model)
                bar.advance(1)
            others = {}
            for rung in rungs:  # int4w: only where it applies (a constant 2-D MatMul/Gemm weight)
                if rung is not floor and (rung is not Precision.INT4W or grp.name in int4_able):
                    others[rung.value] = dict(evaluate(build(_plan(Precision.FP32, [grp], rung)).model))
                bar.advance(1)
            rows.append(GroupSensitivity(grp, dict(only), dict(all_but), others, floor))
    order = {grp.name: i for i, grp in enumerate(groups)}
    rows.sort(key=lambda r: (-r.loss(metric), order[r.group.name]))
    return SensitivityReport(dict(baseline), tuple(rows), metric)


@dataclass(frozen=True)
class SearchStep:
    moved: int  # how many groups were out of int8 in this step
    precision: Precision  # the rung of the group(s) this step moved or tried
    metrics: Metrics


@dataclass(frozen=True)
class PrecisionSearchResult:
    """The chosen plan and model, the metric reached, and every step taken."""

    target: str
    met: bool
    plan: PrecisionPlan
    mixed: MixedModel
    metrics: Metrics
    moved: tuple[str, ...]
    steps: tuple[SearchStep, ...] = field(default_factory=tuple)
    rungs: Mapping[str, Precision] = field(default_factory=dict)  # each moved group's precision
    reasons: Mapping[str, str] = field(default_factory=dict)  # why each moved group is where it is

    def to_json(self) -> dict:
        return {"target": self.target, "met": self.met, "metrics": dict(self.metrics),
                "moved_groups": list(self.moved),
                "moved_to": {name: precision.value for name, precision in self.rungs.items()},
                "why": dict(self.reasons),
                "int8_mac_share": self.mixed.int8_mac_share,
                "plan": self.plan.to_json(),
                "steps": [{"moved": s.moved, "precision": s.precision.value, "metrics": dict(s.metrics)}
                          for s in self.steps]}


#: The rungs above int8 a search climbs, cheapest first, without and with FP8 Tensor Cores.
RUNGS = (Precision.FP16, Precision.FP32)
FP8_RUNGS = (Precision.FP8, Precision.FP16, Precision.FP32)


def search_precision(model: str | os.PathLike | onnx.ModelProto, table: CalibrationTable, evaluate: Evaluate,
                     met: Callable[[Metrics], bool], *,
                     ranking: Sequence[LayerGroup] | Callable[[], Sequence[LayerGroup]] | None = None,
                     base: PrecisionPlan = PrecisionPlan(Precision.INT8), target: str = "",
                     progress: bool = True, weights: Mapping | None = None, int4_weights: Mapping | None = None,
                     int4_block: int = DEFAULT_INT4_BLOCK, refine: bool = True,
                     rungs: Sequence[Precision] = RUNGS,
                     explain: Callable[[Metrics], str] | None = None) -> PrecisionSearchResult:
    """Fewest, most sensitive groups moved up from their floor until ``met(metrics)`` (see the
    module docstring).

    A group's floor is the precision ``base`` gives it: int8 by default, int4w where the plan
    asks for INT4 weights (the ladder then starts there, and int8 is its first rung), fp8 if
    asked. Groups ``base`` keeps in fp16/fp32 stay there. ``ranking`` defaults to
    :func:`analyze`'s; a callable is called only when the floors miss the target. ``base``
    holds the user's own overrides, which the search keeps (its overrides come after them, by
    exact node name, and only ever move a group up). ``weights``/``int4_weights``: int8 and
    INT4 weights by node (see :func:`apply_plan`). ``refine``: after the shortest ranking
    prefix that meets the target, put each moved group back on its floor (largest first)
    where the target still holds, else on the cheapest rung below its own that holds (one
    evaluation per group and rung tried). ``rungs``: the precisions above int8, cheapest
    first (:data:`RUNGS`, or :data:`FP8_RUNGS` for a GPU with FP8); int8 goes first when any
    floor is int4w. ``explain(metrics)``: why a trial missed, for the
    reasons each moved group gets (default: the metrics); called right after the evaluation.
    """
    rungs = tuple(rungs)
    explain = explain or metrics_text
    if not rungs or any(r not in LADDER for r in rungs) or len(set(rungs)) != len(rungs):
        raise QuantizationError(f"rungs must be distinct precisions of {[r.value for r in LADDER]}, got "
                                f"{[getattr(r, 'value', r) for r in rungs]}")
    proto = load_model(model)
    build = _builder(proto, table, weights, int4_weights, int4_block)
    floors = group_floors(proto, base, table)
    if Precision.INT4W in floors.values() and Precision.INT8 not in rungs:
        rungs = (Precision.INT8, *rungs)
    lowest = min(floors.values(), key=_RANK.get, default=Precision.INT8)
    if any(_RANK[r] <= _RANK[lowest] for r in rungs):
        raise QuantizationError(f"rungs must be distinct precisions above the plan's floors ({lowest.value}), got "
                                f"{[r.value for r in rungs]}")
    rungs = tuple(sorted(rungs, key=_RANK.get))
    steps: list[SearchStep] = []

    def attempt(moves: Mapping[LayerGroup, Precision], step: Precision) -> tuple[PrecisionPlan, Metrics]:
        # Only the plan is kept: the model is rebuilt for the result (a transformer's copies
        # held for the best-so-far, the bound and the first step were 0.5 GB on MiniLM).
        plan = base.with_overrides(_rules(moves))
        candidate = build(plan).model
        metrics = dict(evaluate(candidate))
        del candidate
        steps.append(SearchStep(len(moves), step, metrics))
        log.info("%d group(s) moved up (%s): %s", len(moves), step.value, metrics)
        return plan, metrics

    misses: dict[str, list[str]] = {}  # per group: the cheaper rungs tried in refining, which missed

    def result(moves: Mapping[LayerGroup, Precision], ok: bool, plan, metrics) -> PrecisionSearchResult:
        reasons = {}
        for grp, precision in moves.items():
            if not ok:
                reasons[grp.name] = f"every group moved up to {precision.value} and the target still missed"
            elif grp.name in misses:
                reasons[grp.name] = "; ".join(misses[grp.name])
            else:  # not tried lower (a single group on the first rung, or refine=False)
                reasons[grp.name] = (f"rank {order[grp.name] + 1} of the ranking; the shortest ranking prefix "
                                     f"that meets the target, on {precision.value}")
        return PrecisionSearchResult(target, ok, plan, build(plan, check=True), metrics,
                                     tuple(grp.name for grp in moves), tuple(steps),
                                     {grp.name: precision for grp, precision in moves.items()}, reasons)

    def at(groups: Sequence[LayerGroup], precision: Precision) -> dict[LayerGroup, Precision]:
        """``groups`` moved to ``precision``: those whose floor is below it."""
        return {grp: precision for grp in groups if _RANK[floors[grp.name]] < _RANK[precision]}

    first = attempt({}, lowest)  # every group at its floor
    first_missed = explain(first[1])  # explained at once: explain may read the evaluation just run
    if met(first[1]):
        return result({}, True, *first)
    if ranking is None:
        ranking = analyze(proto, table, evaluate, reverse=False, progress=progress, weights=weights,
                          int4_weights=int4_weights, int4_block=int4_block, base=base).ranking()
    elif callable(ranking):
        ranking = ranking()
    ranking = [grp for grp in ranking if grp.name in floors]
    order = {grp.name: i for i, grp in enumerate(ranking)}
    rungs = tuple(r for r in rungs if at(ranking, r)) or rungs[-1:]  # a rung that moves nothing is no step
    with progress_bar(f"precision search ({target or 'target'})", len(rungs) + max(len(ranking), 1).bit_length(),
                      unit="runs", enabled=progress) as bar:
        # Is the target reachable at all? Every group on the first rung, then the next.
        bounds: dict[Precision, Metrics] = {}
        for precision in rungs:
            bound = attempt(at(ranking, precision), precision)
            bounds[precision] = bound[1]
            bar.advance(1)
            if met(bound[1]):
                break
        else:
            log.warning("target %s is not reached even with every group moved up to %s: %s", target,
                        precision.value, bound[1])
            return result(at(ranking, precision), False, *bound)
        # Bisect the prefix length: `short` groups miss the target, `long` meet it.
        short, long, found = 0, len(ranking), bound
        bar.remaining(max(long - short - 1, 1).bit_length())
        while long - short > 1:
            mid = (short + long) // 2
            trial = attempt(at(ranking[:mid], precision), precision)
            bar.advance(1)
            if met(trial[1]):
                long, found = mid, trial
            else:
                short = mid
        moves = at(ranking[:long], precision)
        if refine and (len(moves) > 1 or precision is not rungs[0]):
            # The ranking measured each group alone; together some were not needed. Try each
            # moved group back on its floor, the largest first, then on the cheaper rungs
            # above the floor and below its own; it stays on the cheapest that keeps the
            # target. A rung that did no better than the floors with every group on it (fp8
            # on EfficientNet-Lite0: top-1 0.72 vs int8's 0.92) is not tried per group.
            below = [r for r in rungs[:rungs.index(precision)] if not _no_better(bounds[r], first[1])]
            bar.remaining(len(moves) * (1 + len(below)))
            for grp in sorted(moves, key=lambda grp: (-grp.macs, order[grp.name])):
                floor = floors[grp.name]
                for lower in [floor, *(r for r in below if _RANK[r] > _RANK[floor])]:
                    if len(moves) == 1 and lower is floor:  # every group on its floor was measured first
                        misses.setdefault(grp.name, []).append(f"on {floor.value} the target missed "
                                                               f"({first_missed})")
                        continue
                    trial_moves = {other: p for other, p in moves.items() if other != grp}
                    if lower is not floor:
                        trial_moves[grp] = lower
                    trial = attempt(trial_moves, lower)
                    bar.advance(1)
                    if met(trial[1]):
                        found, moves = trial, trial_moves
                        break
                    misses.setdefault(grp.name, []).append(f"on {lower.value} the target missed "
                                                           f"({explain(trial[1])})")
        return result(moves, True, *found)


__all__ = ["FLOORS", "FP8_RUNGS", "LADDER", "RUNGS", "GroupSensitivity", "LayerGroup", "PrecisionSearchResult", "SearchStep",
           "SensitivityReport", "analyze", "group_floors", "layer_groups", "metrics_text", "search_precision"]
