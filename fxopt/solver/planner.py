"""`solve`: the planner's one entry point (cache -> greedy -> CP-SAT -> validated Plan)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from fxopt.plan import Decision, LowbitFormat, Plan, Status
from fxopt.solver.cache import PlanCache, cache_key
from fxopt.solver.errors import InfeasibleBudgetError, NoPlanFoundError
from fxopt.solver.greedy import greedy
from fxopt.solver.lazy import solve_lazy
from fxopt.solver.options import SolverOptions
from fxopt.solver.problem import Problem, budget_bytes
from fxopt.solver.validate import Simulation, keep_all, simulate, validate

# NOTE [Solve flow]
# 1. budget -> bytes (fraction of the keep-everything peak, or bytes); a cache hit that still
#    validates is returned as is.
# 2. keep-everything fits: done (status KEEP_ALL).
# 3. greedy plan (the hint; if its first pass fails, its storage-first passes give a fallback
#    that is not hinted), then CP-SAT with lazy memory rows (lazy.py) within time_limit_s.
#    The answer is the best plan the validator accepted: CP-SAT's (OPTIMAL; WITHIN_GAP of the
#    bound by relative_gap; or FEASIBLE when a limit stopped it, with a warning) or else the
#    greedy one (status GREEDY, with a warning).
# 4. CP-SAT proves no choice fits: InfeasibleBudgetError with the smallest reachable peak
#    (a min-peak CP-SAT run), and the peaks reachable with offload / low-bit turned on where
#    they are off. The first run gets half of time_limit_s, the others share the other half;
#    the error says if the minimum is not proven.


def _plan(problem: Problem, decisions: Sequence[Decision], sim: Simulation, budget: int,
          baseline: int, status: Status, t0: float, opts: SolverOptions,
          warnings: Sequence[str], bound: int | None = None) -> Plan:
    return Plan(decisions=tuple(decisions), peak_bytes=sim.peak_bytes, budget_bytes=budget,
                baseline_peak_bytes=baseline, extra_time_us=sim.extra_time_us, status=status,
                solve_seconds=round(time.monotonic() - t0, 3), problem_hash=problem.content_hash,
                options_hash=opts.content_hash, warnings=tuple(warnings),
                objective_bound_us=bound)


def _lowest_peak(problem: Problem, opts: SolverOptions, time_s: float
                 ) -> tuple[tuple[Decision, ...], Simulation, bool]:
    """The plan with the smallest peak found, its simulation, whether that peak is proven."""
    start = greedy(problem, 0, opts, best_effort=True)
    assert start is not None
    res = solve_lazy(problem, opts, None, [start[0]], time.monotonic() + time_s)
    assert res.best is not None  # the greedy start is always valid
    decisions, sim = res.best
    peak = sim.peak_bytes
    return tuple(decisions), sim, res.status == Status.OPTIMAL or (
        res.bound is not None and res.bound >= peak)


def min_peak(problem: Problem, opts: SolverOptions, time_s: float) -> tuple[int, bool]:
    """(smallest peak found with the choices `opts` allows, whether it is proven minimal)."""
    _, sim, proven = _lowest_peak(problem, opts, time_s)
    return sim.peak_bytes, proven


def _infeasible(problem: Problem, opts: SolverOptions, budget: int, baseline: int,
                cache: PlanCache | None, t0: float) -> InfeasibleBudgetError:
    decisions, sim, proven = _lowest_peak(problem, opts, max(opts.time_limit_s / 2, 0.5))
    peak = sim.peak_bytes
    if cache is not None:  # the minimum the error names is then a budget solve() meets at once
        cache.store(cache_key(problem, opts, peak),
                    _plan(problem, decisions, sim, peak, baseline, Status.LOWEST_PEAK, t0, opts,
                          []))
    alternatives: dict[str, int] = {}
    variants = []
    fp8 = LowbitFormat.FP8
    if not opts.allow_offload and opts.offload_available:
        variants.append(("offload=True", SolverOptions(**{**vars(opts), "allow_offload": True})))
    if opts.allow_lowbit is None:
        variants.append(("lowbit='fp8'", SolverOptions(**{**vars(opts), "allow_lowbit": fp8})))
    if len(variants) == 2:
        both = SolverOptions(**{**vars(opts), "allow_offload": True, "allow_lowbit": fp8})
        variants.append(("offload=True and lowbit='fp8'", both))
    for label, variant in variants:
        share = max(opts.time_limit_s / 2 / len(variants), 0.2)
        alternatives[label] = min_peak(problem, variant, share)[0]
    return InfeasibleBudgetError(budget, peak, proven, baseline, alternatives)


def solve(problem: Problem, budget: float | int, options: SolverOptions | None = None,
          cache_dir: str | os.PathLike[str] | None = None) -> Plan:
    """Plan `problem` under `budget` (a float fraction of the keep-everything peak, or int
    bytes). `cache_dir`: an on-disk plan cache (the pipeline passes `fxopt.config.cache_root()
    / "plans"`); None: none. Raises InfeasibleBudgetError when no plan fits and
    NoPlanFoundError when the time limit ends before any plan fits."""
    opts = options or SolverOptions()
    t0 = time.monotonic()
    deadline = t0 + opts.time_limit_s
    base_dec = keep_all(problem)
    base = simulate(problem, base_dec)
    budget_b = budget_bytes(budget, base.peak_bytes)
    cache = None if cache_dir is None else PlanCache(cache_dir)
    key = cache_key(problem, opts, budget_b)
    if cache is not None and (hit := cache.load(key, problem)) is not None:
        return hit
    if base.peak_bytes <= budget_b:
        plan = _plan(problem, base_dec, base, budget_b, base.peak_bytes, Status.KEEP_ALL, t0,
                     opts, [])
    else:
        plan = _search(problem, opts, budget_b, base.peak_bytes, t0, deadline, cache)
    validate(problem, plan)
    if cache is not None:
        cache.store(key, plan)
    return plan


def _search(problem: Problem, opts: SolverOptions, budget: int, baseline: int, t0: float,
            deadline: float, cache: PlanCache | None) -> Plan:
    start = greedy(problem, budget, opts, storage_pass=False)
    fallback = None
    if start is None and (opts.allow_offload or opts.allow_lowbit):
        start = fallback = greedy(problem, budget, opts)
    starts = [start[0]] if start is not None and fallback is None else [keep_all(problem)]
    res = solve_lazy(problem, opts, budget, starts, deadline,
                     fallback[0] if fallback is not None else None)
    warnings = list(res.warnings)
    if res.best is None and res.status != Status.INFEASIBLE:
        # A budget at (or just above) the smallest peak: the time-limited search for the
        # cheapest plan can miss what a search for the lowest peak finds.
        decisions, sim, _ = _lowest_peak(problem, opts, max(opts.time_limit_s / 2, 0.5))
        if sim.peak_bytes <= budget:
            return _plan(problem, decisions, sim, budget, baseline, Status.LOWEST_PEAK, t0, opts,
                         [*warnings, "no cheapest plan was found in time; using the plan with "
                          "the lowest peak (raise time_limit_s for a faster one)"])
    if res.best is None:
        if res.status == Status.INFEASIBLE:
            raise _infeasible(problem, opts, budget, baseline, cache, t0)
        raise NoPlanFoundError(
            f"no plan within the budget of {budget} B was found in {opts.time_limit_s} s "
            f"(keep-everything peak {baseline} B); raise time_limit_s or the budget")
    decisions, sim = res.best
    status = res.status
    from_greedy = start is not None and decisions == start[0]
    if from_greedy and status not in (Status.OPTIMAL, Status.WITHIN_GAP):
        status = Status.GREEDY
        warnings.append(f"CP-SAT ended with {res.status} before improving on the greedy plan; "
                        "using the greedy plan (raise time_limit_s for a better one)")
    elif status == Status.FEASIBLE:
        gap = "" if res.bound is None else \
            f" (objective {sim.objective(opts.lowbit_penalty_us)} us, bound {res.bound} us)"
        warnings.append(f"time limit reached: returning the best validated plan found{gap}")
    return _plan(problem, decisions, sim, budget, baseline, status, t0, opts, warnings,
                 res.bound)
