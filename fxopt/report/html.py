"""A `Report` as self-contained HTML for notebooks: summary, sortable table of saved tensors,
the memory timeline as an inline SVG, and the forward and backward graphs as code with the nodes
fxopt inserted highlighted. No external resources; one small inline script sorts the table."""

from __future__ import annotations

import math
import uuid
from html import escape
from typing import TYPE_CHECKING, Any

from fxopt.config import format_bytes
from fxopt.report.graph_code import CodeLine, graph_lines
from fxopt.report.series import DEFAULT_SERIES, KEEP_SERIES, PLAN_SERIES
from fxopt.report.text import (
    NOT_PLANNED,
    TABLE_COLUMNS,
    bucket_max,
    graph_title,
    summary_items,
    table_rows,
    table_title,
)

if TYPE_CHECKING:  # the model renders through these views (model.py imports them)
    from fxopt.report.model import Report, Timeline

SERIES_COLORS = {KEEP_SERIES: "#8c8c8c", DEFAULT_SERIES: "#e8820c", PLAN_SERIES: "#1f6fb5"}
_FALLBACK_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#17becf")
BUDGET_COLOR = "#d62728"
_NUMERIC = {"bytes", "cost"}
_MAX_POINTS = 1500  # per timeline in the SVG; longer schedules are max-pooled

_CSS = """
.fxopt-report{font-family:system-ui,-apple-system,Segoe UI,sans-serif;font-size:13px;
  color:#222;background:#fff;padding:8px;max-width:1100px}
.fxopt-report h3{margin:4px 0 8px 0;font-size:16px}
.fxopt-report h4{margin:14px 0 6px 0;font-size:14px}
.fxopt-report table{border-collapse:collapse}
.fxopt-report td,.fxopt-report th{padding:2px 8px;border-bottom:1px solid #e4e4e4;
  text-align:left;vertical-align:top}
.fxopt-report table.fxopt-tensors td{white-space:nowrap}
.fxopt-report table.fxopt-tensors td.wrap{white-space:normal;min-width:240px}
.fxopt-report td.num{text-align:right;font-variant-numeric:tabular-nums}
.fxopt-report table.fxopt-tensors td.src{font-family:ui-monospace,Menlo,Consolas,monospace;
  font-size:12px;max-width:420px;overflow:hidden;text-overflow:ellipsis}
.fxopt-report table.fxopt-summary th{font-weight:600;color:#555;white-space:nowrap}
.fxopt-report table.fxopt-tensors th{cursor:pointer;background:#f4f4f4;user-select:none}
.fxopt-report table.fxopt-tensors th:hover{background:#e8e8e8}
.fxopt-report .fxopt-tensors-wrap{max-height:420px;overflow:auto;border:1px solid #e4e4e4}
.fxopt-report .choice{padding:0 6px;border-radius:3px;white-space:nowrap}
.fxopt-report .choice-keep{background:#eeeeee}
.fxopt-report .choice-recompute{background:#dcebfa}
.fxopt-report .choice-offload{background:#e3f4dc}
.fxopt-report .choice-lowbit,.fxopt-report .choice-lowbit_offload{background:#f6e3f7}
.fxopt-report .choice-saved{background:#f4f4f4;color:#666}
.fxopt-report .note{color:#777;font-style:italic}
.fxopt-report pre{font-size:12px;line-height:1.35;background:#fafafa;padding:6px;
  max-height:520px;overflow:auto;border:1px solid #e4e4e4}
.fxopt-report pre .cm{color:#6a737d}
.fxopt-report pre .fxopt-inserted{background:#fff3bf;display:inline-block;min-width:100%}
.fxopt-report pre .fxopt-inserted .mark{color:#b35900;font-weight:600}
"""

# Sorts the tensor table by the clicked column (numbers by value, text alphabetically).
_SCRIPT = """
(function(){var root=document.getElementById('%s');if(!root)return;
var table=root.querySelector('table.fxopt-tensors');if(!table)return;
var heads=table.querySelectorAll('th');
heads.forEach(function(th,col){th.addEventListener('click',function(){
 var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
 var asc=th.getAttribute('data-dir')!=='asc',num=th.hasAttribute('data-numeric');
 rows.sort(function(a,b){var x=a.cells[col].getAttribute('data-sort'),
  y=b.cells[col].getAttribute('data-sort');
  var c=num?(parseFloat(x)-parseFloat(y)):x.localeCompare(y);return asc?c:-c;});
 rows.forEach(function(r){body.appendChild(r);});
 heads.forEach(function(h){h.removeAttribute('data-dir');
  h.textContent=h.textContent.replace(/ [\\u25b2\\u25bc]$/,'');});
 th.setAttribute('data-dir',asc?'asc':'desc');th.textContent+=asc?' \\u25b2':' \\u25bc';});});
})();
"""


