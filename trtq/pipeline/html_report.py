"""``report.html``: one self-contained page per ``trtq quantize`` run (images embedded, no
JavaScript): fidelity, where the int8 error comes from layer by layer, the calibration ranges
of the worst layers, what each algorithm changed, the precision plan, and the command."""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Mapping, Sequence

import numpy as np

from trtq.core.errors import DependencyError, require
from trtq.pipeline.report import task_metric_text

__all__ = ["html_report"]

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
          "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
          "code,pre{background:#f6f6f6;padding:.1em .3em}img{max-width:100%}")
_COLORS = {"int8": "#4472c4", "fp16": "#ed7d31", "fp32": "#a5a5a5"}


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _pyplot():
    require("matplotlib", "models").use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _layer_chart(layers: Sequence) -> str:
    plt = _pyplot()
    finite = [min(layer.sqnr_db, 80.0) for layer in layers]
    fig, ax = plt.subplots(figsize=(11, 3.6))
    ax.bar(range(len(layers)), finite, color=[_COLORS.get(layer.precision, "#999") for layer in layers])
    ax.set_xlabel("compute layer, in graph order (blue int8, orange fp16, grey fp32)")
    ax.set_ylabel("output SQNR vs fp32 (dB)")
    ax.set_title("Where the error comes from: each layer's output against the same layer in fp32")
    if len(layers) <= 60:
        ax.set_xticks(range(len(layers)), [layer.node for layer in layers], rotation=90, fontsize=6)
    return _png(fig)


def _range_chart(name: str, values: np.ndarray, lo: float | None, hi: float | None) -> str:
    plt = _pyplot()
    flat = values.reshape(-1)
    if flat.size > 200_000:
        flat = flat[np.linspace(0, flat.size - 1, 200_000).astype(np.int64)]
    fig, ax = plt.subplots(figsize=(5.2, 2.8))
    ax.hist(flat, bins=120, color="#4472c4", log=True)
    for bound in (lo, hi):
        if bound is not None:
            ax.axvline(bound, color="#c00000", linestyle="--", linewidth=1)
    ax.set_title(f"{name[:60]}: values and the calibrated range", fontsize=9)
    return _png(fig)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if pct else f"{value:.4f}"


def _fidelity(reports: Mapping[str, Any]) -> str:
    rows = [(label, o.name, task_metric_text(o), _fmt(o.top1, True), _fmt(o.top5, True), _fmt(o.cosine), _fmt(o.min_cosine),
             f"{o.sqnr_db:.1f}") for label, r in reports.items() for o in r.outputs]
    return _table(("model", "output", "task metric", "top-1", "top-5", "cosine (mean)", "cosine (min)", "SQNR dB"),
                  rows)


def html_report(*, command: str, model_label: str, eval_source: str, reports: Mapping[str, Any], layers: Sequence,
                ranges: Mapping[str, np.ndarray], table, changes: Sequence[str], precision: Mapping[str, Any],
                moved: Sequence[str], sensitivity_png: bytes | None, files: Sequence[str]) -> str:
    """The page (see the module docstring). ``reports``: label -> ComparisonReport; ``layers``:
    LayerError per compute layer; ``ranges``: fp32 values of the worst int8 layers' inputs."""
    samples = next(iter(reports.values())).samples if reports else 0
    parts = [f"<h1>trtq quantize: {html.escape(model_label)}</h1>",
             f"<p>Reproduce:</p><pre>{html.escape(command)}</pre>",
             f"<h2>Fidelity</h2><p>Against fp32 on {samples} samples of {html.escape(eval_source)}.</p>",
             _fidelity(reports)]
    try:
        charts = True
        _pyplot()
    except DependencyError as exc:
        charts = False
        parts.append(f"<p>(charts need matplotlib: {html.escape(str(exc))})</p>")
    if layers:
        parts.append("<h2>Per-layer error</h2>")
        if charts:
            parts.append(_layer_chart(layers))
        worst = sorted((x for x in layers if x.precision == "int8"), key=lambda x: x.sqnr_db)[:8]
        parts.append("<p>The int8 layers with the lowest output SQNR:</p>" + _table(
            ("layer", "op", "output SQNR dB"), [(x.node, x.op_type, f"{x.sqnr_db:.1f}") for x in worst]))
    if ranges and charts:
        parts.append("<h2>Calibration ranges of the worst layers' inputs</h2><p>Histogram of the fp32 values "
                     "(log scale) with the calibrated range (dashed); values outside it are clipped.</p>")
        for name, values in ranges.items():
            rng = table.ranges.get(name) if table is not None else None
            parts.append(_range_chart(name, values, rng.lo if rng else None, rng.hi if rng else None))
    parts.append("<h2>What changed</h2><ul>" + "".join(f"<li>{html.escape(c)}</li>" for c in changes) + "</ul>")
    parts.append("<h2>Precision</h2>" + _table(("precision", "nodes"), sorted(precision["summary"].items()))
                 + f"<p>{precision['int8_mac_share']:.1%} of the MACs in int8.</p>")
    if moved:
        parts.append("<p>Taken out of int8 by the search: " + ", ".join(f"<code>{html.escape(m)}</code>"
                                                                     for m in moved) + "</p>")
    if sensitivity_png:
        parts.append("<h2>Sensitivity</h2><img alt=\"sensitivity\" src=\"data:image/png;base64,"
                     + base64.b64encode(sensitivity_png).decode() + "\">")
    parts.append("<p>Files: " + ", ".join(f"<code>{html.escape(f)}</code>" for f in files) + "</p>")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>trtq report: {html.escape(model_label)}"
            f"</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
