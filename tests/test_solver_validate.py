"""The exact simulator (the spec): lifetimes, costs and structural rules, computed by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fxopt.plan import LowbitFormat
from fxopt.solver import (
    Candidate,
    Decision,
    InvalidPlanError,
    Kind,
    Plan,
    Problem,
    ProblemError,
    SolverOptions,
    budget_bytes,
    keep_all,
    simulate,
    solve,
    to_us,
    validate,
)
from fxopt.solver.greedy import greedy


def one_tensor(**kw: object) -> Problem:
    """F=3, S=7, every step 10 us; tensor a: 100 B, alive [0, 1] in forward, read at 5 and 6."""
    a = Candidate(**{"name": "a", "bytes": 100, "produced": 0, "last_fwd_use": 1,
                     "bwd_uses": (5, 6), "recompute_us": 7, "lowbit_bytes": 30, "cast_us": 3,
                     "copy_us": 5, **kw})
    return Problem(7, 3, (0,) * 7, (10,) * 7, (a,))


@pytest.mark.parametrize("decision,memory,extra_us", [
    (Decision("a", Kind.KEEP), (100,) * 7, 0),
    (Decision("a", Kind.RECOMPUTE, 5), (100, 100, 0, 0, 0, 100, 100), 7),
    (Decision("a", Kind.RECOMPUTE, 3), (100, 100, 0, 100, 100, 100, 100), 7),
    (Decision("a", Kind.LOWBIT, 5, "fp8"), (100, 100, 30, 30, 30, 100, 100), 3),
    # copy 5 us is done by the end of step 1; prefetch at 4 is hidden by step 4's 10 us
    (Decision("a", Kind.OFFLOAD, 4), (100, 100, 0, 0, 100, 100, 100), 0),
    (Decision("a", Kind.OFFLOAD, 5), (100, 100, 0, 0, 0, 100, 100), 5),
    # quantised after step 1, its 2 us copy-out ends in step 2, back as low-bit at 4
    (Decision("a", Kind.LOWBIT_OFFLOAD, 4, "int8"), (100, 100, 30, 0, 30, 100, 100), 3),
])
def test_lifetimes(decision: Decision, memory: tuple[int, ...], extra_us: int) -> None:
    sim = simulate(one_tensor(), [decision])
    assert sim.memory == memory
    assert sim.peak_bytes == max(memory)
    assert sim.extra_time_us == extra_us


def test_exposed_copy_out_when_forward_is_too_short() -> None:
    sim = simulate(one_tensor(copy_us=45), [Decision("a", Kind.OFFLOAD, 3)])
    # copy-out from step 1: 20 us of forward left -> 25 exposed, alive to the end of forward;
    # prefetch at 3 is hidden by steps 3-4 except 25 us
    assert sim.memory == (100, 100, 100, 100, 100, 100, 100)
    assert sim.exposed_d2h_us == 25 and sim.exposed_h2d_us == 25


def test_link_is_shared_between_copies() -> None:
    a = Candidate("a", 100, 0, 0, (5,), copy_us=20)
    b = Candidate("b", 100, 1, 1, (4,), copy_us=20)
    p = Problem(6, 3, (0,) * 6, (10,) * 6, (a, b))
    sim = simulate(p, [Decision("a", Kind.OFFLOAD, 3), Decision("b", Kind.OFFLOAD, 3)])
    # each copy alone is hidden; queued, a's copy runs 10-30 us and b's 30-50 us, joined at
    # the forward's end (30 us): 20 exposed (NOTE [Copy queues])
    assert sim.exposed_d2h_us == 20


def test_copies_issued_late_in_the_forward_queue() -> None:
    """NOTE [Copy queues]: two copies issued before step 4 of a 6-step forward each fit the
    20 us left; queued, the second is exposed by 20 us. Prefetched for uses at 7 and 8, the
    copies read by step 8 (40 us) meet 20 us of backward before it."""
    a = Candidate("a", 100, 3, 3, (8,), copy_us=20)
    b = Candidate("b", 100, 3, 3, (7,), copy_us=20)
    p = Problem(10, 6, (0,) * 10, (10,) * 10, (a, b))
    alone = simulate(p, [Decision("a", Kind.OFFLOAD, 8), Decision("b", Kind.KEEP)])
    assert alone.exposed_d2h_us == 0 and alone.exposed_h2d_us == 20
    both = simulate(p, [Decision("a", Kind.OFFLOAD, 6), Decision("b", Kind.OFFLOAD, 6)])
    assert both.exposed_d2h_us == 20
    # their own windows leave 10 us; by step 8, 40 us of copies meet 20 us of backward
    assert both.exposed_h2d_us == 20


def chain_problem() -> Problem:
    """x -> y -> z; x read at 6, y at 5, z at 4 (F=3, S=7)."""
    x = Candidate("x", 10, 0, 1, (6,), (), 1)
    y = Candidate("y", 20, 1, 2, (5,), (0,), 2)
    z = Candidate("z", 40, 2, 2, (4,), (1,), 4, recomputable=False)
    return Problem(7, 3, (0,) * 7, (10,) * 7, (x, y, z))


def test_recompute_reads_inputs_at_its_restore_step() -> None:
    p = chain_problem()
    # y recomputed at 4: kept x is read then anyway; recomputing x too needs x by step 4
    sim = simulate(p, [Decision("x", Kind.RECOMPUTE, 4), Decision("y", Kind.RECOMPUTE, 4),
                       Decision("z", Kind.KEEP)])
    assert sim.memory == (10, 30, 60, 40, 70, 30, 10)
    assert sim.recompute_us == 3


def test_kept_input_lives_until_a_late_recompute() -> None:
    x = Candidate("x", 10, 0, 0, (3,), ())
    y = Candidate("y", 20, 1, 1, (5,), (0,), 2)
    p = Problem(6, 3, (0,) * 6, (10,) * 6, (x, y))
    sim = simulate(p, [Decision("x", Kind.KEEP), Decision("y", Kind.RECOMPUTE, 5)])
    assert sim.memory == (10, 30, 10, 10, 10, 30)


@pytest.mark.parametrize("decisions,message", [
    ([Decision("x", Kind.KEEP), Decision("y", Kind.KEEP), Decision("z", Kind.RECOMPUTE, 4)],
     "cannot be recomputed"),
    ([Decision("x", Kind.KEEP), Decision("y", Kind.RECOMPUTE, 6), Decision("z", Kind.KEEP)],
     "first demand"),
    ([Decision("x", Kind.KEEP), Decision("y", Kind.RECOMPUTE, 2), Decision("z", Kind.KEEP)],
     "first demand"),
    # y recomputed at 4 reads x at 4; x recomputed only at 6 is too late
    ([Decision("x", Kind.RECOMPUTE, 6), Decision("y", Kind.RECOMPUTE, 4),
      Decision("z", Kind.KEEP)], "first demand"),
    ([Decision("x", Kind.OFFLOAD, 3), Decision("y", Kind.RECOMPUTE, 4),
      Decision("z", Kind.KEEP)], "not eligible for offload"),
    ([Decision("x", Kind.KEEP), Decision("y", Kind.KEEP)], "2 decisions for 3"),
    ([Decision("y", Kind.KEEP), Decision("x", Kind.KEEP), Decision("z", Kind.KEEP)],
     "expected 'x'"),
])
def test_structural_rules(decisions: list[Decision], message: str) -> None:
    with pytest.raises(InvalidPlanError, match=message):
        simulate(chain_problem(), decisions)


def test_offloaded_tensor_may_not_be_read_early() -> None:
    x = Candidate("x", 10, 0, 1, (6,), (), 1, copy_us=1)
    y = Candidate("y", 20, 1, 1, (5,), (0,), 2)
    p = Problem(7, 3, (0,) * 7, (10,) * 7, (x, y))
    with pytest.raises(InvalidPlanError, match="before its own first backward use"):
        simulate(p, [Decision("x", Kind.OFFLOAD, 5), Decision("y", Kind.RECOMPUTE, 5)])


def test_recomputation_never_reads_a_lowbit_copy() -> None:
    """Recomputing y from x's rounded copy would feed the rounding to whatever reads y."""
    x = Candidate("x", 10, 0, 1, (6,), (), 50, lowbit_bytes=3, cast_us=1)
    y = Candidate("y", 20, 1, 1, (6,), (0,), 2)
    p = Problem(7, 3, (0, 0, 100, 100, 0, 0, 0), (10,) * 7, (x, y))
    forbidden = [Decision("x", Kind.LOWBIT, 6, "int8"), Decision("y", Kind.RECOMPUTE, 6)]
    with pytest.raises(InvalidPlanError, match="low-bit copy of 'x'"):
        simulate(p, forbidden)
    # Under 105 B the cheap way (x low-bit, y recomputed from it: 103 B) is not allowed; only
    # recomputing both (100 B, 52 us) is.
    both = (Decision("x", Kind.RECOMPUTE, 6), Decision("y", Kind.RECOMPUTE, 6))
    opts = SolverOptions(time_limit_s=5.0, allow_lowbit="int8", lowbit_penalty_us=0)
    start = greedy(p, 105, opts)
    assert start is not None and start[0] == both
    assert solve(p, 105, opts, cache_dir=None).decisions == both


