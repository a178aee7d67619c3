"""Searches on repeated blocks (fxopt/solver/block_search.py): valid plans within the budget,
never worse than their start, deterministic."""

from __future__ import annotations

import time

import pytest

import fxopt.solver.block_search as block_search
import fxopt.solver.planner as planner
from benchmarks.synthetic import gpt_problem
from fxopt.solver import Kind, SolverOptions, Status, greedy, simulate, solve, validate
from fxopt.solver.block_search import FREE_TAIL, block_plan, fix_outside, tie, windows
from fxopt.solver.blocks import find_blocks
from fxopt.solver.cpsat import build
from fxopt.solver.lazy import solve_lazy
from fxopt.solver.validate import keep_all
from tests.test_solver_blocks import SHAPE, distinct_chain

OPTS = SolverOptions(work_limit=1.0, allow_lowbit="fp8")
PEN = OPTS.lowbit_penalty_us


def _tight() -> tuple:
    p = gpt_problem(SHAPE)
    blocks = find_blocks(p)
    assert blocks is not None
    return p, blocks, int(0.34 * simulate(p, keep_all(p)).peak_bytes)


def test_tied_plans_are_valid_and_share_the_middle_layers() -> None:
    p, blocks, budget = _tight()
    res = solve_lazy(p, OPTS, budget, [keep_all(p)], 0.5, 1e12, restrict=tie(blocks),
                     improve_share=1.0)
    assert res.best is not None
    decisions, sim = res.best
    assert sim == simulate(p, decisions) and sim.peak_bytes <= budget
    kinds = [[(decisions[i].kind, i in blocks.odd) for i in mem] for mem in blocks.members]
    for k in range(1, blocks.count - FREE_TAIL):
        assert [x for x, odd in kinds[k] if not odd] == [x for x, odd in kinds[0] if not odd]
    assert any(x is not Kind.KEEP for x, _ in kinds[0])
    mdl = build(p, OPTS)
    tie(blocks)(mdl)
    assert mdl.model.validate() == ""


def test_neighbourhood_changes_only_its_window() -> None:
    p, blocks, budget = _tight()
    start = greedy(p, budget, OPTS, storage_pass=False)
    assert start is not None
    free = windows(blocks)[0]
    res = solve_lazy(p, OPTS, budget, [start[0]], 0.5, 1e12,
                     restrict=fix_outside(start[0], free), improve_share=1.0)
    assert res.best is not None
    decisions, sim = res.best
    assert sim.peak_bytes <= budget and sim.objective(PEN) <= start[1].objective(PEN)
    for i, (a, b) in enumerate(zip(start[0], decisions)):
        if i not in free and a.kind is not Kind.KEEP and b.kind is not Kind.KEEP:
            assert (a.kind, a.restore_step) == (b.kind, b.restore_step)


def test_windows_cover_every_block() -> None:
    p, blocks, _ = _tight()
    ws = windows(blocks)
    assert set().union(*ws) == {i for mem in blocks.members for i in mem}
    assert ws[0] >= set(blocks.members[-1])  # the last blocks, where the peak differs, first


def test_block_plan_is_valid_deterministic_and_improves_its_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_search, "WINDOW", 2)  # the neighbourhoods on 6 layers
    monkeypatch.setattr(block_search, "LNS_MIN_BLOCKS", 4)
    p, blocks, budget = _tight()
    calls: list = []
    monkeypatch.setattr(block_search, "solve_lazy",
                        lambda *a, **k: calls.append(solve_lazy(*a, **k)) or calls[-1])
    found, spent = block_plan(p, OPTS, budget, blocks, [keep_all(p)], 1.0, 1e12)
    assert found is not None and spent <= 1.0 * 1.01
    assert len(calls) > len(windows(blocks))  # the tied start and a sweep of windows at least
    decisions, sim = found
    assert sim == simulate(p, decisions) and sim.peak_bytes <= budget
    tied = solve_lazy(p, OPTS, budget, [keep_all(p)], 0.15, 1e12, restrict=tie(blocks),
                      improve_share=1.0)
    assert tied.best is not None and sim.objective(PEN) <= tied.best[1].objective(PEN)
    again, _ = block_plan(p, OPTS, budget, blocks, [keep_all(p)], 1.0, 1e12)
    assert again is not None and again[0] == decisions


def test_without_a_greedy_plan_the_blocks_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the greedy planner finds none, solve() starts from the blocks: a valid plan
    within the budget, the same twice."""
    p, _, budget = _tight()
    monkeypatch.setattr(planner, "greedy", lambda *a, **k: None)
    found: list = []
    monkeypatch.setattr(planner, "block_plan",
                        lambda *a: found.append(block_plan(*a)) or found[-1])
    plan = solve(p, budget, OPTS)
    validate(p, plan)
    assert found and found[0][0] is not None  # the blocks gave the start
    assert plan.objective_us <= found[0][0][1].objective(PEN)
    assert plan.peak_bytes <= budget and plan.status in (
        Status.OPTIMAL, Status.WITHIN_GAP, Status.FEASIBLE)
    assert plan.work is not None and plan.work <= OPTS.work(len(p.candidates)) * 1.01
    assert solve(p, budget, OPTS).content_hash == plan.content_hash


def test_block_start_on_the_clock_keeps_to_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """deterministic=False: no work limit, so the tied start must stop on its share of the
    clock and leave the rest to the full search."""
    p, _, budget = _tight()
    monkeypatch.setattr(planner, "greedy", lambda *a, **k: None)
    opts = SolverOptions(deterministic=False, time_limit_s=3.0, allow_lowbit="fp8")
    t0 = time.monotonic()
    plan = solve(p, budget, opts)
    validate(p, plan)
    assert plan.peak_bytes <= budget and time.monotonic() - t0 < 3.0 * 1.5 + 1


@pytest.mark.parametrize("fraction", [0.7, 0.5, 0.34])
def test_search_never_worse_than_greedy(fraction: float) -> None:
    p = gpt_problem(SHAPE)
    plan = solve(p, fraction, OPTS)
    validate(p, plan)
    assert plan.peak_bytes <= plan.budget_bytes
    start = greedy(p, plan.budget_bytes, OPTS, storage_pass=False)
    if start is not None:
        assert plan.objective_us <= start[1].objective(PEN)


def test_problem_without_blocks_solves_as_before() -> None:
    p = distinct_chain(5)
    assert find_blocks(p) is None
    plan = solve(p, 0.7, SolverOptions(work_limit=1.0))
    validate(p, plan)
    assert plan.status is Status.OPTIMAL
