"""Errors of the planner; each says what is wrong and what to do about it."""

from __future__ import annotations

from dataclasses import dataclass


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


class InvalidPlanError(ValueError):
    """A plan breaks the decision rules of validate.py (a planner bug or a stale cache entry)."""


@dataclass(frozen=True)
class SearchLimit:
    """Why a search stopped before it could say a budget is unreachable: the work limit it had
    (CP-SAT's deterministic seconds) and the option that gives it more."""

    work: float
    option: str = "work_limit"  # fxopt.Options / SolverOptions field (FXOPT_WORK_LIMIT)


class InfeasibleBudgetError(ValueError):
    """No plan the search found fits the budget.

    budget_bytes: the budget asked for. min_peak_bytes: the smallest peak of a plan fxopt found
    (ask for it and that plan is returned); proven minimal over the choices searched when
    min_peak_proven. baseline_peak_bytes: keep everything. alternatives: option description ->
    smallest peak found with that option turned on, for the options that would lower it.
    limit: set when the search ran out of its work limit before it could prove the budget
    unreachable (the budget may be reachable with more work); None when it proved it.
    restricted: the choices searched were restricted (fxopt.plan.Choices), so a proof holds
    over those choices.
    min_peak_bound_bytes: no plan over the choices searched peaks lower (None: not known), so
    min_peak_gap = (min_peak - bound) / min_peak is how far the named peak may be from the
    lowest one.
    """

    def __init__(self, budget_bytes: int, min_peak_bytes: int, min_peak_proven: bool,
                 baseline_peak_bytes: int, alternatives: dict[str, int], context: str = "",
                 *, limit: SearchLimit | None = None, restricted: bool = False,
                 min_peak_bound: int | None = None) -> None:
        self.budget_bytes = budget_bytes
        self.min_peak_bytes = min_peak_bytes
        self.min_peak_proven = min_peak_proven
        self.baseline_peak_bytes = baseline_peak_bytes
        self.alternatives = dict(alternatives)
        self.context = context
        self.limit = limit
        self.restricted = restricted
        self.min_peak_bound_bytes = min_peak_bound
        why = f" ({context})" if context else ""
        if min_peak_proven:
            qualifier = " (minimal over the restricted choices searched)" if restricted else ""
        else:
            qualifier = " found (not proven minimal)"
        if limit is not None:
            head = (f"memory budget {_mib(budget_bytes)} ({budget_bytes} B) was not met{why}: "
                    f"the search ran out of its work limit ({limit.option}={limit.work:g}) "
                    f"before finding a plan within it; the lowest peak it reached is "
                    f"{_mib(min_peak_bytes)} ({min_peak_bytes} B), a plan fxopt returns when "
                    f"asked for that budget; keeping everything peaks at "
                    f"{_mib(baseline_peak_bytes)}.")
        else:
            searched = " by the choices searched" if restricted else ""
            head = (f"memory budget {_mib(budget_bytes)} ({budget_bytes} B) cannot be met"
                    f"{searched}{why}: the smallest reachable peak{qualifier} is "
                    f"{_mib(min_peak_bytes)} "
                    f"({min_peak_bytes} B); keeping everything peaks at "
                    f"{_mib(baseline_peak_bytes)}.")
        lines = [head]
        gap = self.min_peak_gap
        if gap is not None and not min_peak_proven and min_peak_bound is not None:
            lines.append(f"That peak is at most {100 * gap:.1f}% above the lowest any plan "
                         f"{'of the choices searched ' if restricted else ''}can reach "
                         f"({_mib(min_peak_bound)}).")
        better = {k: v for k, v in self.alternatives.items() if v < min_peak_bytes}
        fix = f"Raise the budget to at least {min_peak_bytes} B"
        if better:
            opts = "; ".join(f"{k} reaches {_mib(v)} ({v} B)" for k, v in better.items())
            lines.append(f"Options that would lower it: {opts}.")
            fix += ", or turn on one of those options"
        if limit is not None:
            fix += (f", or give the search more work ({limit.option}, environment variable "
                    f"FXOPT_{limit.option.upper()}; it is {limit.work:g} now)")
        lines.append(fix + ".")
        super().__init__(" ".join(lines))

    @property
    def min_peak_gap(self) -> float | None:
        if self.min_peak_bound_bytes is None or self.min_peak_bytes <= 0:
            return None
        return max(self.min_peak_bytes - self.min_peak_bound_bytes, 0) / self.min_peak_bytes

    def shifted(self, held: int, budget_bytes: int, context: str) -> InfeasibleBudgetError:
        """The same finding for a larger whole (a training step) that holds `held` bytes more
        at this graph's peak and asked for `budget_bytes`."""
        return InfeasibleBudgetError(
            budget_bytes, held + self.min_peak_bytes, False, held + self.baseline_peak_bytes,
            {k: held + v for k, v in self.alternatives.items()}, context, limit=self.limit,
            restricted=self.restricted, min_peak_bound=None if self.min_peak_bound_bytes is None
            else held + self.min_peak_bound_bytes)


class SearchTimeoutError(RuntimeError):
    """The wall-clock safety net stopped the search before its deterministic work limit: a
    plan cut short by the clock would depend on the machine's speed and load (ranks of one job
    could disagree), so none is returned."""


class NoPlanFoundError(RuntimeError):
    """No longer raised by `solve` (a budget the search cannot meet in its work limit is an
    InfeasibleBudgetError with `limit` set); kept for callers that catch it."""