def test_lowbit_only_in_the_formats_that_may_store_it() -> None:
    """A tensor the backward compares with zero may be stored in fp8, never in int8 (NOTE
    [Comparisons and int8] in fxopt/lowbit_rules.py)."""
    compared = one_tensor(lowbit_formats=(LowbitFormat.FP8,))
    assert simulate(compared, [Decision("a", Kind.LOWBIT, 5, "fp8")]).peak_bytes == 100
    with pytest.raises(InvalidPlanError, match="int8 may not store it"):
        simulate(compared, [Decision("a", Kind.LOWBIT, 5, "int8")])
    with pytest.raises(InvalidPlanError, match="int8 may not store it"):
        simulate(compared, [Decision("a", Kind.LOWBIT_OFFLOAD, 4, "int8")])
    # 50 B more at step 3: keeping it peaks at 150 B. Under 100 B, fp8 stores it (3 us); int8
    # may not, so it is recomputed (7 us).
    tight = Problem(7, 3, (0, 0, 0, 50, 0, 0, 0), (10,) * 7, compared.candidates)
    for fmt, kind in (("int8", Kind.RECOMPUTE), ("fp8", Kind.LOWBIT)):
        opts = SolverOptions(time_limit_s=5.0, allow_lowbit=fmt, lowbit_penalty_us=0)
        assert solve(tight, 100, opts, cache_dir=None).decision("a").kind is kind
    # Problems where every format may store every tensor hash as before the field existed.
    assert "lowbit_formats" not in str(one_tensor().to_json_dict())
    assert Problem.from_json_dict(compared.to_json_dict()) == compared
    with pytest.raises(ProblemError, match="lowbit_formats"):
        one_tensor(lowbit_formats=())


