"""A budget bounds the whole training step, however many graphs Dynamo cuts it into
(NOTE [Step budgets] in fxopt/step.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import fxopt
from fxopt.config import Options
from fxopt.solver import InfeasibleBudgetError
from fxopt.step import Step
from fxopt.step_runs import Coupling, GraphUse, couplings, own_peak, step_peak
from tests import zoo

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


# ---------------------------------------------------------------------------------------------
# the step model, on plain numbers

def use(held: int, fwd: int, bwd: int, boundary: int, grads: int = 0) -> GraphUse:
    return GraphUse(held, fwd, bwd, boundary, grads)


def test_couplings_by_hand():
    a, b, c = use(10, 12, 14, 11, 3), use(5, 8, 6, 7, 2), use(4, 9, 20, 6, 1)
    ca, cb, cc = couplings([a, b, c])
    # b runs beside a's 10 held bytes; c beside a's and b's 15
    assert (ca.held_before, cb.held_before, cc.held_before) == (0, 10, 15)
    # a run's inputs are the previous run's outputs (boundary less saved bytes): 1 and 2
    assert (ca.inputs, cb.inputs, cc.inputs) == (0, 11 - 10, 7 - 5)
    # on top of a's boundary (with b's input): b's forward 8, b's 5 held + c's backward 20
    assert ca.later_need == max(8, 5 + 20)
    assert cb.later_need == 20 and cc.later_need == 0
    assert (ca.grads_after, cb.grads_after, cc.grads_after) == (3, 1, 0)
    # the step peak: the worst run, with what the runs before it hold
    peak = step_peak([a, b, c])
    assert peak == max(0 + max(12, 11, 14 + 3), 10 + max(1 + 8, 7, 6 + 1),
                       15 + max(2 + 9, 6, 20))
    # each graph's bound holds it; a's and b's charge c's backward with their outputs too
    bounds = [cp.held_before + own_peak(u, cp) for u, cp in zip((a, b, c), (ca, cb, cc))]
    assert bounds == [peak + 1, peak + 2, peak]


def test_interleaved_runs_by_hand():
    """NOTE [The step's runs]: a graph run twice with another between (blocks sharing one
    compiled graph) holds one run's saved bytes while the other graph runs, not both."""
    a, b = use(10, 12, 14, 11), use(5, 8, 6, 7)
    ab = [dataclasses.replace(a, copies=2), dataclasses.replace(b, copies=2)]
    interleaved = step_peak(ab, order=[0, 1, 0, 1])
    # runs a b a b, inputs 0 1 2 1 (a's output is 1 byte, b's 2)
    assert interleaved == max(0 + max(12, 11, 14), 10 + max(1 + 8, 7, 6),
                              15 + max(2 + 12, 11, 14), 25 + max(1 + 8, 7, 6))
    # in compile order (a a b b) b's first run would come after both of a's
    assert step_peak(ab) == max(0 + 14, 10 + max(1 + 12, 11, 14), 20 + max(1 + 8, 7, 6),
                                25 + max(2 + 8, 7, 6)) > interleaved
    ca, cb = couplings(ab, order=[0, 1, 0, 1])
    assert (ca.copies, cb.copies) == (2, 2) and (ca.inputs, cb.inputs) == (2, 1)
    assert ca.held_before == 5 and cb.held_before == 20
    # a's bound: its second run beside b's first (5 + 10 + 2 + 12 = 29) or, on top of its
    # boundary (with b's input), b's second run (5 + 10 + 11 + 8)
    assert ca.held_before + own_peak(ab[0], ca) == interleaved
    # b's: its last run (20 + 5 + 1 + 8 = 34) or a's second run on b's boundary (20 + 5 + 7 + 4)
    assert cb.held_before + own_peak(ab[1], cb) == 36
    assert interleaved == 34


def test_a_later_graph_that_does_not_fit_re_plans_the_earlier_one():
    step = Step(Options(budget=100))
    first = step.share("g0", use(60, 70, 70, 65), None)
    assert first.strict and first.budget_bytes == 100 and first.coupling == Coupling()
    assert step.record("g0", use(60, 70, 70, 65), first.coupling) == []
    second = step.share("g1", use(30, 50, 50, 40), None)
    assert second.budget_bytes == 40 and second.coupling.held_before == 60
    assert second.room_elsewhere  # g0 holds 60 and may still be re-planned
    # g1 at its smallest (50) does not fit beside g0's 60: g0 is to be planned again
    assert step.record("g1", use(30, 50, 50, 40), second.coupling) == ["g0"]
    assert step.is_stale("g0") and step.stale_keys() == ["g0"]
    again = step.share("g0", use(60, 70, 70, 65), None)
    assert again.coupling.later_need == 50
    step.record("g0", use(20, 40, 40, 30), again.coupling)
    assert not step.stale_keys() and step.peak_bytes() == max(30 + 50, 20 + 50)


