"""Rendering a Report: HTML (summary, sortable table, SVG timeline, marked inserted nodes), text,
and graph code with shape/dtype comments. Reports are built by hand from small FX graphs."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import torch
import torch.fx as fx
from torch.fx.experimental.proxy_tensor import make_fx

from fxopt.config import Options, parse_budget
from fxopt.pipeline import Planned
from fxopt.plan import Decision, Kind, Plan, tag
from fxopt.problem_builder import BuiltProblem
from fxopt.report.graph_code import describe_value, graph_code, graph_lines
from fxopt.report.html import render_html, timeline_svg
from fxopt.report.model import Report, SavedTensor, Stage, TensorRow, Timeline
from fxopt.report.text import ascii_timeline, bucket_max, render_text
from fxopt.solver.problem import Candidate, Problem
from fxopt.step import Share
from fxopt.step_runs import Coupling, GraphUse


def _forward(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    h = x @ w
    a = torch.relu(h)
    b = torch.sin(a)
    return b.sum(), h, a, b


def _backward(x: torch.Tensor, w: torch.Tensor, h: torch.Tensor, b: torch.Tensor,
              g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    a = torch.relu(h)  # recomputed from h
    grad_a = g * torch.cos(a) * (b * 0 + 1)
    grad_h = grad_a * (h > 0)
    return x.t() @ grad_h, grad_h @ w.t()


def _joint(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    loss, h, a, b = _forward(x, w)
    return (loss,) + _backward(x, w, h, b, g)


def _trace(fn, *shapes: tuple[int, ...]) -> fx.GraphModule:
    return make_fx(fn, tracing_mode="fake")(*(torch.randn(s) for s in shapes))


def sample_graphs() -> tuple[fx.GraphModule, fx.GraphModule, fx.GraphModule]:
    """(joint, forward, backward); in backward, relu is tagged as recomputed and the input b
    as restored by the offload pass."""
    joint = _trace(_joint, (8, 16), (16, 4), ())
    fwd = _trace(_forward, (8, 16), (16, 4))
    bwd = _trace(_backward, (8, 16), (16, 4), (8, 4), (8, 4), ())
    nodes = {n.name: n for n in bwd.graph.nodes}
    tag(nodes["relu"], "recompute", "relu", "recompute")
    tag(nodes["b_1"], "offload", "sin", "offload")
    return joint, fwd, bwd


def sample_plan() -> Plan:
    decisions = (Decision("mm", Kind.KEEP), Decision("relu", Kind.RECOMPUTE, restore_step=6),
                 Decision("sin", Kind.OFFLOAD, restore_step=5),
                 Decision("cos", Kind.LOWBIT, restore_step=7, fmt="int8"))
    return Plan(decisions=decisions, peak_bytes=512, budget_bytes=600, baseline_peak_bytes=896,
                extra_time_us=1375, status="OPTIMAL", solve_seconds=0.042,
                problem_hash="p" * 64, options_hash="o" * 64, warnings=("a test warning",),
                objective_bound_us=1300)


def sample_problem() -> Problem:
    cands = (Candidate("mm", 128, 0, 1, (5, 7)), Candidate("relu", 128, 1, 2, (6,), (0,), 3),
             Candidate("sin", 128, 2, 3, (5,), (1,), 4, copy_us=9),
             Candidate("cos", 128, 3, 3, (7,), (1,), 2, lowbit_bytes=40, cast_us=1))
    return Problem(9, 4, (64,) * 9, (1,) * 9, cands)


def sample_report(*, planned: bool = True, index: int = 3) -> Report:
    joint, fwd, bwd = sample_graphs()
    saved = (SavedTensor("h", ("8", "4"), "float32", 128), SavedTensor("b", ("8", "4"),
                                                                     "float32", 128))
    if not planned:
        return Report(options=Options(), strategy="min-cut", fallback_reason=None, plan=None,
                      peak_bytes=None, solve_seconds=0.0, joint_ops=20, forward_ops=4,
                      backward_ops=9, saved=saved, seconds=0.25,
                      stages=(Stage("partition", 0.2),), forward_graph=fwd, backward_graph=bwd,
                      index=index, joint_graph=joint)
    tensors = (
        TensorRow("mm", ("8", "4"), "float32", 128, "keep", 0, "needed early in backward"),
        TensorRow("relu", ("8", "4"), "float32", 128, "recompute", 3, "cheap to recompute"),
        TensorRow("sin", ("8", "4"), "float32", 4096, "offload", 1200, "copy hidden by compute"),
        TensorRow("cos", ("8", "4"), "float32", 128, "lowbit", 172, "int8 <tolerance> & ok"),
    )
    keep = (128, 256, 512, 896, 896, 768, 512, 256, 128)
    timelines = (Timeline("keep everything", keep, 4),
                 Timeline("PyTorch default", (128, 256, 384, 640, 640, 640, 384, 256, 128), 4),
                 Timeline("fxopt plan", (128, 256, 384, 512, 384, 512, 384, 256, 128, 64), 4))
    stages = (Stage("plan", 0.05), Stage("apply", 0.01))
    use = GraphUse(256, 512, 512, 512)
    planned = Planned(fwd, bwd, sample_plan(), BuiltProblem(sample_problem(), (), (), ()),
                      baseline_peak_bytes=896, budget_bytes=600,
                      share=Share(600, True, Coupling(), 600), use=use,
                      keep_use=GraphUse(512, 896, 768, 896), tensors=tensors,
                      timelines=(timelines[0], timelines[2]), stages=stages)
    return Report(options=Options(budget=parse_budget(600)), strategy="fxopt",
                  fallback_reason=None, plan=sample_plan(), peak_bytes=512,
                  solve_seconds=0.042, joint_ops=20, forward_ops=4, backward_ops=9, saved=saved,
                  seconds=0.25, stages=stages, forward_graph=fwd, backward_graph=bwd,
                  index=index, status="OPTIMAL", extra_time_us=1375, default_peak_bytes=640,
                  tensors=tensors, timelines=timelines, joint_graph=joint, plan_use=use,
                  planned=planned)


class _Collector(HTMLParser):
    """Tags, table cells and the text under each tag of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.cells: list[str] = []
        self.headers: list[str] = []
        self._text: list[str] | None = None

    def handle_starttag(self, tag_name: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag_name, dict(attrs)))
        if tag_name in ("td", "th"):
            self._text = []

    def handle_endtag(self, tag_name: str) -> None:
        if tag_name in ("td", "th") and self._text is not None:
            (self.cells if tag_name == "td" else self.headers).append("".join(self._text))
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def _parse(html: str) -> _Collector:
    parser = _Collector()
    parser.feed(html)
    parser.close()
    return parser


