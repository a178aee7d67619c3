"""What fxopt did to one graph: the `Report` (plan, predicted peaks, graphs, timings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fxopt.config import Options, format_bytes


@dataclass(frozen=True)
class SavedTensor:
    """A tensor the forward graph saves for the backward graph."""

    name: str
    shape: tuple[str, ...]  # symbolic dimensions print as their symbol (e.g. 's0')
    dtype: str
    nbytes: int  # at the size hints when shapes are dynamic


@dataclass(frozen=True)
class Stage:
    """One stage of a compile and how long it took."""

    name: str
    seconds: float


@dataclass(frozen=True)
class Report:
    """The outcome of planning and partitioning one joint graph.

    peak_bytes: predicted peak of the step with the chosen partition; baseline_peak_bytes:
    predicted peak when every tensor the backward needs is kept; budget_bytes: the budget the
    plan was held to (None when no budget was given). Peaks are above parameters and inputs.
    """

    options: Options
    strategy: str
    fallback_reason: str | None
    plan: Any  # fxopt.solver.Plan, or None when the graph was not planned
    peak_bytes: int | None
    baseline_peak_bytes: int | None
    budget_bytes: int | None
    solve_seconds: float
    joint_ops: int
    forward_ops: int
    backward_ops: int
    saved: tuple[SavedTensor, ...]
    seconds: float
    stages: tuple[Stage, ...]
    forward_graph: Any = field(repr=False, compare=False)  # torch.fx.GraphModule
    backward_graph: Any = field(repr=False, compare=False)
    index: int = -1  # position in the process-wide list; -1 for fxopt.explain

    @property
    def saved_bytes(self) -> int:
        return sum(s.nbytes for s in self.saved)

    def summary(self) -> str:
        fallback = f" (fallback: {self.fallback_reason})" if self.fallback_reason else ""
        peak = ""
        if self.peak_bytes is not None and self.baseline_peak_bytes is not None:
            peak = (f"; predicted peak {format_bytes(self.peak_bytes)} (keep-everything "
                    f"{format_bytes(self.baseline_peak_bytes)})")
        budget = format_bytes(self.budget_bytes) if self.budget_bytes is not None else "none"
        return (f"fxopt graph {self.index}: {self.strategy}{fallback}; budget {budget}{peak}; "
                f"{self.joint_ops} joint ops -> {self.forward_ops} fwd + {self.backward_ops} bwd;"
                f" {len(self.saved)} saved tensors ({format_bytes(self.saved_bytes)}); "
                f"{self.seconds * 1e3:.0f} ms")

    def __str__(self) -> str:
        return self.summary()