def test_fraction_is_of_the_steps_keep_everything_peak():
    step = Step(Options(budget=0.5))
    step.share("g0", use(60, 80, 80, 70), None)
    step.record("g0", use(30, 50, 50, 40), Coupling())
    second = step.share("g1", use(20, 40, 40, 30), None)
    # keep-everything step: max(80, 70 + 40, 60 + 40) = 110 -> the step's budget is 55
    assert second.step_budget_bytes == 55 and not second.strict
    assert second.budget_bytes == 55 - 30


def test_measured_excess_counts_once_as_memory_after_the_last_forward():
    step = Step(Options(budget=100))
    step.share("g0", use(40, 60, 60, 50), None)
    step.record("g0", use(40, 60, 60, 50), Coupling())
    assert not step.measure_due()  # the step that compiled g0 ran its first run
    step.started_run("g0")
    assert step.step_done() == [] and step.measure_due()  # a step without compiling
    assert step.measured(95) == []  # within the budget: nothing to do
    step = Step(Options(budget=100))
    step.share("g0", use(40, 60, 60, 50), None)
    step.record("g0", use(40, 60, 60, 50), Coupling())
    assert step.measured(120) == ["g0"] and step.unplanned_bytes == 70
    assert step.peak_bytes() == 50 + 70  # the boundary, then the eager code's 70 bytes
    assert step.measured(130) == []  # counted once


# ---------------------------------------------------------------------------------------------
# real models through fxopt.explain: the predicted step peak is within the budget

def explain(case: str, **options):
    model, inputs, targets = zoo.build(case, batch=8)
    keys = list(targets)
    loss = zoo.get(case).loss
    return fxopt.explain(model, kwargs=inputs, targets=tuple(targets.values()),
                         loss_fn=lambda out, *t: loss(out, dict(zip(keys, t))), **options)


@pytest.mark.parametrize("case", ["graph_break", "fno_opt_einsum"])
def test_absolute_budget_holds_the_predicted_step_peak(case):
    low = explain(case, budget=0.01)  # below reach: the smallest step peak fxopt finds
    keep = low.baseline_peak_bytes
    assert len(low) >= 2 and low.peak_bytes < keep
    budget = (low.peak_bytes + keep) // 2
    step = explain(case, budget=budget)
    assert not step.fallbacks
    assert step.peak_bytes <= budget * 1.05, (step.peak_bytes, budget)
    for r in step.graphs[1:]:  # every graph after the first runs beside the earlier ones
        assert r.coupling.held_before > 0 and r.step_budget_bytes == budget


@pytest.mark.parametrize("case", ["graph_break", "fno_opt_einsum"])
def test_fraction_never_raises_and_says_so_once(case, caplog):
    with caplog.at_level(logging.WARNING, logger="fxopt"):
        step = explain(case, budget=0.3)
    assert not step.fallbacks and step.peak_bytes is not None
    below = [r for r in caplog.records if "below the smallest peak" in r.getMessage()]
    assert len(below) <= 1


@pytest.mark.parametrize("case", ["graph_break", "fno_opt_einsum", "hf_gpt2"])
def test_without_a_budget_never_above_pytorchs_partition(case):
    step = explain(case)
    assert not step.fallbacks
    assert step.peak_bytes <= step.default_peak_bytes, (step.peak_bytes, step.default_peak_bytes)
    for r in step.graphs:  # where PyTorch's partition is lower it is chosen, not fallen back to
        if r.status == "DEFAULT_LOWER":
            assert r.fallback_reason is None and r.plan is None
            assert r.peak_bytes == r.default_peak_bytes


