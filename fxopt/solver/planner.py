"""`solve`: the planner's one entry point (cache -> greedy -> CP-SAT -> validated Plan)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from fxopt.plan import Choices, Decision, LowbitFormat, Plan, Status
from fxopt.solver.block_search import IMPROVE_AFTER_BLOCKS, block_plan
from fxopt.solver.blocks import find_blocks
from fxopt.solver.cache import PlanCache, cache_key
from fxopt.solver.cpsat import choice_set
from fxopt.solver.errors import InfeasibleBudgetError, SearchLimit
from fxopt.solver.greedy import greedy
from fxopt.solver.lazy import LazyResult, solve_lazy
from fxopt.solver.options import SolverOptions
from fxopt.solver.problem import Problem, budget_bytes
from fxopt.solver.validate import Simulation, keep_all, simulate, validate

# NOTE [Solve flow]
# 1. budget -> bytes (fraction of the keep-everything peak, or bytes); a cache hit that still
#    validates is returned as is.
# 2. keep-everything fits: done (status KEEP_ALL).
# 3. greedy plan (the hint; if its first pass fails, its storage-first passes give a fallback
#    that is not hinted; where the Problem has repeated blocks, the block searches then give
#    the hint, NOTE [Block search] in block_search.py), then CP-SAT with lazy memory rows
#    (lazy.py) within the work limit (NOTE [Work limit and safety net] in options.py). The
#    answer is the best plan the validator accepted, with its status (NOTE [Statuses]).
# 4. No plan within the budget: the lowest-peak search (LOWEST_SHARE of the work, the same
#    work whatever the budget, so the same plan) decides, even where CP-SAT proved that no
#    choice of its restricted model fits (the lowest plan may lie outside it). The lowest peak
#    found is above the budget: InfeasibleBudgetError naming that peak, with `limit` set when
#    the work ran out before a proof, and the peaks reachable with offload / low-bit
#    turned on where they are off (the other half of the work, shared). The peak an error
#    names is that of a plan fxopt found: asked for exactly that budget (or more), the search
#    either finds a plan or ends in the same lowest-peak search, whose plan then fits.
#    Otherwise the lowest-peak plan is the answer (LOWEST_PEAK, with a warning).
#
# NOTE [Statuses]
# OPTIMAL / WITHIN_GAP: CP-SAT proved the plan optimal, or within relative_gap of its bound,
# over the choices it had; Plan.choices says whether those were every choice the simulator
# accepts (FULL) or a few restore and prefetch points per tensor (RESTRICTED, the default on
# real graphs). Otherwise the work limit ended the search: GREEDY when the answer is the greedy
# plan, IMPROVED when it is better, FEASIBLE when the greedy plan found none. Plan.gap is the
# proven distance to the bound over the same choices; a warning is added when the work ended
# the search more than WARN_GAP from the bound, or before any bound.
LOWEST_SHARE = 0.5
WARN_GAP = 0.01


def _plan(problem: Problem, decisions: Sequence[Decision], sim: Simulation, budget: int,
          baseline: int, status: Status, t0: float, opts: SolverOptions,
          warnings: Sequence[str], bound: int | None = None, work: float | None = None,
          choices: Choices | None = None, greedy_us: int | None = None) -> Plan:
    return Plan(decisions=tuple(decisions), peak_bytes=sim.peak_bytes, budget_bytes=budget,
                baseline_peak_bytes=baseline, extra_time_us=sim.extra_time_us, status=status,
                solve_seconds=round(time.monotonic() - t0, 3), problem_hash=problem.content_hash,
                options_hash=opts.content_hash, warnings=tuple(warnings),
                objective_bound_us=bound, objective_us=sim.objective(opts.lowbit_penalty_us),
                choices=choices, work=work, greedy_objective_us=greedy_us)


@dataclass(frozen=True)
class Lowest:
    """The plan with the smallest peak a lowest-peak search found."""

    decisions: tuple[Decision, ...]
    sim: Simulation
    proven: bool  # no plan over the choices searched peaks lower
    work: float
    bound: int  # no plan over the choices searched peaks lower than this (NOTE [Lowest peak])

    @property
    def peak_bytes(self) -> int:
        return self.sim.peak_bytes


# NOTE [Lowest peak]
# The model that minimises the peak itself has almost no linear relaxation (recomputing costs
# nothing there, so its LP recomputes everything, fractionally), so it moves little from the
# plan it starts from, and the greedy planner's lowest plan with low-bit storage allowed can be
# poor: low-bit copies it picks early block the recomputations that would go lower (0.51 of
# keep-everything on a 48-layer GPT, against 0.19 with recomputation alone). So the start is
# the lower of the greedy planner's lowest plans with the choices allowed and with
# recomputation alone, lowered by bisection with the greedy planner at fixed budgets (PROBES
# of them, between that plan's peak and a lower bound: at every step, the fixed memory, the
# tensors in their forward life and those read there in the backward, none of which any
# decision frees); the work goes to the peak-minimising model hinted with it (on small
# Problems that proves the minimum at once). Every step is deterministic. The bound an error
# states beside the peak is the higher of that lower bound and the model's (over the choices
# searched). Measured on the GPTs of benchmarks/bench_planner.py (fp8 allowed): 0.35 of
# keep-everything for 12 layers, 0.19 for 48 (where the greedy start with fp8 alone gave 0.51).
# The model is erratic: on 12 layers it stays at the recomputation-only start (0.35), while
# from the fp8 greedy start (0.60) it reaches 0.32 with 2 units of work and stays put with 1.
# Tried and dropped: probes by CP-SAT's cheapest-plan search (on 48 layers each one's share of
# the work went to presolve) and the model from both starts with half the work each (no lower
# on either GPT).
PROBES = 6


def peak_lower_bound(problem: Problem) -> int:
    """A peak no plan goes below (NOTE [Lowest peak])."""
    delta = [0] * (problem.num_steps + 1)
    for c in problem.candidates:
        delta[c.produced] += c.bytes
        delta[c.last_fwd_use + 1] -= c.bytes
        for s in c.bwd_uses:
            delta[s] += c.bytes
            delta[s + 1] -= c.bytes
    live, best = 0, 0
    for s in range(problem.num_steps):
        live += delta[s]
        best = max(best, problem.fixed_bytes[s] + live)
    return best


def lowest_peak(problem: Problem, opts: SolverOptions, work: float | None = None,
                deadline: float | None = None) -> Lowest:
    """The plan with the smallest peak found with the choices `opts` allows, within `work`
    (default: LOWEST_SHARE of the Problem's work limit, what an InfeasibleBudgetError gets);
    NOTE [Lowest peak]."""
    work = LOWEST_SHARE * opts.work(len(problem.candidates)) if work is None else work
    if deadline is None:
        deadline = time.monotonic() + opts.wall_limit_s(work)
    recompute_only = SolverOptions(**{**vars(opts), "allow_offload": False,
                                      "allow_lowbit": None})
    starts = [greedy(problem, 0, o, best_effort=True) for o in (opts, recompute_only)]
    best = min((s for s in starts if s is not None), key=lambda s: s[1].peak_bytes)
    lower = peak_lower_bound(problem)
    lo, hi = lower, best[1].peak_bytes - 1
    for _ in range(PROBES):
        if lo > hi:
            break
        mid = (lo + hi) // 2
        found = greedy(problem, mid, opts)
        if found is not None:
            best, hi = found, found[1].peak_bytes - 1
        else:
            lo = mid + 1
    res = solve_lazy(problem, opts, None, [best[0]], work, deadline)
    assert res.best is not None  # the start is always valid
    decisions, sim = res.best
    bound = max(lower, res.bound or 0)
    proven = bound >= sim.peak_bytes
    return Lowest(tuple(decisions), sim, proven, res.work,
                  sim.peak_bytes if proven else bound)


def min_peak(problem: Problem, opts: SolverOptions, work: float | None = None
             ) -> tuple[int, bool]:
    """(smallest peak found with the choices `opts` allows, whether it is proven minimal)."""
    low = lowest_peak(problem, opts, work)
    return low.peak_bytes, low.proven


def _infeasible(problem: Problem, opts: SolverOptions, budget: int, baseline: int,
                cache: PlanCache | None, t0: float, low: Lowest, work: float, deadline: float,
                limited: bool) -> InfeasibleBudgetError:
    peak = low.peak_bytes
    if cache is not None:  # the minimum the error names is then a budget solve() meets at once
        cache.store(cache_key(problem, opts, peak),
                    _plan(problem, low.decisions, low.sim, peak, baseline, Status.LOWEST_PEAK,
                          t0, opts, [], work=low.work, choices=choice_set(problem, opts)))
    alternatives: dict[str, int] = {}
    variants = []
    fp8 = LowbitFormat.FP8
    if not opts.allow_offload and opts.offload_available:
        variants.append(("offload=True", SolverOptions(**{**vars(opts), "allow_offload": True})))
    # fp8 may store tensors that int8 may not (NOTE [Comparisons and int8] in lowbit_rules.py)
    if opts.allow_lowbit is None or (opts.allow_lowbit is not fp8 and any(
            c.stores_lowbit(fp8) and not c.stores_lowbit(opts.allow_lowbit)
            for c in problem.candidates)):
        variants.append(("lowbit='fp8'", SolverOptions(**{**vars(opts), "allow_lowbit": fp8})))
    if len(variants) == 2:
        both = SolverOptions(**{**vars(opts), "allow_offload": True, "allow_lowbit": fp8})
        variants.append(("offload=True and lowbit='fp8'", both))
    for label, variant in variants:
        share = (1 - LOWEST_SHARE) * work / len(variants)
        alternatives[label] = lowest_peak(problem, variant, share, deadline).peak_bytes
    limit = SearchLimit(work) if limited and not low.proven else None
    return InfeasibleBudgetError(
        budget, peak, low.proven, baseline, alternatives, limit=limit,
        restricted=choice_set(problem, opts) is Choices.RESTRICTED, min_peak_bound=low.bound)


def solve(problem: Problem, budget: float | int, options: SolverOptions | None = None,
          cache_dir: str | os.PathLike[str] | None = None) -> Plan:
    """Plan `problem` under `budget` (a float fraction of the keep-everything peak, or int
    bytes). `cache_dir`: an on-disk plan cache (the pipeline passes `fxopt.config.cache_root()
    / "plans"`); None: none. Raises InfeasibleBudgetError when no plan found fits (NOTE [Solve
    flow]) and SearchTimeoutError when the wall-clock safety net stops the search."""
    opts = options or SolverOptions()
    t0 = time.monotonic()
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
        plan = _search(problem, opts, budget_b, base.peak_bytes, t0, cache)
    validate(problem, plan)
    if cache is not None:
        cache.store(key, plan)
    return plan


def _search(problem: Problem, opts: SolverOptions, budget: int, baseline: int, t0: float,
            cache: PlanCache | None) -> Plan:
    work = opts.work(len(problem.candidates))
    deadline = t0 + opts.wall_limit_s(work)
    if budget < peak_lower_bound(problem):  # below what every plan holds: nothing to search
        low = lowest_peak(problem, opts, LOWEST_SHARE * work, deadline)
        raise _infeasible(problem, opts, budget, baseline, cache, t0, low, work, deadline,
                          limited=False)
    start = greedy(problem, budget, opts, storage_pass=False)
    fallback = None
    if start is None and (opts.allow_offload or opts.allow_lowbit):
        start = fallback = greedy(problem, budget, opts)
    starts = [start[0]] if start is not None and fallback is None else [keep_all(problem)]
    spent, share = 0.0, None
    blocks = find_blocks(problem) if start is None or fallback is not None else None
    if blocks is not None:  # no greedy hint: start from the blocks (NOTE [Block search])
        found, spent = block_plan(problem, opts, budget, blocks, starts, work, deadline)
        if found is not None:
            starts, share = [found[0]], IMPROVE_AFTER_BLOCKS
    res = solve_lazy(problem, opts, budget, starts, work - spent, deadline,
                     fallback[0] if fallback is not None else None, improve_share=share)
    res = dataclasses.replace(res, work=round(res.work + spent, 3))
    choices = choice_set(problem, opts)
    if res.best is None:
        low = lowest_peak(problem, opts, LOWEST_SHARE * work, deadline)
        # A proof over the restricted choices does not cover the lowest plan, which may lie
        # outside them (a long recomputation chain): where it fits, it is the answer.
        if low.peak_bytes > budget:
            raise _infeasible(problem, opts, budget, baseline, cache, t0, low, work, deadline,
                              limited=res.status != Status.INFEASIBLE)
        return _plan(problem, low.decisions, low.sim, budget, baseline, Status.LOWEST_PEAK, t0,
                     opts, [*res.warnings, f"the search found no cheaper plan within its work "
                            f"limit (work_limit={work:g}); using the plan with the lowest peak "
                            "(raise work_limit for a faster one)"],
                     work=res.work + low.work, choices=choices)
    decisions, sim = res.best
    status, warnings = _status(res, opts, start), list(res.warnings)
    plan = _plan(problem, decisions, sim, budget, baseline, status, t0, opts, warnings,
                 res.bound, res.work, choices,
                 None if start is None else start[1].objective(opts.lowbit_penalty_us))
    gap = plan.gap
    if status not in (Status.OPTIMAL, Status.WITHIN_GAP) and (gap is None or gap > WARN_GAP):
        warnings.append(f"the search used its work limit (work_limit={work:g}) and returns "
                        f"{plan.quality()} (objective {plan.objective_us} us, bound "
                        f"{res.bound} us); raise work_limit (FXOPT_WORK_LIMIT) for a better one")
        plan = plan.with_(warnings=tuple(warnings))
    return plan


def _status(res: LazyResult, opts: SolverOptions,
            start: tuple[tuple[Decision, ...], Simulation] | None) -> Status:
    if res.status in (Status.OPTIMAL, Status.WITHIN_GAP):
        return res.status
    if start is None:
        return Status.FEASIBLE
    assert res.best is not None
    pen = opts.lowbit_penalty_us
    better = res.best[1].objective(pen) < start[1].objective(pen)
    return Status.IMPROVED if better else Status.GREEDY
