"""The planner: a `Problem` on plain integers in, a validated, frozen `Plan` out.

Nothing here imports torch or any other fxopt package; the graph adapter builds the Problem.

    plan = solve(problem, 0.5, SolverOptions(time_limit_s=10), cache_dir=None)
    validate(problem, plan)            # what solve() already checked: the spec

Modules: problem (data, integer scaling), plan (answer), validate (exact simulator = spec),
greedy, cpsat (model), lazy (lazy rows), planner (solve), cache, errors, synthetic (GPT-like
Problems for tests and benchmarks).
"""

from __future__ import annotations

from fxopt.solver.cache import DEFAULT_CACHE_DIR, PlanCache, cache_key, cache_root
from fxopt.solver.errors import InfeasibleBudgetError, InvalidPlanError, NoPlanFoundError
from fxopt.solver.greedy import greedy
from fxopt.solver.options import LOWBIT_FORMATS, SolverOptions
from fxopt.solver.plan import Decision, Kind, Plan
from fxopt.solver.problem import Candidate, Problem, ProblemError, budget_bytes, to_us
from fxopt.solver.planner import min_peak, solve
from fxopt.solver.validate import Simulation, baseline_peak, keep_all, simulate, validate

__all__ = [
    "DEFAULT_CACHE_DIR", "LOWBIT_FORMATS", "Candidate", "Decision", "InfeasibleBudgetError",
    "InvalidPlanError", "Kind", "NoPlanFoundError", "Plan", "PlanCache", "Problem",
    "ProblemError", "Simulation", "SolverOptions", "baseline_peak", "budget_bytes", "cache_key",
    "cache_root",
    "greedy", "keep_all", "min_peak", "simulate", "solve", "to_us", "validate",
]
