"""Solver options: a frozen dataclass validated on construction (not `fxopt.config`, which maps
user options onto this)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from fxopt.plan import LowbitFormat

# NOTE [Work limit and safety net]
# The search stops on deterministic work, never on the clock: work_limit is counted in CP-SAT's
# deterministic seconds (a count of the solver's own operations, about a second of one
# unloaded core each), summed over every CP-SAT run of one solve (each lazy round, the
# lowest-peak search behind an error). The same Problem and options therefore give the same
# plan on any machine under any load, and every rank of a distributed job plans alike. Left
# None, the work grows with the Problem: WORK_PER_CANDIDATE per candidate, at least MIN_WORK
# (measured on meta-device GPTs, benchmarks/bench_planner.py: 3.9 for 12 layers, 15 for 48,
# 30 for 96). time_limit_s is only a safety net on the wall clock for the whole solve; a
# search it stops would depend on the machine, so that raises SearchTimeoutError instead of
# returning a plan. Left None it is SAFETY_NET_FACTOR times the work, at least
# SAFETY_NET_MIN_S. With deterministic=False the wall clock is the limit (no work limit, no
# error) and plans may differ from run to run.
WORK_PER_CANDIDATE = 0.012
MIN_WORK = 2.0
SAFETY_NET_FACTOR = 20.0
SAFETY_NET_MIN_S = 60.0


@dataclass(frozen=True)
class SolverOptions:
    """work_limit: deterministic work for the whole solve (NOTE [Work limit and safety net]);
        None: from the Problem's size.
    time_limit_s: the wall-clock safety net for the whole solve (greedy, every CP-SAT run);
        None: from the work limit. With deterministic=False, the limit itself.
    workers: CP-SAT search workers. seed: CP-SAT random seed.
    deterministic: make the answer independent of machine speed and load (see NOTE
        [Determinism] in cpsat.py); costs some search speed with workers > 1.
    allow_offload / allow_lowbit: which choices besides keep and recompute may be used;
        allow_lowbit is the low-bit storage format (a member, or "fp8" / "int8"), None for none.
    offload_available: offload exists where the graph runs (CUDA), so an infeasible budget may
        name it as an option; on the CPU it is never offered.
    lowbit_penalty_us: added to the objective for each low-bit tensor, so compression is chosen
        only where it pays.
    max_restore_points: recompute / dequantise points considered per tensor (bounds how long a
        recompute chain can be).
    restore_window: also consider this many steps just before the latest restore point
        (NOTE [CP-SAT model] in cpsat.py).
    prefetch_points: prefetch positions considered per offloaded tensor.
    lazy_rounds: maximum solve -> simulate -> add violated steps rounds.
    relative_gap: stop once (objective - bound) <= relative_gap * objective (0: prove optimality).
    """

    work_limit: float | None = None
    time_limit_s: float | None = None
    workers: int = 1
    seed: int = 0
    deterministic: bool = True
    allow_offload: bool = False
    allow_lowbit: LowbitFormat | None = None
    offload_available: bool = True
    lowbit_penalty_us: int = 50
    max_restore_points: int = 6
    restore_window: int = 2
    prefetch_points: int = 3
    lazy_rounds: int = 12
    relative_gap: float = 1e-3

    def __post_init__(self) -> None:
        if self.work_limit is not None and not self.work_limit > 0:
            raise ValueError(f"work_limit must be > 0 or None, got {self.work_limit}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0 or None, got {self.time_limit_s}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.allow_lowbit is not None and type(self.allow_lowbit) is not LowbitFormat:
            try:
                object.__setattr__(self, "allow_lowbit", LowbitFormat.parse(self.allow_lowbit))
            except ValueError as err:
                raise ValueError(f"allow_lowbit must be None, 'fp8' or 'int8', got "
                                 f"{self.allow_lowbit!r}") from err
        if self.lowbit_penalty_us < 0:
            raise ValueError(f"lowbit_penalty_us must be >= 0, got {self.lowbit_penalty_us}")
        if not 0.0 <= self.relative_gap < 1.0:
            raise ValueError(f"relative_gap must lie in [0, 1), got {self.relative_gap}")
        if self.restore_window < 0:
            raise ValueError(f"restore_window must be >= 0, got {self.restore_window}")
        if self.max_restore_points < 1 or self.prefetch_points < 1 or self.lazy_rounds < 1:
            raise ValueError("max_restore_points, prefetch_points and lazy_rounds must be >= 1")

    def work(self, num_candidates: int) -> float:
        """The work limit for a Problem of this many candidates."""
        if self.work_limit is not None:
            return self.work_limit
        return max(MIN_WORK, WORK_PER_CANDIDATE * num_candidates)

    def wall_limit_s(self, work: float) -> float:
        """The wall-clock safety net (deterministic=False: the limit) for a solve of `work`."""
        if self.time_limit_s is not None:
            return self.time_limit_s
        return max(SAFETY_NET_MIN_S, SAFETY_NET_FACTOR * work)

    @property
    def content_hash(self) -> str:
        """Hash of every option that can change the plan. The wall-clock safety net cannot
        when the search is deterministic (a run it stops raises), so it is left out then; with
        deterministic=False it is the limit and is included."""
        data = asdict(self)
        if self.deterministic:
            del data["time_limit_s"]
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()
