"""Errors of the planner; each says what is wrong and what to do about it."""

from __future__ import annotations


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


class InvalidPlanError(ValueError):
    """A plan breaks the decision rules of validate.py (a planner bug or a stale cache entry)."""


class InfeasibleBudgetError(ValueError):
    """No plan with the allowed choices fits the budget.

    budget_bytes: the budget asked for. min_peak_bytes: the smallest peak reachable with the
    allowed choices (proven minimal when min_peak_proven). baseline_peak_bytes: keep everything.
    alternatives: option description -> smallest peak found with that option turned on, for the
    options that would lower it.
    """

    def __init__(self, budget_bytes: int, min_peak_bytes: int, min_peak_proven: bool,
                 baseline_peak_bytes: int, alternatives: dict[str, int], context: str = ""
                 ) -> None:
        self.budget_bytes = budget_bytes
        self.min_peak_bytes = min_peak_bytes
        self.min_peak_proven = min_peak_proven
        self.baseline_peak_bytes = baseline_peak_bytes
        self.alternatives = dict(alternatives)
        self.context = context
        qualifier = "" if min_peak_proven else " found (not proven minimal)"
        why = f" ({context})" if context else ""
        lines = [
            f"memory budget {_mib(budget_bytes)} ({budget_bytes} B) cannot be met{why}: the "
            f"smallest reachable peak{qualifier} is {_mib(min_peak_bytes)} ({min_peak_bytes} B); "
            f"keeping everything peaks at {_mib(baseline_peak_bytes)}."]
        better = {k: v for k, v in self.alternatives.items() if v < min_peak_bytes}
        fix = f"Raise the budget to at least {min_peak_bytes} B"
        if better:
            opts = "; ".join(f"{k} reaches {_mib(v)} ({v} B)" for k, v in better.items())
            lines.append(f"Options that would lower it: {opts}.")
            fix += ", or turn on one of those options"
        lines.append(fix + ".")
        super().__init__(" ".join(lines))


class NoPlanFoundError(RuntimeError):
    """The time limit ran out before any plan within the budget was found (the budget may still
    be feasible)."""