def test_html_has_summary_sortable_table_svg_and_marked_nodes() -> None:
    report = sample_report()
    html = render_html(report)
    doc = _parse(html)
    tables = [attrs for name, attrs in doc.tags if name == "table"]
    assert any(a.get("class") == "fxopt-tensors" for a in tables)
    for column in ("name", "shape", "dtype", "bytes", "choice", "cost", "reason"):
        assert column in doc.headers
    # every planned tensor is a row, its choice shown; text is escaped, not injected
    for row in report.tensors:
        assert row.name in doc.cells and row.choice in doc.cells
    assert "int8 <tolerance> & ok" in doc.cells and "<tolerance>" not in html
    assert "1.20 ms" in doc.cells  # cost of the offload row (1200 us)
    # numeric columns sort by value: the data-sort key of the bytes cell is the raw count
    assert 'data-sort="4096"' in html
    assert "<script>" in html and "addEventListener('click'" in html
    # summary: budget, both peaks, time overhead, solver time and status
    text = " ".join(doc.cells)
    for needle in ("600 B", "512 B", "896 B", "640 B", "1.38 ms", "42 ms", "OPTIMAL",
                   "a test warning"):
        assert needle in text, needle
    # the picture: an inline SVG with one line per timeline and the budget line
    svgs = [a for name, a in doc.tags if name == "svg"]
    assert len(svgs) == 1
    assert sum(1 for name, a in doc.tags if name == "polyline") == 3
    assert any(name == "line" and a.get("class") == "budget" for name, a in doc.tags)
    for label in ("keep everything", "PyTorch default", "fxopt plan"):
        assert label in html
    # the graphs, with fxopt's inserted nodes highlighted and named
    inserted = [a for name, a in doc.tags if a.get("class") == "fxopt-inserted"]
    assert len(inserted) == 2
    assert "fxopt: recompute of relu" in html and "fxopt: offload of sin" in html
    assert "f32[8, 4]" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_html_of_unplanned_report_says_not_planned() -> None:
    report = sample_report(planned=False)
    html = render_html(report)
    doc = _parse(html)
    assert "not planned" in html
    assert not any(name == "svg" for name, _ in doc.tags)
    # the table still lists what PyTorch's partition saved
    assert "h" in doc.cells and "b" in doc.cells and "saved" in doc.cells