def test_non_keep_needs_a_reader() -> None:
    x = Candidate("x", 10, 0, 1, (), ())
    p = Problem(4, 2, (0,) * 4, (1,) * 4, (x,))
    with pytest.raises(InvalidPlanError, match="must be 'keep'"):
        simulate(p, [Decision("x", Kind.RECOMPUTE, 3)])
    assert simulate(p, [Decision("x", Kind.KEEP)]).memory == (10, 10, 0, 0)


def _plan(p: Problem, decisions: list[Decision], peak: int, extra: int, budget: int) -> Plan:
    return Plan(tuple(decisions), peak, budget, peak, extra, "GIVEN", 0.0, p.content_hash, "x")


def test_validate_checks_records_and_budget() -> None:
    p = one_tensor()
    keep = [Decision("a", Kind.KEEP)]
    assert validate(p, _plan(p, keep, 100, 0, 100)).peak_bytes == 100
    with pytest.raises(InvalidPlanError, match="exceeds its budget"):
        validate(p, _plan(p, keep, 100, 0, 99))
    with pytest.raises(InvalidPlanError, match="simulates to"):
        validate(p, _plan(p, keep, 90, 0, 100))
    with pytest.raises(InvalidPlanError, match="different problem"):
        validate(one_tensor(bytes=101), _plan(p, keep, 100, 0, 100))


