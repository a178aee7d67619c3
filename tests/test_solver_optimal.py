"""The planner against brute force: tiny problems with known optima, and random DAGs."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from fxopt.plan import LOWBIT_FORMATS, LowbitFormat
from fxopt.solver import (
    Candidate,
    Decision,
    InfeasibleBudgetError,
    InvalidPlanError,
    Kind,
    Problem,
    SolverOptions,
    baseline_peak,
    greedy,
    simulate,
    solve,
    validate,
)
from fxopt.solver.validate import prefetch_points

EXACT = SolverOptions(time_limit_s=20.0, relative_gap=0.0, max_restore_points=32,
                      restore_window=32)


def choices(p: Problem, i: int, opts: SolverOptions) -> list[Decision]:
    """Every decision the spec (validate.py) could accept for candidate i: any restore step for
    recompute / low-bit, the option's prefetch points for offload."""
    c = p.candidates[i]
    out = [Decision(c.name, Kind.KEEP)]
    steps = range(p.num_fwd_steps, p.num_steps)
    if c.recomputable:
        out += [Decision(c.name, Kind.RECOMPUTE, r) for r in steps]
    if c.bwd_uses and c.stores_lowbit(opts.allow_lowbit):
        out += [Decision(c.name, Kind.LOWBIT, r, opts.allow_lowbit) for r in steps
                if r <= c.bwd_uses[0]]
    if c.bwd_uses and opts.allow_offload and c.copy_us:
        out += [Decision(c.name, Kind.OFFLOAD, q) for q in
                prefetch_points(p, c, False, opts.prefetch_points)]
        if c.stores_lowbit(opts.allow_lowbit):
            out += [Decision(c.name, Kind.LOWBIT_OFFLOAD, q, opts.allow_lowbit) for q in
                    prefetch_points(p, c, True, opts.prefetch_points)]
    return out


def all_plans(p: Problem, opts: SolverOptions) -> list[tuple[int, int]]:
    """(peak, objective) of every valid plan."""
    out = []
    for combo in itertools.product(*(choices(p, i, opts) for i in range(len(p.candidates)))):
        try:
            sim = simulate(p, combo)
        except InvalidPlanError:
            continue
        out.append((sim.peak_bytes, sim.objective(opts.lowbit_penalty_us)))
    return out


def brute_force(p: Problem, budget: int, opts: SolverOptions,
                plans: list[tuple[int, int]] | None = None) -> tuple[int | None, int]:
    """(least objective within budget or None, least peak) over every valid plan."""
    plans = all_plans(p, opts) if plans is None else plans
    fits = [obj for peak, obj in plans if peak <= budget]
    return (min(fits) if fits else None), min(peak for peak, _ in plans)


def check_against_brute_force(p: Problem, budget: int, opts: SolverOptions,
                              plans: list[tuple[int, int]] | None = None) -> None:
    best, least_peak = brute_force(p, budget, opts, plans)
    found = greedy(p, budget, opts)
    if found is not None:  # the greedy may fail, but what it returns is valid and in budget
        assert found[1] == simulate(p, found[0]) and found[1].peak_bytes <= budget
        assert best is not None and found[1].objective(opts.lowbit_penalty_us) >= best
    try:
        plan = solve(p, budget, opts, cache_dir=None)
    except InfeasibleBudgetError as err:
        event("infeasible")
        assert best is None, f"solver says infeasible, brute force found objective {best}"
        assert err.min_peak_bytes == least_peak and err.min_peak_proven
        assert err.min_peak_bytes > budget
        return
    sim = validate(p, plan)
    event(f"plan {plan.status}")
    assert best is not None
    assert sim.objective(opts.lowbit_penalty_us) == best


def chain(n: int, nbytes: int = 100, rec_us: int = 10) -> Problem:
    """a0 -> a1 -> ... forward, backward uses in reverse order (a classic checkpointing chain)."""
    f = n
    cands = tuple(Candidate(f"a{i}", nbytes, i, min(i + 1, n - 1), (2 * n - 1 - i,),
                            (i - 1,) if i else (), rec_us) for i in range(n))
    return Problem(2 * n, f, (0,) * (2 * n), (10,) * (2 * n), cands)


