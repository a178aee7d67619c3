"""Solver options: a frozen dataclass validated on construction (not `fxopt.config`, which maps
user options onto this)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from fxopt.plan import LowbitFormat


@dataclass(frozen=True)
class SolverOptions:
    """time_limit_s: wall-clock limit for the whole solve (greedy + every CP-SAT round).
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

    time_limit_s: float = 10.0
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
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0, got {self.time_limit_s}")
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

    @property
    def content_hash(self) -> str:
        """Hash of every option that can change the plan (the wall-clock limit and worker count
        are included: with deterministic=False they can)."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()
