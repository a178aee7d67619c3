"""Lazy memory constraints: solve, simulate the plan exactly, add the violated steps, re-solve."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ortools.sat.python import cp_model

from fxopt.plan import Decision, Status
from fxopt.solver.cpsat import Model, add_rows, build, decode, hint, parameters
from fxopt.solver.errors import SearchTimeoutError
from fxopt.solver.options import SolverOptions
from fxopt.solver.problem import Problem
from fxopt.solver.validate import Simulation, simulate


class _Callback(cp_model.CpSolverSolutionCallback):
    """Decodes and simulates every solution, keeps the best valid one (via `lazy.consider`) and
    stops the search at the first solution that breaks a step not yet in the model."""

    def __init__(self, mdl: Model, run: _LazyRun) -> None:
        super().__init__()
        self._mdl, self._run = mdl, run
        self.violated: list[int] = []

    def on_solution_callback(self) -> None:
        decisions = decode(self._mdl, self)
        limit = self.value(self._run.peak_var) if self._run.peak_var is not None else None
        sim = self._run.consider(decisions)
        self.violated = self._run.violations(sim, limit)
        if self.violated:
            self.stop_search()


@dataclass
class LazyResult:
    """best: best valid decisions and their simulation (None if none was found).
    status: OPTIMAL (proven over the model's choices), WITHIN_GAP (within opts.relative_gap
    of the bound), FEASIBLE (a time or round limit was hit), INFEASIBLE (no choice of the model
    fits), UNKNOWN (a limit was hit before any plan): see `fxopt.plan.Status`.
    bound: the solver's last proven bound on the objective (µs, or bytes in min-peak mode).
    work: deterministic work spent (CP-SAT's deterministic seconds, every round)."""

    best: tuple[tuple[Decision, ...], Simulation] | None
    status: Status
    bound: int | None
    rounds: int
    rows: int
    warnings: list[str]
    work: float = 0.0


class _LazyRun:
    def __init__(self, problem: Problem, opts: SolverOptions, budget: int | None) -> None:
        self.problem, self.opts, self.budget = problem, opts, budget
        self.peak_var: cp_model.IntVar | None = None
        self.best: tuple[tuple[Decision, ...], Simulation] | None = None
        self.hint: tuple[tuple[Decision, ...], Simulation] | None = None

    def key(self, sim: Simulation) -> tuple[int, ...]:
        obj = sim.objective(self.opts.lowbit_penalty_us)
        return (sim.peak_bytes, obj) if self.budget is None else (obj,)

    def consider(self, decisions: tuple[Decision, ...], hint: bool = True) -> Simulation:
        """Keep `decisions` if they are the best valid so far (as the next hint too, if hint)."""
        sim = simulate(self.problem, decisions)
        ok = self.budget is None or sim.peak_bytes <= self.budget
        if ok and (self.best is None or self.key(sim) < self.key(self.best[1])):
            self.best = (decisions, sim)
        if ok and hint and (self.hint is None or self.key(sim) < self.key(self.hint[1])):
            self.hint = (decisions, sim)
        return sim

    def violations(self, sim: Simulation, limit: int | None) -> list[int]:
        """Most violated steps (at most 8) not yet modelled."""
        cap = self.budget if self.budget is not None else limit
        assert cap is not None
        over = [(m - cap, s) for s, m in enumerate(sim.memory) if m > cap]
        return [s for _, s in sorted(over, key=lambda t: (-t[0], t[1]))[:8]]


# NOTE [Initial rows]
# Every memory row is dense (it sums every tensor alive at its step), and CP-SAT's linear
# relaxation carries each one: on meta-device GPTs, 17 rows made its LP slow and its bound
# weak, while the plans it found broke no other row. So a search for the cheapest plan starts
# with the rows a feasible start plan is tightest at: its peak steps. Where the start is over
# the budget (keep-everything, when the greedy plan failed), the highest violated step of each
# 1/16 of the schedule is added. The lowest-peak search flattens the peak over many steps, so it
# starts with the highest step of every 1/16 (fewer rounds, each of which restarts CP-SAT).
def initial_rows(problem: Problem, starts: Sequence[Simulation], budget: int | None) -> set[int]:
    """The first memory rows (NOTE [Initial rows])."""
    rows = {sim.peak_step for sim in starts}
    mem = starts[0].memory
    S = problem.num_steps
    for k in range(16):
        lo, hi = k * S // 16, (k + 1) * S // 16
        if lo < hi:
            top = max(range(lo, hi), key=lambda s: (mem[s], -s))
            if budget is None or mem[top] > budget:
                rows.add(top)
    return rows


def solve_lazy(problem: Problem, opts: SolverOptions, budget: int | None,
               starts: Sequence[tuple[Decision, ...]], work: float, deadline: float,
               fallback: tuple[Decision, ...] | None = None,
               restrict: Callable[[Model], None] | None = None,
               improve_share: float | None = None) -> LazyResult:
    """Solve -> simulate -> add violated steps -> re-solve, within `work` deterministic seconds
    in all (NOTE [Work limit and safety net] in options.py); `deadline` (monotonic s) is the
    wall-clock safety net, and a search it stops raises SearchTimeoutError (with
    deterministic=False it is the limit instead). budget None minimises the peak instead of
    the time (for InfeasibleBudgetError). starts are hinted; fallback is only a candidate
    answer. restrict adds constraints to the model (a neighbourhood, NOTE [Block search] in
    block_search.py): every plan is still simulated, so what it returns is valid either way.
    improve_share: of the work, what goes to improving the plan before the rest raises the
    bound (NOTE [Search]; default IMPROVE_SHARE, 1: none raises it)."""
    run = _LazyRun(problem, opts, budget)
    sims = [run.consider(d) for d in starts]
    if fallback is not None:  # a valid but poor plan: kept as the answer, never as the hint,
        run.consider(fallback, hint=False)  # since CP-SAT stays close to its hint
    mdl = build(problem, opts, exact_bytes=budget is None)
    if restrict is not None:
        restrict(mdl)
    if budget is None:
        hi = max(sim.peak_bytes for sim in sims)
        run.peak_var = mdl.model.new_int_var(0, hi, "peak")
        mdl.model.minimize(run.peak_var)
        cap: int | cp_model.IntVar = run.peak_var
    else:
        cap = budget
    add_rows(mdl, cap, initial_rows(problem, sims, budget))
    search = _Search(mdl, run, cap, work, deadline, (starts[0], sims[0]))
    share = IMPROVE_SHARE if improve_share is None else improve_share
    search.rounds(work * share, lb_search=False)
    if search.status is Status.FEASIBLE and share < 1:  # the rest of the work raises the bound
        search.rounds(work, lb_search=True)
    elif search.status is Status.UNKNOWN:  # no plan yet: keep looking for one
        search.rounds(work, lb_search=False)
    return LazyResult(run.best, search.status, search.bound, search.count, len(mdl.rows),
                      search.warnings, round(search.spent, 3))


# NOTE [Search]
# Measured on meta-device GPTs of 12 to 96 layers (benchmarks/bench_planner.py), one CP-SAT
# worker is good at one of two things depending on how it is set, never at both: the default
# search with the full linear relaxation (linearization_level 2) improves on the greedy plan
# but can leave its bound 1% short for good, and objective lower-bound search proves the
# bound in a fraction of a second where the other never does, but finds no better plan. So
# the work is spent in two phases on the same model: IMPROVE_SHARE of it improving the plan
# (stopping early once within relative_gap of the bound), the rest raising the bound from the
# best plan found. The bound of every run is a valid lower bound (a run that saw fewer memory
# rows solved a relaxation), so the highest one counts. Both phases are deterministic.
IMPROVE_SHARE = 0.75


class _Search:
    """The rounds of one lazy search: what they spent, the best bound, the status so far."""

    def __init__(self, mdl: Model, run: _LazyRun, cap: int | cp_model.IntVar, work: float,
                 deadline: float, start: tuple[tuple[Decision, ...], Simulation]) -> None:
        self.mdl, self.run, self.cap, self.work, self.deadline = mdl, run, cap, work, deadline
        self.start = start
        self.status, self.spent, self.count = Status.UNKNOWN, 0.0, 0
        self.bound: int | None = None
        self.warnings: list[str] = []

    def rounds(self, until: float, lb_search: bool) -> None:
        """Solve -> simulate -> add rows -> solve again until the work spent reaches `until`,
        a proof, or a round that breaks no missing row."""
        mdl, run, opts = self.mdl, self.run, self.run.opts
        # the lowest peak is searched to a proof: a minimum "within the gap" is no minimum
        gap = None if run.budget is not None else 0.0
        while self.count < opts.lazy_rounds:
            wall_left = self.deadline - time.monotonic()
            if opts.deterministic and wall_left <= 0:
                raise _timeout(opts, self.work, self.spent, run)
            if wall_left <= 0 or self.spent >= until:
                self._settle(None)
                return
            self.count += 1
            hinted = run.hint or self.start
            hint(mdl, hinted[0], None if run.peak_var is None else
                 (run.peak_var, hinted[1].peak_bytes))
            solver = parameters(opts, wall_left, until - self.spent if opts.deterministic
                                else None, gap)
            solver.parameters.use_objective_lb_search = lb_search
            cb = _Callback(mdl, run)
            code = solver.solve(mdl.model, cb)
            self.spent += solver.deterministic_time
            if code == cp_model.MODEL_INVALID:
                raise RuntimeError(f"internal error: invalid CP-SAT model: "
                                   f"{mdl.model.validate()}")
            if code == cp_model.INFEASIBLE:
                self.status = Status.INFEASIBLE
                return
            if cb.violated:  # stopped early: model the broken steps and go again
                add_rows(mdl, self.cap, cb.violated)
                continue
            if code != cp_model.OPTIMAL and opts.deterministic and \
                    self.spent < until * (1 - 1e-6) and solver.wall_time >= 0.98 * wall_left:
                raise _timeout(opts, self.work, self.spent, run)  # the clock stopped it
            self._settle(math.ceil(solver.best_objective_bound - 1e-6)
                         if code in (cp_model.OPTIMAL, cp_model.FEASIBLE) else None)
            return
        self._settle(None)
        self.warnings.append(f"stopped after {self.count} lazy rounds with memory rows still "
                             "missing")

    def _settle(self, bound: int | None) -> None:
        """The status from the best plan and the highest bound so far."""
        if bound is not None:
            self.bound = bound if self.bound is None else max(self.bound, bound)
        best = self.run.best
        if best is None:
            self.status = Status.UNKNOWN
            return
        value = self.run.key(best[1])[0]
        gap = self.run.opts.relative_gap if self.run.budget is not None else 0.0
        if self.bound is not None and self.bound >= value:
            self.status = Status.OPTIMAL
        elif self.bound is not None and value - self.bound <= gap * value:
            self.status = Status.WITHIN_GAP
        else:
            self.status = Status.FEASIBLE


def _timeout(opts: SolverOptions, work: float, spent: float, run: _LazyRun
             ) -> SearchTimeoutError:
    best = "" if run.best is None else \
        f"; the best plan so far peaks at {run.best[1].peak_bytes} B"
    limit = "time_limit_s" if opts.time_limit_s is not None else "the automatic time_limit_s"
    return SearchTimeoutError(
        f"the planner's wall-clock safety net ({limit}) stopped the search after "
        f"{spent:.2f} of the {work:g} deterministic seconds of work it was given (from "
        f"work_limit){best}. A plan "
        "cut short by the clock depends on this machine's speed and load, so none is returned: "
        "raise time_limit_s (FXOPT_TIME_LIMIT) or lower work_limit (FXOPT_WORK_LIMIT).")
