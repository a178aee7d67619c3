"""Write every stage of one compile to a folder (`FXOPT_DUMP_DIR` / `Options.dump_dir`).

Per graph, with prefix `graph{index}` (`explain{index}` for a report of `fxopt.explain`):
    _joint.py        the joint forward-backward graph before partitioning
    _problem.json    the planner's Problem (`Problem.to_json_dict`)
    _plan.json       the Plan (`Plan.to_json`; `Plan.from_json` reads it back)
    _forward.py      the forward graph after fxopt, inserted nodes marked
    _backward.py     the backward graph after fxopt, inserted nodes marked
    _report.txt      the report as text
    _report.html     the report as HTML
A stage the report lacks (no plan when the graph was not planned, no joint graph) is not
written; `_skipped.txt` lists each such file and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fxopt.report.graph_code import graph_code
from fxopt.report.html import render_html
from fxopt.report.model import Report
from fxopt.report.text import render_text

_HTML_PAGE = ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>'
              "<body>\n{body}\n</body></html>\n")


def dump_prefix(report: Report) -> str:
    return f"{'explain' if report.source == 'explain' else 'graph'}{report.index}"


def _graph_file(gm: Any, name: str, title: str) -> str:
    header = f"# {title}: readable code of the FX graph, '# fxopt:' marks nodes fxopt inserted\n"
    return header + graph_code(gm, name, full=True)


def _stages(report: Report) -> list[tuple[str, Callable[[], str] | None, str]]:
    """(file suffix, producer of its text or None when the report lacks it, why it is missing)."""
    not_planned = f"the graph was not planned (strategy {report.strategy!r}" + (
        f", fallback: {report.fallback_reason})" if report.fallback_reason else ")")
    plan, problem, joint = report.plan, report.problem, report.joint_graph
    fwd, bwd = report.forward_graph, report.backward_graph
    return [
        ("joint.py", None if joint is None else
         (lambda: _graph_file(joint, "joint", "joint graph before partitioning")),
         "the report holds no joint graph"),
        ("problem.json", None if problem is None else
         (lambda: json.dumps(problem.to_json_dict(), indent=1, sort_keys=True) + "\n"),
         not_planned if plan is None else "the report holds no planning problem"),
        ("plan.json", None if plan is None else (lambda: plan.to_json() + "\n"), not_planned),
        ("forward.py", None if fwd is None else
         (lambda: _graph_file(fwd, "forward", "forward graph after fxopt")),
         "the report holds no forward graph"),
        ("backward.py", None if bwd is None else
         (lambda: _graph_file(bwd, "backward", "backward graph after fxopt")),
         "the report holds no backward graph"),
        ("report.txt", lambda: render_text(report), ""),
        ("report.html", lambda: _HTML_PAGE.format(title=dump_prefix(report),
                                                  body=render_html(report)), ""),
    ]


def dump_report(report: Report, directory: str | Path) -> list[Path]:
    """Writes the report's stages into `directory` (created if missing); returns the files
    written, `_skipped.txt` included when a stage was missing."""
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the fxopt dump folder {folder} ({err.strerror}); set "
                      "FXOPT_DUMP_DIR / dump_dir to a writable folder") from err
    prefix = dump_prefix(report)
    written: list[Path] = []
    skipped: list[str] = []
    for suffix, produce, why in _stages(report):
        path = folder / f"{prefix}_{suffix}"
        if produce is None:
            path.unlink(missing_ok=True)  # a stale file from an earlier run would mislead
            skipped.append(f"{path.name}: not written: {why}")
            continue
        path.write_text(produce(), encoding="utf-8")
        written.append(path)
    notes = folder / f"{prefix}_skipped.txt"
    if skipped:
        notes.write_text("\n".join(skipped) + "\n", encoding="utf-8")
        written.append(notes)
    else:
        notes.unlink(missing_ok=True)
    return written