def test_problem_checks_its_invariants() -> None:
    with pytest.raises(ProblemError, match="bwd_uses"):
        one_tensor(bwd_uses=(2,))
    with pytest.raises(ProblemError, match="lowbit_bytes"):
        one_tensor(lowbit_bytes=101)
    with pytest.raises(ProblemError, match="produced earlier"):
        Problem(4, 2, (0,) * 4, (1,) * 4, (Candidate("a", 1, 0, 0, (), (0,)),))


def test_problem_checks_its_anchors() -> None:
    a = Candidate("a", 100, 0, 1, (5, 6))
    with pytest.raises(ProblemError, match="anchors needs 7"):
        Problem(7, 3, (0,) * 7, (10,) * 7, (a,), anchors=(0, 1, 2))
    with pytest.raises(ProblemError, match="anchor 2 of step 3"):  # across the boundary
        Problem(7, 3, (0,) * 7, (10,) * 7, (a,), anchors=(0, 1, 2, 2, 4, 5, 6))
    with pytest.raises(ProblemError, match="anchor 4 of step 6"):  # 4 is not its own anchor
        Problem(7, 3, (0,) * 7, (10,) * 7, (a,), anchors=(0, 1, 2, 3, 3, 5, 4))


def test_restore_steps_are_anchors() -> None:
    """Steps 4 and 5 run at one graph node: a recomputation "before 5" runs before 4, so the
    plan must say 4, and its tensor is then alive at 4."""
    a = Candidate("a", 100, 0, 1, (5, 6))
    p = Problem(7, 3, (0,) * 7, (10,) * 7, (a,), anchors=(0, 1, 2, 3, 4, 4, 6))
    with pytest.raises(InvalidPlanError, match="runs at the same point as step 4"):
        simulate(p, [Decision("a", Kind.RECOMPUTE, 5)])
    assert simulate(p, [Decision("a", Kind.RECOMPUTE, 4)]).memory == (100, 100, 0, 0, 100, 100,
                                                                      100)
    assert Problem.from_json_dict(p.to_json_dict()) == p


def test_solvers_restore_at_anchors() -> None:
    """Keeping a peaks at 150 (steps 2 and 3); recomputing it at its first use, step 5, is
    only possible at 4, which both solvers pick."""
    a = Candidate("a", 100, 0, 1, (5, 6), recompute_us=7)
    p = Problem(7, 3, (0, 0, 50, 50, 0, 0, 0), (10,) * 7, (a,), anchors=(0, 1, 2, 3, 4, 4, 6))
    opts = SolverOptions(time_limit_s=5.0)
    start = greedy(p, 120, opts)
    assert start is not None and start[0][0] == Decision("a", Kind.RECOMPUTE, 4)
    plan = solve(p, 120, opts, cache_dir=None)
    assert plan.decisions == (Decision("a", Kind.RECOMPUTE, 4),) and plan.peak_bytes == 100


def test_integer_scaling() -> None:
    assert to_us(1.5e-6) == 2 and to_us(0.0) == 0 and to_us(2e-6) == 2
    assert budget_bytes(0.5, 1001) == 500 and budget_bytes(4096, 1) == 4096
    for bad in (0.0, 1.5, -3, True):
        with pytest.raises(ProblemError):
            budget_bytes(bad, 100)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 3), st.integers(0, 3),
                          st.lists(st.integers(4, 7), max_size=3)), min_size=1, max_size=6),
       st.lists(st.integers(0, 20), min_size=8, max_size=8))
def test_keep_all_memory_is_the_sum_of_intervals(specs, fixed) -> None:  # type: ignore[no-untyped-def]
    cands = tuple(Candidate(f"t{i}", b, min(p, f), max(p, f), tuple(sorted(set(u))))
                  for i, (b, p, f, u) in enumerate(specs))
    p = Problem(8, 4, tuple(fixed), (1,) * 8, cands)
    sim = simulate(p, keep_all(p))
    for s in range(8):
        live = sum(c.bytes for c in cands
                   if c.produced <= s <= max(c.last_fwd_use, *(c.bwd_uses or (0,))))
        assert sim.memory[s] == fixed[s] + live
