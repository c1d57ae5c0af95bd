"""``report.md``: what a mixed-precision ``trtq quantize`` run did, readable in any viewer.

The report holds the command that reproduces the run, fidelity against fp32 for every
variant measured (all-int8, all-fp16, the mixed model), the share of MACs left in int8,
the layer groups the search moved, the sensitivity chart, and every node's precision
with the rule that decided it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from trtq.deploy.compare import ComparisonReport


def _fmt(value, pct: bool = False, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if pct else f"{value:.{digits}f}"


def task_metric_text(o) -> str:
    """The output's task (how it was read) and that task's own metric, in words."""
    if o.task == "sequence":
        return f"sequence: identical {_fmt(o.sequence, True)}, per position {_fmt(o.position_top1, True)}"
    if o.task == "map":
        return f"map: mask IoU {_fmt(o.mask_iou)}"
    if o.task == "embedding":
        return f"embedding: neighbours {_fmt(o.neighbours, True)}"
    if o.task == "classifier":
        return f"classifier: top-1 {_fmt(o.top1, True)}, top-5 {_fmt(o.top5, True)}"
    return o.task


def fidelity_rows(reports: Mapping[str, ComparisonReport]) -> list[str]:
    lines = ["| variant | output | task metric | cosine (mean) | cosine (min) | SQNR dB |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for variant, report in reports.items():
        for o in report.outputs:
            lines.append(f"| {variant} | {o.name} | {task_metric_text(o)} | {_fmt(o.cosine)} | "
                         f"{_fmt(o.min_cosine)} | {o.sqnr_db:.1f} |")
    return lines


def markdown_report(*, command: str, model_label: str, eval_source: str, samples: int,
                    reports: Mapping[str, ComparisonReport], mixed, search=None, sensitivity=None,
                    files: Sequence[str] = ()) -> str:
    """The report as Markdown (see the module docstring)."""
    summary = mixed.summary()
    out = [f"# trtq mixed-precision report: {model_label}", "",
           "Reproduce:", "", "```sh", command, "```", "",
           f"Fidelity against fp32 on {samples} samples of {eval_source}; Q/DQ executed in float "
           "(TensorRT's arithmetic), fp16 regions as ONNX Runtime runs them.", "",
           *fidelity_rows(reports), "",
           f"Precision: {', '.join(f'{n} nodes {p}' for p, n in summary.items() if n)}; "
           f"**{mixed.int8_mac_share:.1%} of the MACs in int8** (MACs: "
           f"{', '.join(f'{share:.1%} {p}' for p, share in mixed.mac_shares().items())}; compute cost "
           f"{mixed.relative_cost():.2f}x all-fp16, docs/mixed-precision.md).", ""]
    if search is not None:
        verdict = "met" if search.met else "**not met** (out of reach)"
        out += [f"Target `{search.target}`: {verdict} after {len(search.steps)} evaluations; "
                f"{len(search.moved)} layer group(s) moved up from the plan's precision:", ""]
        out += [f"- `{name}`: {precision.value}" + (f" ({search.reasons[name]})" if name in search.reasons else "")
                for name, precision in search.rungs.items()] or ["- none"]
        out.append("")
    if sensitivity is not None:
        out += ["## Sensitivity", "", "![sensitivity per layer group](sensitivity.png)", "",
                f"| rank | group | op | MACs | floor | {sensitivity.metric} with only it on its floor |",
                "| ---: | --- | --- | ---: | --- | ---: |"]
        for i, g in enumerate(sensitivity.groups, 1):
            out.append(f"| {i} | `{g.group.name}` | {g.group.op_type} | {g.group.macs / 1e6:.2f}M | {g.floor.value} | "
                       f"{_fmt(g.only.get(sensitivity.metric), digits=5)} |")
        out.append("")
    out += ["## Precision per node", "", "| node | op | precision | asked | rule | note |",
            "| --- | --- | --- | --- | --- | --- |"]
    for a in mixed.assignments.values():
        out.append(f"| `{a.node}` | {a.op_type} | {a.precision.value} | {a.asked.value} | `{a.rule}` | {a.reason} |")
    if files:
        out += ["", "Files: " + ", ".join(f"`{f}`" for f in files)]
    return "\n".join(out) + "\n"


__all__ = ["fidelity_rows", "markdown_report", "task_metric_text"]
