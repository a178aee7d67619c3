"""The dump folder: every stage of a report written, the plan and problem JSON read back equal,
and a report without a plan dumped without failing, with a note of what is missing and why."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from fxopt.plan import Plan
from fxopt.report.dump import dump_report
from fxopt.solver.problem import Problem
from tests.test_report_render import sample_report

STAGES = ("joint.py", "problem.json", "plan.json", "forward.py", "backward.py", "report.txt",
          "report.html")


def test_dump_writes_every_stage_and_plan_round_trips(tmp_path: Path) -> None:
    report = sample_report(index=3)
    written = dump_report(report, tmp_path / "dump")
    expected = {f"graph3_{s}" for s in STAGES}
    assert {p.name for p in written} == expected
    assert {p.name for p in (tmp_path / "dump").iterdir()} == expected
    assert all(p.stat().st_size > 0 for p in written)

    plan = Plan.from_json((tmp_path / "dump" / "graph3_plan.json").read_text())
    assert plan == report.plan and plan.content_hash == report.plan.content_hash
    problem = Problem.from_json_dict(
        json.loads((tmp_path / "dump" / "graph3_problem.json").read_text()))
    assert problem == report.problem

    backward = (tmp_path / "dump" / "graph3_backward.py").read_text()
    assert "def backward(" in backward and "# fxopt: recompute of relu" in backward
    joint = (tmp_path / "dump" / "graph3_joint.py").read_text()
    assert "def joint(" in joint and "aten.mm.default" in joint and "fxopt:" not in \
        joint.split("\n", 1)[1]
    assert "lowbit" in (tmp_path / "dump" / "graph3_report.txt").read_text()
    html = (tmp_path / "dump" / "graph3_report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "<table" in html


def test_dump_of_unplanned_report_notes_what_is_missing(tmp_path: Path) -> None:
    # a stale plan from an earlier planned run must not survive next to an unplanned report
    dump_report(sample_report(index=0), tmp_path)
    written = dump_report(sample_report(planned=False, index=0), tmp_path)
    names = {p.name for p in written}
    assert names == {"graph0_joint.py", "graph0_forward.py", "graph0_backward.py",
                     "graph0_report.txt", "graph0_report.html", "graph0_skipped.txt"}
    assert not (tmp_path / "graph0_plan.json").exists()
    assert not (tmp_path / "graph0_problem.json").exists()
    notes = (tmp_path / "graph0_skipped.txt").read_text().splitlines()
    assert len(notes) == 2
    assert all("not planned" in line for line in notes)
    assert notes[0].startswith("graph0_problem.json") and notes[1].startswith("graph0_plan.json")
    assert "not planned" in (tmp_path / "graph0_report.txt").read_text()
    # planned again: the note goes away
    dump_report(sample_report(index=0), tmp_path)
    assert not (tmp_path / "graph0_skipped.txt").exists()


def test_explain_reports_dump_under_their_own_prefix(tmp_path: Path) -> None:
    report = dataclasses.replace(sample_report(index=1), source="explain")
    written = dump_report(report, tmp_path)
    assert sorted(p.name for p in written) == sorted(f"explain1_{s}" for s in STAGES)