# Table: (problem, budget, options, expected optimal objective, expected kinds).
def _table() -> list[tuple[str, Problem, int, SolverOptions, int]]:
    ch3 = chain(3)
    support = Problem(6, 3, (0, 0, 0, 400, 0, 0), (10,) * 6, (
        Candidate("x", 50, 0, 1, (5,), (), 5, recomputable=False),
        Candidate("big", 200, 1, 2, (), (0,), 5),          # only the recompute of y reads it
        Candidate("y", 100, 2, 2, (4,), (1,), 7),
    ))
    unsafe = Problem(6, 3, (0, 0, 100, 0, 0, 0), (10,) * 6, (
        Candidate("mask", 100, 0, 0, (5,), (), 1, recomputable=False),
        Candidate("h", 100, 1, 1, (4,), (), 30),
    ))
    offl = Problem(6, 3, (0,) * 6, (10, 10, 10, 10, 10, 10), (
        Candidate("a", 100, 0, 0, (5,), (), 100, copy_us=5),
        Candidate("b", 100, 1, 1, (4,), (), 100, copy_us=15),
        Candidate("c", 100, 2, 2, (3,), (), 100, copy_us=15),
    ))
    lowbit = Problem(4, 2, (0,) * 4, (10,) * 4, (
        Candidate("a", 100, 0, 0, (3,), (), 100, lowbit_bytes=25, cast_us=4),
        Candidate("b", 100, 1, 1, (2,), (), 100, lowbit_bytes=25, cast_us=4),
    ))
    # a as a tensor the backward compares with zero: fp8 may store it, int8 may not
    compared = dataclasses.replace(lowbit, candidates=(
        dataclasses.replace(lowbit.candidates[0], lowbit_formats=(LowbitFormat.FP8,)),
        lowbit.candidates[1]))
    return [
        ("chain keeps all at full budget", ch3, 300, EXACT, 0),
        ("chain recomputes one", ch3, 200, EXACT, 10),
        ("support tensor recomputed along", support, 500, EXACT, 12),
        ("mask cannot be recomputed", unsafe, 200, EXACT, 30),
        ("offload hides copies", offl, 200,
         SolverOptions(**{**vars(EXACT), "allow_offload": True}), 0),
        ("low-bit beats recompute", lowbit, 130,
         SolverOptions(**{**vars(EXACT), "allow_lowbit": "int8", "lowbit_penalty_us": 1}), 5),
        ("int8 may not store a compared tensor", compared, 130,
         SolverOptions(**{**vars(EXACT), "allow_lowbit": "int8", "lowbit_penalty_us": 1}), 100),
        ("fp8 may", compared, 130,
         SolverOptions(**{**vars(EXACT), "allow_lowbit": "fp8", "lowbit_penalty_us": 1}), 5),
    ]


@pytest.mark.parametrize("name,problem,budget,opts,expected", _table(), ids=lambda x: x
                         if isinstance(x, str) else "")
def test_table_optimum(name: str, problem: Problem, budget: int, opts: SolverOptions,
                       expected: int) -> None:
    best, _ = brute_force(problem, budget, opts)
    assert best == expected, f"{name}: brute force says {best}"
    plan = solve(problem, budget, opts, cache_dir=None)
    sim = validate(problem, plan)
    assert sim.objective(opts.lowbit_penalty_us) == expected
    assert plan.peak_bytes <= budget


def test_unsafe_tensor_is_never_recomputed() -> None:
    p = _table()[3][1]
    plan = solve(p, 200, EXACT, cache_dir=None)
    assert plan.decision("mask").kind is Kind.KEEP
    assert plan.decision("h").kind is Kind.RECOMPUTE


