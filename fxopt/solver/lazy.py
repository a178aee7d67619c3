"""Lazy memory constraints: solve, simulate the plan exactly, add the violated steps, re-solve."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ortools.sat.python import cp_model

from fxopt.plan import Decision, Status
from fxopt.solver.cpsat import DETERMINISTIC_SHARE, Model, add_rows, build, decode, hint, parameters
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
    bound: the solver's last proven bound on the objective (µs, or bytes in min-peak mode)."""

    best: tuple[tuple[Decision, ...], Simulation] | None
    status: Status
    bound: int | None
    rounds: int
    rows: int
    warnings: list[str]


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


def initial_rows(problem: Problem, starts: Sequence[Simulation]) -> set[int]:
    """Peak steps of the start plans plus the highest step of each 1/16 of the schedule."""
    rows = {sim.peak_step for sim in starts}
    mem = starts[0].memory
    S = problem.num_steps
    for k in range(16):
        lo, hi = k * S // 16, (k + 1) * S // 16
        if lo < hi:
            rows.add(max(range(lo, hi), key=lambda s: (mem[s], -s)))
    return rows


def solve_lazy(problem: Problem, opts: SolverOptions, budget: int | None,
               starts: Sequence[tuple[Decision, ...]], deadline: float,
               fallback: tuple[Decision, ...] | None = None) -> LazyResult:
    """Solve -> simulate -> add violated steps -> re-solve, within `deadline` (monotonic s).
    budget None minimises the peak instead of the time (for InfeasibleBudgetError). starts are
    hinted; fallback is only a candidate answer."""
    run = _LazyRun(problem, opts, budget)
    sims = [run.consider(d) for d in starts]
    if fallback is not None:  # a valid but poor plan: kept as the answer, never as the hint,
        run.consider(fallback, hint=False)  # since CP-SAT stays close to its hint
    mdl = build(problem, opts, exact_bytes=budget is None)
    if budget is None:
        hi = max(sim.peak_bytes for sim in sims)
        run.peak_var = mdl.model.new_int_var(0, hi, "peak")
        mdl.model.minimize(run.peak_var)
        cap: int | cp_model.IntVar = run.peak_var
    else:
        cap = budget
    add_rows(mdl, cap, initial_rows(problem, sims))
    det_left = opts.time_limit_s * DETERMINISTIC_SHARE
    status, bound, warnings, rounds = Status.UNKNOWN, None, [], 0
    while rounds < opts.lazy_rounds:
        wall_left = deadline - time.monotonic()
        if wall_left <= 0 or det_left <= 0:
            status = Status.FEASIBLE if run.best else Status.UNKNOWN
            break
        rounds += 1
        hint(mdl, run.hint[0] if run.hint else starts[0])
        solver = parameters(opts, wall_left, det_left)
        cb = _Callback(mdl, run)
        code = solver.solve(mdl.model, cb)
        det_left -= solver.deterministic_time
        if code == cp_model.MODEL_INVALID:
            raise RuntimeError(f"internal error: invalid CP-SAT model: {mdl.model.validate()}")
        if code == cp_model.INFEASIBLE:
            status = Status.INFEASIBLE
            break
        if cb.violated:  # stopped early: model the broken steps and go again
            add_rows(mdl, cap, cb.violated)
            continue
        if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            bound = math.ceil(solver.best_objective_bound - 1e-6)
            status = Status.FEASIBLE
            if code == cp_model.OPTIMAL and run.best is not None:  # proven, or within the gap
                status = Status.OPTIMAL if bound >= run.key(run.best[1])[0] else Status.WITHIN_GAP
            if code == cp_model.FEASIBLE and wall_left - solver.wall_time <= 0.05 \
                    and opts.deterministic:
                warnings.append("the wall-clock limit stopped CP-SAT before its deterministic "
                                "limit: plans may differ between ranks; raise time_limit_s")
            break
        status = Status.FEASIBLE if run.best else Status.UNKNOWN  # cp_model.UNKNOWN: out of time
        break
    else:
        status = Status.FEASIBLE if run.best else Status.UNKNOWN
        warnings.append(f"stopped after {rounds} lazy rounds with memory rows still missing")
    return LazyResult(run.best, status, bound, rounds, len(mdl.rows), warnings)