def series_color(label: str, position: int) -> str:
    return SERIES_COLORS.get(label, _FALLBACK_COLORS[position % len(_FALLBACK_COLORS)])


def _summary_html(report: Report) -> str:
    rows = "".join(f"<tr><th>{escape(label)}</th><td>{escape(value)}</td></tr>"
                   for label, value in summary_items(report))
    return f'<table class="fxopt-summary">{rows}</table>'


def _table_html(report: Report) -> str:
    rows = table_rows(report)
    title = escape(table_title(report).capitalize())
    if not rows:
        return f'<h4>{title}</h4><p class="note">none</p>'
    head = "".join(f'<th{" data-numeric" if c in _NUMERIC else ""}>{c}</th>'
                   for c in TABLE_COLUMNS)
    body = []
    for row in rows:
        cells = []
        for column, text, key in zip(TABLE_COLUMNS, row.cells, row.sort_keys, strict=True):
            content, tip = escape(text), ""
            if column == "choice":
                content = f'<span class="choice choice-{escape(text)}">{content}</span>'
            if column == "source" and key:  # shown whole (the text table cuts it)
                content = escape(str(key))
                tip = f' title="{content}"'
            cls = ' class="num"' if column in _NUMERIC else (
                ' class="wrap"' if column == "reason" else
                ' class="src"' if column == "source" else "")
            cells.append(f'<td{cls}{tip} data-sort="{escape(str(key))}">{content}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<h4>{title}: {len(rows)} (click a column to sort)</h4>"
            f'<div class="fxopt-tensors-wrap"><table class="fxopt-tensors"><thead><tr>{head}'
            f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _nice_ticks(top: float, count: int = 5) -> tuple[float, list[float], str]:
    """Tick values below `top` at round numbers of one binary unit; returns (unit, ticks, name)."""
    unit, name = 1.0, "B"
    for power, unit_name in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if top >= 1024 ** power:
            unit, name = float(1024 ** power), unit_name
            break
    raw = top / unit / count
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [i * step * unit for i in range(int(top / unit / step) + 1)]
    return unit, ticks, name


def timeline_svg(timelines: tuple[Timeline, ...], budget: int | None, *, width: int = 760,
                 height: int = 300) -> str:
    """Live bytes at every schedule step, one step line per timeline, the budget as a dashed
    line and the backward steps shaded."""
    left, right, top_m, bottom = 78, 150, 22, 34
    plot_w, plot_h = width - left - right, height - top_m - bottom
    steps = max(len(t.live_bytes) for t in timelines) or 1
    top = max([t.peak_bytes for t in timelines] + [budget or 0]) * 1.08 or 1.0

    def x(step: float) -> float:
        return left + plot_w * step / steps

    def y(value: float) -> float:
        return top_m + plot_h * (1.0 - value / top)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="fxopt-timeline" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" '
             f'font-size="11"><rect width="{width}" height="{height}" fill="#ffffff"/>']
    fwd = min(timelines[-1].num_fwd_steps, steps)
    parts.append(f'<rect x="{x(fwd):.1f}" y="{top_m}" width="{x(steps) - x(fwd):.1f}" '
                 f'height="{plot_h}" fill="#f3f3f3"/>')
    parts.append(f'<text x="{(x(0) + x(fwd)) / 2:.1f}" y="{top_m - 6}" text-anchor="middle" '
                 f'fill="#555">forward</text><text x="{(x(fwd) + x(steps)) / 2:.1f}" '
                 f'y="{top_m - 6}" text-anchor="middle" fill="#555">backward</text>')
    unit, ticks, unit_name = _nice_ticks(top)
    for value in ticks:
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" '
                     f'y2="{y(value):.1f}" stroke="#e0e0e0"/><text x="{left - 6}" '
                     f'y="{y(value) + 4:.1f}" text-anchor="end" fill="#444">'
                     f'{value / unit:g} {unit_name}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top_m}" y2="{top_m + plot_h}" '
                 f'stroke="#444"/><line x1="{left}" x2="{left + plot_w}" y1="{top_m + plot_h}" '
                 f'y2="{top_m + plot_h}" stroke="#444"/>')
    for value in (0, fwd, steps - 1):
        parts.append(f'<text x="{x(value):.1f}" y="{top_m + plot_h + 14}" text-anchor="middle" '
                     f'fill="#444">{value}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" '
                 f'fill="#444">schedule step</text>')
    legend_y = top_m + 4
    for position, t in enumerate(timelines):
        color = series_color(t.label, position)
        points = bucket_max(t.live_bytes, _MAX_POINTS)
        span = len(t.live_bytes) / max(len(points), 1)
        coords = []
        for i, value in enumerate(points):
            coords.append(f"{x(i * span):.1f},{y(value):.1f} {x((i + 1) * span):.1f},"
                          f"{y(value):.1f}")
        title = escape(f"{t.label}: peak {format_bytes(t.peak_bytes)}")
        parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.8" '
                     f'points="{" ".join(coords)}"><title>{title}</title></polyline>')
        peak_at = t.live_bytes.index(t.peak_bytes) if t.live_bytes else 0
        parts.append(f'<circle cx="{x(peak_at + 0.5):.1f}" cy="{y(t.peak_bytes):.1f}" r="3" '
                     f'fill="{color}"><title>{title} at step {peak_at}</title></circle>')
        parts.append(_legend_entry(left + plot_w + 10, legend_y, color, t.label,
                                   "peak " + format_bytes(t.peak_bytes), dashed=False))
        legend_y += 34
    if budget is not None:
        parts.append(f'<line class="budget" x1="{left}" x2="{left + plot_w}" y1="{y(budget):.1f}"'
                     f' y2="{y(budget):.1f}" stroke="{BUDGET_COLOR}" stroke-width="1.5" '
                     f'stroke-dasharray="6,4"><title>budget {format_bytes(budget)}</title></line>')
        parts.append(_legend_entry(left + plot_w + 10, legend_y, BUDGET_COLOR, "budget",
                                   format_bytes(budget), dashed=True))
    parts.append("</svg>")
    return "".join(parts)