@st.composite
def random_problem(draw: st.DrawFn) -> tuple[Problem, float, SolverOptions]:
    n = draw(st.integers(2, 5))
    n_fwd = draw(st.integers(n, n + 2))
    n_bwd = draw(st.integers(2, 4))
    steps = n_fwd + n_bwd
    produced = sorted(draw(st.lists(st.integers(0, n_fwd - 1), min_size=n, max_size=n)))
    cands: list[Candidate] = []
    for i in range(n):
        earlier = [j for j in range(i) if produced[j] < produced[i]]
        inputs = tuple(sorted(draw(st.sets(st.sampled_from(earlier), max_size=2)))) \
            if earlier else ()
        nbytes = draw(st.integers(1, 12)) * 8
        cands.append(Candidate(
            name=f"t{i}", bytes=nbytes, produced=produced[i], last_fwd_use=produced[i],
            bwd_uses=tuple(sorted(draw(st.sets(st.integers(n_fwd, steps - 1), max_size=2)))),
            inputs=inputs, recompute_us=draw(st.integers(1, 40)),
            recomputable=draw(st.booleans()) or draw(st.booleans()),
            lowbit_bytes=draw(st.sampled_from([0, nbytes // 4, nbytes // 2])),
            cast_us=draw(st.integers(0, 10)), copy_us=draw(st.integers(0, 30)),
            lowbit_formats=draw(st.sampled_from([LOWBIT_FORMATS, (LowbitFormat.FP8,)]))))
    # a consumer reads its inputs when it is produced
    for i, c in enumerate(cands):
        for j in c.inputs:
            d = cands[j]
            cands[j] = Candidate(**{**d.__dict__, "last_fwd_use": max(d.last_fwd_use,
                                                                      c.produced)})
    fixed = tuple(draw(st.lists(st.integers(0, 16), min_size=steps, max_size=steps)))
    step_us = tuple(draw(st.lists(st.integers(1, 20), min_size=steps, max_size=steps)))
    problem = Problem(steps, n_fwd, fixed, step_us, tuple(cands))
    opts = SolverOptions(**{**vars(EXACT), "allow_offload": draw(st.booleans()),
                            "allow_lowbit": draw(st.sampled_from([None, "fp8", "int8"])),
                            "lowbit_penalty_us": draw(st.integers(0, 20)),
                            "prefetch_points": 2})
    # mostly budgets between the least reachable peak and keep-everything; some below it
    return problem, draw(st.one_of(st.floats(0.0, 1.0), st.just(-1.0))), opts


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(random_problem())
def test_random_dags_match_brute_force(case: tuple[Problem, float, SolverOptions]) -> None:
    check_at_fraction(case)


def check_at_fraction(case: tuple[Problem, float, SolverOptions]) -> None:
    """Brute force at a budget `fraction` of the way from the least reachable peak to
    keeping everything (below the least when negative)."""
    problem, fraction, opts = case
    plans = all_plans(problem, opts)
    least = min(peak for peak, _ in plans)
    top = baseline_peak(problem)
    assume(least < top)  # otherwise there is nothing to decide
    budget = least - 1 if fraction < 0 else least + int(fraction * (top - least))
    check_against_brute_force(problem, budget, opts, plans)


@st.composite
def problem_in_flight(draw: st.DrawFn) -> tuple[Problem, float, SolverOptions]:
    """A random problem whose graph has other runs in flight (NOTE [Copies in flight])."""
    problem, fraction, opts = draw(random_problem())
    copies = draw(st.integers(1, 3))
    return dataclasses.replace(problem, other_copies=copies), fraction, opts


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(problem_in_flight())
def test_copies_in_flight_match_brute_force(case: tuple[Problem, float, SolverOptions]) -> None:
    check_at_fraction(case)


def test_copies_in_flight_hold_what_crosses_the_boundary() -> None:
    """Every other run holds the kept tensors' full bytes and the low-bit ones' small bytes
    at every step; recomputed tensors hold nothing."""
    cands = (Candidate("a", 64, 0, 0, (3,), recompute_us=5, lowbit_bytes=16, cast_us=1),
             Candidate("b", 32, 1, 1, (2,), recompute_us=5),
             Candidate("c", 8, 1, 1, (2,), recompute_us=5))
    one = Problem(4, 2, (0, 0, 0, 0), (1, 1, 1, 1), cands)
    three = dataclasses.replace(one, other_copies=2)
    decs = (Decision("a", Kind.LOWBIT, 3, "fp8"), Decision("b", Kind.KEEP),
            Decision("c", Kind.RECOMPUTE, 2))
    base, more = simulate(one, decs), simulate(three, decs)
    assert [m - b for m, b in zip(more.memory, base.memory)] == [2 * (16 + 32)] * 4
    assert three.content_hash != one.content_hash
    assert Problem.from_json_dict(three.to_json_dict()) == three
    # with copies in flight, recomputing b instead of keeping it is what fits 3 runs
    budget = simulate(three, decs).peak_bytes - 1
    plan = solve(three, budget, EXACT, cache_dir=None)
    assert validate(three, plan).peak_bytes <= budget
