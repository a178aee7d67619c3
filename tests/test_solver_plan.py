"""Plan format, determinism, cache, errors and the synthetic GPT generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fxopt.solver.planner as solve_module
from benchmarks.synthetic import GPTShape, gpt_problem
from fxopt.plan import LowbitFormat
from fxopt.solver import (
    Candidate,
    Decision,
    InfeasibleBudgetError,
    Kind,
    Plan,
    PlanCache,
    Problem,
    SolverOptions,
    baseline_peak,
    cache_key,
    solve,
    validate,
)

SMALL_GPT = GPTShape(layers=2, d_model=128, seq=256, batch=2, heads=2, vocab=512)
FAST = SolverOptions(time_limit_s=10.0)


def test_plan_json_round_trip() -> None:
    p = gpt_problem(SMALL_GPT)
    plan = solve(p, 0.6, FAST, cache_dir=None)
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.content_hash == plan.content_hash
    data = json.loads(plan.to_json())
    assert {d["kind"] for d in data["decisions"]} <= {k.value for k in Kind}
    validate(p, again)


def test_content_hash_ignores_timing_only() -> None:
    p = gpt_problem(SMALL_GPT)
    plan = solve(p, 0.6, FAST, cache_dir=None)
    assert plan.with_(solve_seconds=123.0, warnings=("x",)).content_hash == plan.content_hash
    first = plan.decisions[0]
    other = Decision(first.name, Kind.RECOMPUTE if first.kind is Kind.KEEP else Kind.KEEP,
                     None if first.kind is not Kind.KEEP else 99)
    assert plan.with_(decisions=(other, *plan.decisions[1:])).content_hash != plan.content_hash


def test_decision_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="restore_step"):
        Decision("a", Kind.RECOMPUTE)
    with pytest.raises(ValueError, match="fmt"):
        Decision("a", Kind.LOWBIT, 3)
    assert Decision("a", "keep").kind is Kind.KEEP


def test_same_problem_and_options_give_the_same_plan() -> None:
    shape = GPTShape(layers=4, d_model=256, seq=256, batch=2, heads=4, vocab=1024)
    opts = SolverOptions(time_limit_s=10.0, allow_offload=True)
    first = solve(gpt_problem(shape), 0.45, opts, cache_dir=None)
    second = solve(gpt_problem(shape), 0.45, opts, cache_dir=None)
    assert first.content_hash == second.content_hash
    assert first.counts()["keep"] < len(first.decisions)  # the budget made it decide something


def test_cache_hit_skips_the_solver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = gpt_problem(SMALL_GPT)
    plan = solve(p, 0.5, FAST, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))

    def no_solver(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(solve_module, "solve_lazy", no_solver)
    monkeypatch.setattr(solve_module, "greedy", no_solver)
    assert solve(p, 0.5, FAST, cache_dir=tmp_path) == plan
    # other options or budget: a different key, so the solver would run
    assert cache_key(p, FAST, plan.budget_bytes) != cache_key(p, FAST, plan.budget_bytes - 1)
    with pytest.raises(AssertionError, match="cache should have answered"):
        solve(p, 0.5, SolverOptions(time_limit_s=10.0, seed=1), cache_dir=tmp_path)


def test_corrupt_or_stale_cache_entry_is_solved_again(tmp_path: Path) -> None:
    p = gpt_problem(SMALL_GPT)
    plan = solve(p, 0.5, FAST, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.write_text("{not json")
    assert solve(p, 0.5, FAST, cache_dir=tmp_path).content_hash == plan.content_hash
    bad = plan.with_(peak_bytes=plan.peak_bytes - 1)
    PlanCache(tmp_path).store(path.stem, bad)
    assert PlanCache(tmp_path).load(path.stem, p) is None
    assert solve(p, 0.5, FAST, cache_dir=tmp_path).content_hash == plan.content_hash


def tight_problem() -> Problem:
    """a (made at 0) and b (made at 2) cannot be recomputed: both stay until step 2 unless a
    leaves for the host or shrinks to low-bit in between."""
    a = Candidate("a", 100, 0, 0, (5,), (), 10, recomputable=False, lowbit_bytes=25,
                  cast_us=1, copy_us=5)
    b = Candidate("b", 50, 2, 2, (4,), (), 10, recomputable=False, lowbit_bytes=13,
                  cast_us=1, copy_us=5)
    return Problem(6, 3, (0, 0, 0, 0, 0, 0), (10,) * 6, (a, b))


def test_infeasible_budget_names_the_minimum_and_the_options() -> None:
    p = tight_problem()
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(p, 120, FAST, cache_dir=None)
    err = info.value
    assert err.min_peak_bytes == 150 and err.min_peak_proven
    assert err.budget_bytes == 120 and err.baseline_peak_bytes == 150
    assert err.alternatives["offload=True"] == 100
    assert err.alternatives["lowbit='fp8'"] == 100
    msg = str(err)
    assert "150 B" in msg and "offload=True reaches" in msg and "lowbit='fp8' reaches" in msg
    plan = solve(p, 100, SolverOptions(time_limit_s=10.0, allow_offload=True), cache_dir=None)
    assert plan.decision("a").kind is Kind.OFFLOAD and plan.peak_bytes <= 100


def test_infeasible_with_everything_allowed_names_no_option() -> None:
    opts = SolverOptions(time_limit_s=10.0, allow_offload=True, allow_lowbit="int8")
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(tight_problem(), 50, opts, cache_dir=None)
    assert info.value.min_peak_bytes > 50 and not info.value.alternatives
    msg = str(info.value)
    assert msg.endswith(f"Raise the budget to at least {info.value.min_peak_bytes} B.")
    assert "option" not in msg


def test_infeasible_never_names_offload_where_there_is_none() -> None:
    """On the CPU offload does not exist: the error offers only low-bit storage."""
    opts = SolverOptions(time_limit_s=10.0, offload_available=False)
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(tight_problem(), 120, opts, cache_dir=None)
    assert set(info.value.alternatives) == {"lowbit='fp8'"}
    assert "offload" not in str(info.value)


def test_infeasible_under_int8_names_fp8_where_it_stores_more() -> None:
    """a is compared with zero in backward: int8 may not store it, fp8 may, and reaches lower."""
    p = tight_problem()
    a = Candidate(**{**vars(p.candidates[0]), "lowbit_formats": (LowbitFormat.FP8,)})
    compared = Problem(6, 3, p.fixed_bytes, p.step_us, (a, p.candidates[1]))
    opts = SolverOptions(time_limit_s=10.0, allow_lowbit="int8", offload_available=False)
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(compared, 120, opts, cache_dir=None)
    assert info.value.min_peak_bytes == 150  # b shrinks only after the peak at step 2
    assert info.value.alternatives == {"lowbit='fp8'": 100}
    assert "lowbit='fp8' reaches" in str(info.value)
    # Where int8 may store everything fp8 may, fp8 is not searched.
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(p, 50, opts, cache_dir=None)
    assert not info.value.alternatives


def test_keep_all_when_the_budget_allows() -> None:
    p = gpt_problem(SMALL_GPT)
    plan = solve(p, 1.0, FAST, cache_dir=None)
    assert plan.status == "KEEP_ALL" and plan.extra_time_us == 0
    assert plan.peak_bytes == plan.baseline_peak_bytes == baseline_peak(p)


def test_out_of_work_returns_the_greedy_plan_with_a_warning() -> None:
    p = gpt_problem(GPTShape(layers=12, d_model=256, seq=512, batch=4, heads=4, vocab=4096))
    plan = solve(p, 0.5, SolverOptions(work_limit=0.001), cache_dir=None)
    validate(p, plan)
    assert plan.status == "GREEDY" and "work_limit=0.001" in plan.warnings[-1]


def test_synthetic_gpt_shape() -> None:
    p = gpt_problem(SMALL_GPT)
    names = [c.name for c in p.candidates]
    assert "h0.probs" in names and "logits" in names
    assert p.num_steps == 2 * p.num_fwd_steps
    masks = [c for c in p.candidates if c.name.endswith("mask")]
    assert masks and not any(c.recomputable for c in masks)
    scores = p.candidates[names.index("h0.scores")]
    assert scores.bwd_uses == ()  # only the recomputation of probs reads it
    assert scores.bytes == 2 * 2 * 256 * 256 * 2