def _legend_entry(x0: float, y0: float, color: str, label: str, value: str, *,
                  dashed: bool) -> str:
    dash = ' stroke-dasharray="6,4"' if dashed else ""
    return (f'<line x1="{x0:.1f}" x2="{x0 + 22:.1f}" y1="{y0:.1f}" y2="{y0:.1f}" '
            f'stroke="{color}" stroke-width="2"{dash}/><text x="{x0 + 28:.1f}" '
            f'y="{y0 + 4:.1f}" fill="#222">{escape(label)}</text><text x="{x0 + 28:.1f}" '
            f'y="{y0 + 17:.1f}" fill="#666">{escape(value)}</text>')


def _line_html(line: CodeLine) -> str:
    code = escape(line.code)
    comment = f'<span class="cm">  # {escape(line.comment)}</span>' if line.comment else ""
    if line.inserted is None:
        return code + comment
    info = line.inserted
    title = escape(f"inserted by the {info.pass_name} pass for {info.tensor} ({info.decision})")
    return (f'<span class="fxopt-inserted" title="{title}">{code}{comment}'
            f'<span class="mark">  # {escape(line.marker)}</span></span>')


def graph_html(gm: Any, name: str, title: str) -> str:
    """A collapsible block with the graph's code; inserted nodes are highlighted."""
    if gm is None:
        return f'<p class="note">{escape(title)}: not recorded</p>'
    lines = graph_lines(gm, name)
    inserted = sum(1 for line in lines if line.inserted is not None)
    ops = sum(1 for n in gm.graph.nodes if n.op == "call_function")
    marked = f", {inserted} inserted by fxopt (highlighted)" if inserted else ""
    body = "\n".join(_line_html(line) for line in lines)
    return (f"<details><summary><b>{escape(title)}</b> ({ops} ops{marked})</summary>"
            f"<pre>{body}</pre></details>")


def render_html(report: Report) -> str:
    """The whole report as one self-contained HTML fragment (for `_repr_html_`)."""
    root = f"fxopt-report-{uuid.uuid4().hex[:10]}"
    if report.timelines:
        picture = timeline_svg(report.timelines, report.budget_bytes)
    else:
        picture = f'<p class="note">no memory timeline: {NOT_PLANNED}</p>'
    return (f'<div class="fxopt-report" id="{root}"><style>{_CSS}</style>'
            f"<h3>{escape(graph_title(report))}</h3>{_summary_html(report)}"
            f"{_table_html(report)}<h4>Predicted memory timeline</h4>{picture}"
            f"<h4>Forward and backward graphs</h4>"
            f"{graph_html(report.forward_graph, 'forward', 'Forward graph')}"
            f"{graph_html(report.backward_graph, 'backward', 'Backward graph')}"
            f"<script>{_SCRIPT % root}</script></div>")
