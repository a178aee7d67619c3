"""A `Report` as plain text for a terminal: summary, table of saved tensors, memory timeline as
an ASCII chart, and the forward and backward graphs as code.

The pieces both renderers show (summary items, table rows) are built here once, as plain data;
`fxopt.report.html` lays the same data out as HTML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fxopt.config import format_bytes
from fxopt.report.graph_code import graph_code
from fxopt.report.series import DEFAULT_SERIES, KEEP_SERIES, PLAN_SERIES
from fxopt.sources import node_source

if TYPE_CHECKING:  # the model renders through these views (model.py imports them)
    from fxopt.report.model import Report, Timeline

NOT_PLANNED = "not planned"
TABLE_COLUMNS = ("name", "source", "shape", "dtype", "bytes", "choice", "cost", "reason")
SOURCE_CELL_CHARS = 60  # the text table cuts the source cell here; HTML shows it whole
CHART_SYMBOLS = {KEEP_SERIES: ".", DEFAULT_SERIES: "o", PLAN_SERIES: "#"}
_FALLBACK_SYMBOLS = "*+x%@"


@dataclass(frozen=True)
class Row:
    """One row of the saved-tensor table: the cells as shown and the keys to sort them by.
    The source cell is cut to SOURCE_CELL_CHARS; its sort key is the whole source."""

    cells: tuple[str, ...]
    sort_keys: tuple[str | int, ...]


def graph_title(report: Report) -> str:
    return report.title


def format_us(us: int | float) -> str:
    if us < 1000:
        return f"{us:.0f} us"
    if us < 1_000_000:
        return f"{us / 1e3:.2f} ms"
    return f"{us / 1e6:.2f} s"


def _share(part: int, whole: int | None) -> str:
    return f" ({100.0 * part / whole:.0f}% of keep-everything)" if whole else ""


def _budget_text(report: Report) -> str:
    asked = report.options.budget
    if report.budget_bytes is None:
        return "none" if asked is None else str(asked)
    fraction = f" ({asked})" if asked is not None and asked.fraction is not None else ""
    return format_bytes(report.budget_bytes) + fraction


def _status_text(report: Report) -> str:
    """The plan's status in words (choice set, proven gap) where the report's status is it."""
    plan = report.plan
    if plan is not None and report.status == plan.status:
        return plan.quality()
    return str(report.status or "-")


def summary_items(report: Report) -> list[tuple[str, str]]:
    """(label, value) pairs of the report's summary, in display order. A graph that was not
    planned says so once and leaves out the peaks it has no prediction for."""
    planned = report.plan is not None
    fallback = f" (fallback: {report.fallback_reason})" if report.fallback_reason else ""
    items = [("error", report.error)] if report.error else []
    items += [("strategy", report.strategy + fallback),
              ("solver status", _status_text(report) if planned else NOT_PLANNED),
              ("budget", _budget_text(report))]
    c = report.coupling
    if c is not None and (c.held_before or c.later_need or c.grads_after or c.inputs):
        step = f"budget of the whole step {format_bytes(report.step_budget_bytes or 0)}" \
            if report.step_budget_bytes is not None else "no budget"
        items.append(("in the step", f"{step}; the graphs before it hold "
                      f"{format_bytes(c.held_before)}, its inputs from the graph before "
                      f"{format_bytes(c.inputs)} during its forward, those after it need "
                      f"{format_bytes(c.later_need)} at its forward/backward boundary and "
                      f"return {format_bytes(c.grads_after)} of gradients before its backward"))
    base = report.baseline_peak_bytes
    for kind, label, value in (
            ("plan", "predicted peak with the plan", report.peak_bytes),
            (KEEP_SERIES, "predicted peak, keep everything", base),
            (DEFAULT_SERIES, "predicted peak, PyTorch default", report.default_peak_bytes)):
        if value is None:
            if planned:
                items.append((label, "not predicted"))
            continue
        text = format_bytes(value) + ("" if kind == KEEP_SERIES else _share(value, base))
        if kind == "plan" and report.budget_bytes is not None:
            text += " - within budget" if value <= report.budget_bytes else " - OVER BUDGET"
        items.append((label, text))
    if planned:
        counts = ", ".join(f"{n} {k}" for k, n in report.plan.counts().items() if n)
        items += [("estimated time overhead", format_us(report.extra_time_us)),
                  ("solve time", f"{report.solve_seconds * 1e3:.0f} ms"),
                  ("choices", counts or "no candidates")]
    items.append(("graph", f"{report.joint_ops} joint ops -> {report.forward_ops} forward + "
                           f"{report.backward_ops} backward ops"))
    items.append(("saved for backward",
                  f"{len(report.saved)} tensors, {format_bytes(report.saved_bytes)}"))
    stages = ", ".join(f"{s.name} {s.seconds * 1e3:.0f} ms" for s in report.stages)
    items.append(("compile time", f"{report.seconds * 1e3:.0f} ms" +
                  (f" ({stages})" if stages else "")))
    for warning in getattr(report.plan, "warnings", ()) or ():
        items.append(("warning", warning))
    return items


def source_cell(source: str) -> str:
    if not source:
        return "-"
    return source if len(source) <= SOURCE_CELL_CHARS else source[:SOURCE_CELL_CHARS - 3] + "..."


def _saved_sources(report: Report) -> dict[str, str]:
    """Node name -> source, from the graphs a report without planned tensors still holds."""
    wanted = {s.name for s in report.saved}
    sources: dict[str, str] = {}
    for gm in (report.joint_graph, report.forward_graph):
        for n in getattr(getattr(gm, "graph", None), "nodes", ()):
            if n.name in wanted and not sources.get(n.name):
                sources[n.name] = node_source(n.meta)
    return sources


def table_rows(report: Report) -> list[Row]:
    """The planned tensors; before planning, the tensors PyTorch's partition saves."""
    rows = []
    if report.tensors:
        for t in report.tensors:
            shape = f"[{', '.join(t.shape)}]"
            rows.append(Row((t.name, source_cell(t.source), shape, t.dtype,
                             format_bytes(t.nbytes), t.choice, format_us(t.cost_us), t.reason),
                            (t.name, t.source, shape, t.dtype, t.nbytes, t.choice, t.cost_us,
                             t.reason)))
        return rows
    sources = _saved_sources(report)
    reason = f"saved by the {report.strategy} partition"
    if report.plan is None:
        reason = f"{NOT_PLANNED}: {reason}"
    for s in report.saved:
        shape = f"[{', '.join(s.shape)}]"
        source = sources.get(s.name, "")
        rows.append(Row((s.name, source_cell(source), shape, s.dtype, format_bytes(s.nbytes),
                         "saved", "-", reason),
                        (s.name, source, shape, s.dtype, s.nbytes, "saved", -1, reason)))
    return rows


