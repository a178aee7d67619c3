"""Smoke test of the Pareto benchmark: one eager configuration in a child process (no compile),
and the CSV / machine description / plot written from its record."""

from __future__ import annotations

import csv

from benchmarks.bench_pareto import Config, MiB, Record, run_in_subprocess
from benchmarks.plot import COLUMNS, write_outputs


def test_eager_child_record_and_outputs(tmp_path):
    cfg = Config(model="fno", method="eager", mode="quick", steps=2)
    rec = run_in_subprocess(cfg, timeout_s=120)
    assert rec.status == "ok", rec.status
    assert rec.label == "eager" and rec.model == "fno"
    # quick FNO: activations of a few MiB at least; the RSS peak sees them
    assert rec.peak_bytes is not None and rec.peak_bytes > 2 * MiB
    assert rec.step_s is not None and rec.step_s > 0
    assert rec.compile_s is not None
    assert rec.grad_rel_err == 0.0 and rec.grad_ok is True  # eager against an eager copy
    assert rec.solve_s is None and rec.graphs == 0

    infeasible = Record("fno", "fxopt 0.5", "fxopt", "quick", "cpu",
                        status="infeasible (min 28.1 MiB)", budget_bytes=10 * MiB,
                        min_peak_bytes=28 * MiB)
    write_outputs([rec, infeasible], str(tmp_path), "cpu", "quick")
    with open(tmp_path / "pareto_cpu.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert [r["label"] for r in rows] == ["eager", "fxopt 0.5"]
    assert float(rows[0]["peak_mib"]) == round(rec.peak_bytes / MiB, 2)
    assert rows[1]["peak_mib"] == "" and rows[1]["min_peak_mib"] == "28.00"
    assert "torch" in (tmp_path / "MACHINE.md").read_text()
    assert (tmp_path / "pareto_cpu.png").exists() or (tmp_path / "pareto_cpu.svg").exists()


def test_labels():
    c = dict(model="gpt", mode="quick")
    assert Config(method="fxopt", budget=0.5, **c).label == "fxopt 0.5"
    assert Config(method="fxopt", budget=None, **c).label == "fxopt default"
    assert Config(method="fxopt", budget=20 * MiB, lowbit="fp8", **c).label == "fxopt 20.0MiB fp8"
    assert Config(method="pt_budget", fraction=0.0, **c).label == "pt_budget 0"