def test_unreachable_absolute_budget_names_a_reachable_step_minimum():
    low = explain("graph_break", budget=0.01)
    with pytest.raises(InfeasibleBudgetError) as info:
        explain("graph_break", budget=low.peak_bytes // 3)
    named = info.value.min_peak_bytes
    assert "Raise the budget to at least" in str(info.value) and "offload" not in str(info.value)
    step = explain("graph_break", budget=named)  # asking for the minimum named gets a plan
    assert step.peak_bytes <= named * 1.05


# ---------------------------------------------------------------------------------------------
# the backend: earlier graphs are recompiled with the step's coupling, gradients stay right

class TwoGraphs(nn.Module):
    def __init__(self, depth: int = 3) -> None:
        super().__init__()
        self.a = nn.Sequential(*[nn.Linear(128, 128) for _ in range(depth)])
        self.b = nn.Sequential(*[nn.Linear(128, 128) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.a:
            x = torch.tanh(layer(x))
        torch._dynamo.graph_break()
        for layer in self.b:
            x = torch.tanh(layer(x))
        return x


def graphs_peak(step: fxopt.StepReport, use: str) -> int:
    """The step's predicted peak without the memory outside the graphs, which explain sees
    (NOTE [Memory outside the graphs] in fxopt/outside.py) and the backend does not."""
    uses = [dataclasses.replace(getattr(r, use), copies=c)
            for r, c in zip(step.graphs, step.copies)]
    return step_peak(uses, step.order)


def test_backend_replans_earlier_graphs_and_gradients_match_eager():
    torch.manual_seed(0)
    model, x = TwoGraphs(), torch.randn(256, 128)
    ref = TwoGraphs()
    ref.load_state_dict(model.state_dict())
    ref(x).pow(2).mean().backward()
    low = fxopt.explain(model, x, loss_fn=lambda o: o.pow(2).mean(), budget=0.01)
    # the graphs' own peaks: the backend sees the eager loss only once it measures a step
    lowest, keep = graphs_peak(low, "plan_use"), graphs_peak(low, "keep_use")
    budget = lowest + (keep - lowest) // 4
    fxopt.clear_reports()
    backend = fxopt.backend(budget=budget)
    compiled = torch.compile(model, backend=backend)
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        compiled(x).pow(2).mean().backward()
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    step = backend.step_report()
    assert len(step) == 2 and len(fxopt.reports()) >= 3, "the first graph was planned again"
    assert step.peak_bytes <= budget * 1.05
    assert fxopt.step_report().graphs == step.graphs


def test_a_failed_compile_leaves_its_report(tmp_path):
    fxopt.clear_reports()
    model = nn.Sequential(nn.Linear(64, 512), nn.GELU(), nn.Linear(512, 1))
    compiled = torch.compile(model, backend=fxopt.backend(budget=1000, dump_dir=tmp_path))
    with pytest.raises(Exception, match="cannot be met"):
        compiled(torch.randn(256, 64)).sum().backward()
    (report,) = fxopt.reports()
    assert report.error and "cannot be met" in report.error and report.problem is not None
    assert "error" in report.summary() and "cannot be met" in str(report)
    assert any(tmp_path.iterdir()), "the dump folder has the failed graph"


# ---------------------------------------------------------------------------------------------
# measured: the budget the user gave is the peak the user gets

SCRIPT = textwrap.dedent("""
    import json, sys, torch, fxopt
    from tests.test_step_budget import TwoGraphs
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, x = TwoGraphs(depth=6), torch.randn(1024, 128)
    budget = int(sys.argv[1])
    backend = fxopt.backend(budget=budget)
    compiled = torch.compile(model, backend=backend)
    for _ in range(6):
        model.zero_grad(set_to_none=True)
        (compiled(x) * 2).pow(2).mean().backward()
    step = backend.step_report()
    print(json.dumps({"measured": step.measured_peak_bytes, "unplanned": step.unplanned_bytes,
                      "predicted": step.peak_bytes}))
""")


def test_measured_step_peak_holds_the_budget(tmp_path):
    torch.manual_seed(0)
    model, x = TwoGraphs(depth=6), torch.randn(1024, 128)
    # The graphs keeping everything fit exactly; the loss computed eagerly on the output does
    # not (it holds `o * 2` for its backward, beside the output and its gradient), until the
    # measured step shows it and the graphs are planned again around it.
    budget = graphs_peak(fxopt.explain(model, x, loss_fn=lambda o: (o * 2).pow(2).mean()),
                         "keep_use")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(script), str(budget)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["measured"] is not None, "a step under a budget is measured"
    assert out["unplanned"] > 0, "the eager loss outside the graphs is found and counted"
    assert out["measured"] <= budget * 1.05, (out, budget)


def test_without_a_budget_a_graph_above_pytorchs_partition_beside_later_ones_is_replanned():
    # g0's plan leaves more live at its boundary than PyTorch's partition (60 against 50):
    # harmless alone (its backward peaks at 90), above PyTorch's once g1 needs room after it.
    step = Step(Options())
    step.share("g0", use(40, 60, 90, 50), use(40, 60, 90, 50))
    assert step.record("g0", use(40, 60, 90, 60), Coupling()) == []
    step.share("g1", use(10, 80, 20, 15), use(10, 80, 20, 15))
    assert step.record("g1", use(10, 80, 20, 15), Coupling()) == ["g0"]
    assert step.stale_keys() == ["g0"]


def test_memory_measured_outside_is_counted_where_the_eager_loss_holds_it():
    # The prediction peaks in the backward (90) but holds 50 after the forward, where an eager
    # loss runs: a measured 100 is 50 held there, not the 10 over the predicted peak.
    step = Step(Options(budget=95))
    step.share("g0", use(40, 60, 90, 50), None)
    step.record("g0", use(40, 60, 90, 50), Coupling())
    assert step.measured(100) == ["g0"]
    assert step.unplanned_bytes == 50
    assert step.peak_bytes() == 100  # the prediction now says what was measured


def test_a_step_measured_over_a_size_with_nothing_left_to_replan_is_refused():
    step = Step(Options(budget=100))
    step.share("g0", use(40, 60, 60, 50), None)
    step.record("g0", use(40, 60, 60, 50), Coupling())
    assert step.measured(120) == ["g0"] and step.over_budget_error() is None  # re-plan first
    again = step.share("g0", use(40, 60, 60, 50), None)
    step.record("g0", use(30, 45, 45, 35), again.coupling)  # as low as it goes
    step.started_run("g0")
    step.step_done()  # a step without compiling
    assert step.measure_due()  # once more, after the re-plan for what the first one found
    assert step.measured(102) == [] and step.over_budget_error() is None  # within 5%
    step.measured(110)
    err = step.over_budget_error()
    assert err is not None and err.min_peak_bytes == 110 and "measured outside" in str(err)