def table_title(report: Report) -> str:
    if report.tensors:
        return "planned tensors"
    return f"saved tensors ({NOT_PLANNED})" if report.plan is None else "saved tensors"


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    numeric = {"bytes", "cost"}

    def line(cells: tuple[str, ...]) -> str:
        parts = [c.rjust(w) if h in numeric else c.ljust(w)
                 for c, w, h in zip(cells, widths, header, strict=True)]
        return "  ".join(parts).rstrip()

    return [line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows]


def chart_symbol(label: str, position: int) -> str:
    return CHART_SYMBOLS.get(label, _FALLBACK_SYMBOLS[position % len(_FALLBACK_SYMBOLS)])


def bucket_max(values: tuple[int, ...], buckets: int) -> list[int]:
    """`values` shrunk to at most `buckets` points, each the maximum of its bucket (peaks are
    never lost by downsampling)."""
    n = len(values)
    if n <= buckets:
        return list(values)
    return [max(values[i * n // buckets:(i + 1) * n // buckets]) for i in range(buckets)]


def ascii_timeline(timelines: tuple[Timeline, ...], budget: int | None, width: int = 72,
                   height: int = 12) -> list[str]:
    """Live bytes per step as a character chart: one symbol per timeline, '-' the budget,
    '|' the end of the forward steps."""
    steps = max(len(t.live_bytes) for t in timelines)
    if steps == 0:
        return ["(empty timeline)"]
    cols = min(width, steps)
    top = max([t.peak_bytes for t in timelines] + [budget or 0]) or 1
    grid = [[" "] * cols for _ in range(height)]

    def row_of(value: int) -> int:
        return height - 1 - min(height - 1, round(value / top * (height - 1)))

    boundary = timelines[-1].num_fwd_steps * cols // steps
    for r in range(height):
        if boundary < cols:
            grid[r][boundary] = "|"
    if budget is not None:
        grid[row_of(budget)] = ["-" if c == " " else c for c in grid[row_of(budget)]]
    for position, t in enumerate(timelines):
        scaled = bucket_max(t.live_bytes, max(1, len(t.live_bytes) * cols // steps))
        for col, value in enumerate(scaled):
            grid[row_of(value)][col] = chart_symbol(t.label, position)
    label_w = max(len(format_bytes(top)), len("0 B"))
    out = []
    for r, cells in enumerate(grid):
        label = format_bytes(top) if r == 0 else ("0 B" if r == height - 1 else "")
        out.append(f"{label.rjust(label_w)} |{''.join(cells)}")
    out.append(" " * label_w + " +" + "-" * cols)
    out.append(" " * label_w + f"  step 0 .. {steps - 1}; forward | backward")
    legend = [f"{chart_symbol(t.label, i)} {t.label} (peak {format_bytes(t.peak_bytes)})"
              for i, t in enumerate(timelines)]
    if budget is not None:
        legend.append(f"- budget {format_bytes(budget)}")
    out.extend(" " * label_w + "  " + item for item in legend)
    return out


def _graph_section(title: str, gm: Any, name: str) -> list[str]:
    if gm is None:
        return [f"== {title} ==", "(not recorded)", ""]
    return [f"== {title} ==", graph_code(gm, name).rstrip("\n"), ""]


def render_text(report: Report, *, graphs: bool = True) -> str:
    """The whole report as text; `graphs=False` leaves out the graph code."""
    out = [f"{graph_title(report)}", ""]
    items = summary_items(report)
    width = max(len(label) for label, _ in items)
    out += [f"  {label.ljust(width)}  {value}" for label, value in items]
    rows = table_rows(report)
    out += ["", f"== {table_title(report)}: {len(rows)} =="]
    out += format_table(TABLE_COLUMNS, [r.cells for r in rows]) if rows else ["(none)"]
    out += ["", "== predicted memory timeline =="]
    if report.timelines:
        out += ascii_timeline(report.timelines, report.budget_bytes)
    else:
        out.append(f"(no timeline: {NOT_PLANNED})")
    out.append("")
    if graphs:
        out += _graph_section("forward graph", report.forward_graph, "forward")
        out += _graph_section("backward graph", report.backward_graph, "backward")
    return "\n".join(out).rstrip("\n") + "\n"