def test_repr_html_and_str_use_the_renderers() -> None:
    report = sample_report()
    assert "<svg" in report._repr_html_()
    assert str(report).startswith("fxopt graph 3")
    assert "fxopt: recompute of relu" in str(report)


def test_text_has_summary_table_chart_and_graphs() -> None:
    report = sample_report()
    text = render_text(report)
    assert "predicted peak with the plan" in text and "within budget" in text
    assert re.search(r"^cos\s+-\s+\[8, 4\]\s+float32\s+128 B\s+lowbit\s+172 us", text, re.M)
    assert "# fxopt plan (peak 512 B)" in text and "- budget 600 B" in text
    assert "def backward(" in text and "# fxopt: offload of sin" in text
    assert "def forward(" in text and "OPTIMAL" in text
    short = render_text(report, graphs=False)
    assert "def forward(" not in short and "lowbit" in short
    assert "not planned" in render_text(sample_report(planned=False))


def test_ascii_chart_marks_peak_budget_and_boundary() -> None:
    timelines = (Timeline("keep everything", (0, 10, 20, 10), 2),
                 Timeline("fxopt plan", (0, 5, 10, 5), 2))
    lines = ascii_timeline(timelines, budget=15, width=4, height=5)
    grid = [line.split("|", 1)[1] for line in lines[:5]]
    assert grid[0][2] == "."  # the keep-everything peak is on the top row at step 2
    assert grid[1] == "--|-"  # budget 15 of 20 -> second row; forward ends before step 2
    assert sum(row.count("#") for row in grid) == 4
    assert [g[2] for g in grid] == [".", "|", "#", "|", "|"]


def test_bucket_max_keeps_peaks() -> None:
    values = tuple(range(100)) + (1000,) + tuple(range(100))
    shrunk = bucket_max(values, 7)
    assert len(shrunk) == 7 and max(shrunk) == 1000
    assert bucket_max((1, 2), 7) == [1, 2]


def test_svg_scales_long_schedules_and_escapes_labels() -> None:
    live = tuple((i * 7919) % 1000 for i in range(20_000))
    svg = timeline_svg((Timeline("a<b", live, 9_000),), budget=None)
    assert svg.count("<polyline") == 1 and "a&lt;b" in svg and "budget" not in svg
    points = re.search(r'points="([^"]*)"', svg).group(1).split()
    assert len(points) <= 2 * 1500
    assert "peak 999 B" in svg


def test_graph_code_has_shapes_and_markers() -> None:
    _, fwd, bwd = sample_graphs()
    code = graph_code(fwd, "forward")
    assert code.startswith("def forward(")
    assert re.search(r"mm = aten\.mm\.default\(\w+, \w+\)  # f32\[8, 4\]$", code, re.M)
    assert re.search(r"return \(sum_1, mm, relu, sin\)$", code, re.M)
    lines = graph_lines(bwd, "backward")
    marked = {line.inserted.tensor: line for line in lines if line.inserted is not None}
    assert set(marked) == {"relu", "sin"}
    assert marked["relu"].text().endswith("# f32[8, 4]  # fxopt: recompute of relu")
    assert "b_1: f32[8, 4]" in marked["sin"].code
    assert sum(1 for line in lines if line.inserted is None and "fxopt:" in line.text()) == 0


def test_describe_value_covers_tuples_symbols_and_others() -> None:
    gm = make_fx(lambda x: torch.var_mean(x, [0]), tracing_mode="symbolic")(torch.randn(3, 5))
    vm = next(n for n in gm.graph.nodes if n.op == "call_function" and "var_mean" in str(n.target))
    assert re.fullmatch(r"\(f32\[s\d+\], f32\[s\d+\]\)", describe_value(vm.meta["val"]))
    assert describe_value(None) == "" and describe_value(3) == ""
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    assert describe_value(x.meta["val"].shape[0]).startswith("sym s")
