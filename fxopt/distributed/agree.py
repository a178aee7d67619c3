"""One plan on every rank.

NOTE [One plan on every rank]
Ranks that run the same graphs (the data-parallel replicas of a stage, every rank under FSDP)
must run the same plans: a recomputation or a collective planned on one rank and not on another
would make the ranks' programs differ, and a re-plan on one rank only would leave the others
waiting in a collective. The search is deterministic (fixed workers and seed, a deterministic
time limit), so the ranks normally find the same plan. Each outcome is still settled together:
every search result (a plan's hash, or the kind of error) is gathered over the group; when they
differ, the mismatch is logged and rank 0's plan is used, re-simulated on this rank's Problem.
Numbers that steer later searches (the lowest peak reached, the measured step peak) are settled
as their largest value. So every rank takes the same path through the compile and issues the
same exchanges in the same order. The exchanges use a group of their own, so they never
interleave with FSDP's or the pipeline's collectives.
"""

from __future__ import annotations

import logging
from typing import Any

import torch.distributed as dist

from fxopt.compat import outside_tracing
from fxopt.solver import InfeasibleBudgetError, Plan, Problem, SearchTimeoutError, simulate

log = logging.getLogger("fxopt")


class PlanAgreement:
    """Settles search outcomes over `group` (NOTE above); `mismatches` counts what it fixed."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.mismatches = 0
        self.exchanges = 0

    def _gather(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * dist.get_world_size(self.group)
        with outside_tracing():
            dist.all_gather_object(out, value, group=self.group)
        self.exchanges += 1
        return out

    def plan(self, problem: Problem, found: Plan | Exception) -> Plan:
        mine = ("plan", found.content_hash) if isinstance(found, Plan) else \
            ("error", type(found).__name__)
        seen = self._gather(mine)
        if all(s == seen[0] for s in seen):
            if isinstance(found, Exception):
                raise found
            return found
        self.mismatches += 1
        log.warning("fxopt: the ranks found different plans for one graph (%s); rank 0's is "
                    "used on every rank", ", ".join(f"rank {r}: {kind} {text[:12]}"
                                                    for r, (kind, text) in enumerate(seen)))
        first = dist.get_global_rank(self.group, 0)
        payload = [_outcome(found)]
        with outside_tracing():
            dist.broadcast_object_list(payload, src=first, group=self.group)
        kind, data = payload[0]
        if kind == "infeasible":
            args, kwargs = data
            raise InfeasibleBudgetError(*args, **kwargs)
        if kind == "none":
            if isinstance(found, Exception):
                raise found
            raise SearchTimeoutError("rank 0's search for this graph was stopped by the "
                                     "wall-clock safety net; every rank does as rank 0 does")
        theirs = Plan.from_json(data)
        sim = simulate(problem, theirs.decisions)
        return theirs.with_(problem_hash=problem.content_hash, peak_bytes=sim.peak_bytes,
                            extra_time_us=sim.extra_time_us,
                            warnings=theirs.warnings + ("rank 0's plan, used on every rank",))

    def number(self, value: int) -> int:
        return max(self._gather(int(value)))


def _outcome(found: Plan | Exception) -> tuple[str, Any]:
    """A search outcome as plain data another rank can act on."""
    if isinstance(found, Plan):
        return "plan", found.to_json()
    if isinstance(found, InfeasibleBudgetError):
        return "infeasible", ((found.budget_bytes, found.min_peak_bytes, found.min_peak_proven,
                               found.baseline_peak_bytes, found.alternatives, found.context),
                              {"limit": found.limit, "restricted": found.restricted,
                               "min_peak_bound": found.min_peak_bound_bytes})
    return "none", None
