"""The planner: a `Problem` on plain integers in, a validated, frozen `Plan` out.

Nothing here imports torch or another fxopt package but the plan's plain data (`fxopt.plan`);
the graph adapter (`fxopt.problem_builder`) builds the Problem.

    plan = solve(problem, 0.5, SolverOptions(work_limit=5), cache_dir=None)
    validate(problem, plan)            # what solve() already checked: the spec

Modules: problem (data, integer scaling), options, validate (exact simulator = spec), greedy,
cpsat (model), lazy (lazy rows), planner (solve), cache, errors. The answer, `Plan`, and its
vocabulary (`Decision`, `Kind`, `LowbitFormat`, `Status`) are `fxopt.plan`'s.
"""

from __future__ import annotations

from fxopt.plan import LOWBIT_FORMATS, Choices, Decision, Kind, LowbitFormat, Plan, Status
from fxopt.solver.cache import PlanCache, cache_key
from fxopt.solver.errors import (
    InfeasibleBudgetError,
    InvalidPlanError,
    NoPlanFoundError,
    SearchLimit,
    SearchTimeoutError,
)
from fxopt.solver.greedy import greedy
from fxopt.solver.options import SolverOptions
from fxopt.solver.planner import Lowest, lowest_peak, min_peak, solve
from fxopt.solver.problem import Candidate, Problem, ProblemError, budget_bytes, to_us
from fxopt.solver.validate import (
    Simulation,
    baseline_peak,
    copy_done_steps,
    keep_all,
    simulate,
    validate,
)

__all__ = [
    "LOWBIT_FORMATS", "Candidate", "Choices", "Decision", "InfeasibleBudgetError",
    "InvalidPlanError", "Kind", "LowbitFormat", "Lowest", "NoPlanFoundError", "Plan", "PlanCache",
    "Problem", "ProblemError", "SearchLimit", "SearchTimeoutError", "Simulation",
    "SolverOptions", "Status", "baseline_peak", "budget_bytes", "cache_key", "copy_done_steps",
    "greedy", "keep_all", "lowest_peak", "min_peak", "simulate", "solve", "to_us", "validate",
]
