"""The search: deterministic work, the wall-clock safety net, no silent loss, honest status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.synthetic import GPTShape, gpt_problem
from fxopt.solver import (
    Choices,
    InfeasibleBudgetError,
    Plan,
    SearchTimeoutError,
    SolverOptions,
    Status,
    solve,
    validate,
)
from tests.test_solver_optimal import chain

ROOT = Path(__file__).resolve().parents[1]
# Large enough that the work limit, not a proof, ends the search.
BIG = GPTShape(layers=12, d_model=256, seq=512, batch=4, heads=4, vocab=4096)
SMALL = GPTShape(layers=6, d_model=256, seq=512, batch=4, heads=4, vocab=4096)


def _solve_in_subprocess(shape: GPTShape, fraction: float, opts: dict) -> str:
    """The plan's hash from a fresh interpreter with another hash seed."""
    code = ("import json, sys\n"
            "from benchmarks.synthetic import GPTShape, gpt_problem\n"
            "from fxopt.solver import SolverOptions, solve\n"
            "shape, frac, opts = json.loads(sys.argv[1])\n"
            "plan = solve(gpt_problem(GPTShape(**shape)), frac, SolverOptions(**opts))\n"
            "print(plan.content_hash)\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps([vars(shape), fraction, opts])],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_same_plan_under_any_wall_clock_limit_and_process() -> None:
    """The work limit, not the clock, ends the search: the plan is the same twice, under
    another wall-clock safety net, and in another process (every rank plans alike)."""
    p = gpt_problem(BIG)
    opts = dict(work_limit=0.2, allow_lowbit="fp8", allow_offload=True)
    first = solve(p, 0.5, SolverOptions(**opts, time_limit_s=60.0), cache_dir=None)
    assert first.status not in (Status.OPTIMAL, Status.WITHIN_GAP)  # the work limit ended it
    assert first.work is not None and first.work >= 0.2 * 0.99
    second = solve(p, 0.5, SolverOptions(**opts, time_limit_s=600.0), cache_dir=None)
    assert second.content_hash == first.content_hash
    assert SolverOptions(**opts, time_limit_s=1.0).content_hash == \
        SolverOptions(**opts).content_hash  # the safety net is no part of the plan
    assert _solve_in_subprocess(BIG, 0.5, opts) == first.content_hash


def test_the_safety_net_fails_loudly() -> None:
    p = gpt_problem(BIG)
    with pytest.raises(SearchTimeoutError, match="time_limit_s.*work_limit"):
        solve(p, 0.5, SolverOptions(work_limit=100.0, time_limit_s=1e-3), cache_dir=None)


def test_out_of_work_is_an_error_naming_a_peak_it_returns() -> None:
    """A budget the search cannot meet within its work is no silent fallback: the error says
    the work ran out, which option gives more, and a peak that asking for returns a plan."""
    p = gpt_problem(SMALL)
    opts = SolverOptions(work_limit=0.01)
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(p, 0.2, opts, cache_dir=None)
    err = info.value
    assert err.limit is not None and err.limit.work == 0.01 and not err.min_peak_proven
    assert "ran out of its work limit (work_limit=0.01)" in str(err)
    assert "FXOPT_WORK_LIMIT" in str(err)
    # with the proven distance from the lowest peak any plan of those choices can reach
    assert err.min_peak_bound_bytes is not None and 0.0 <= err.min_peak_gap < 1.0
    assert f"{100 * err.min_peak_gap:.1f}% above the lowest any plan" in str(err)
    for asked in (err.min_peak_bytes, err.min_peak_bytes + 4096):  # no cache: found again
        plan = solve(p, asked, opts, cache_dir=None)
        validate(p, plan)
        assert plan.peak_bytes <= asked
    # with more work: a budget below what every plan holds is proven unreachable, and the
    # minimum named is as low or lower, proven or said not to be, and met when asked for
    more_work = SolverOptions(work_limit=20.0)
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(p, 0.2, more_work, cache_dir=None)
    more = info.value
    assert more.limit is None and more.min_peak_bytes <= err.min_peak_bytes
    assert ("not proven minimal" in str(more)) != more.min_peak_proven
    assert solve(p, more.min_peak_bytes, more_work, cache_dir=None).peak_bytes <= \
        more.min_peak_bytes


def test_status_says_which_plan_and_over_which_choices() -> None:
    # a three-tensor chain, every restore step in the model: optimal over the full choice set
    plan = solve(chain(3), 200, SolverOptions(), cache_dir=None)
    assert plan.status is Status.OPTIMAL and plan.choices is Choices.FULL and plan.gap == 0.0
    assert plan.quality() == "OPTIMAL: the greedy plan; optimal over the full choice set"
    # a GPT: a few restore points per tensor, so optimal only over those
    p = gpt_problem(SMALL)
    plan = solve(p, 0.45, SolverOptions(), cache_dir=None)
    assert plan.choices is Choices.RESTRICTED and plan.status is Status.OPTIMAL
    assert plan.quality().startswith("OPTIMAL: ")
    assert plan.quality().endswith("; optimal over a restricted choice set")
    # cut short: the greedy plan, or one better, with its distance to the bound where proven
    cut = solve(gpt_problem(BIG), 0.5, SolverOptions(work_limit=0.2, allow_lowbit="fp8",
                                                      allow_offload=True), cache_dir=None)
    assert cut.status in (Status.GREEDY, Status.IMPROVED)
    assert cut.objective_us is not None and cut.objective_us >= (cut.objective_bound_us or 0)
    assert cut.greedy_objective_us is not None
    if cut.status is Status.GREEDY:
        assert cut.quality().startswith("GREEDY: the greedy plan; ")
    else:
        assert cut.quality().startswith("IMPROVED: improved on the greedy plan (")
    assert "restricted choice set" in cut.quality()
    again = Plan.from_json(cut.to_json())
    assert again == cut and again.choices is Choices.RESTRICTED and again.gap == cut.gap
