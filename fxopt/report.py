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
class TensorRow:
    """One planned tensor, for the report's table."""

    name: str
    shape: tuple[str, ...]
    dtype: str
    nbytes: int
    choice: str  # "keep", "recompute", "offload", "lowbit", "lowbit_offload"
    cost_us: int  # estimated time the choice adds to the step
    reason: str  # why (e.g. "cheap to recompute", "random: never recomputed")


@dataclass(frozen=True)
class Timeline:
    """Predicted live bytes at every schedule step for one partition of the graph."""

    label: str  # "keep everything", "PyTorch default", "fxopt plan"
    live_bytes: tuple[int, ...]
    num_fwd_steps: int  # steps [0, num_fwd_steps) are forward, the rest backward

    @property
    def peak_bytes(self) -> int:
        return max(self.live_bytes, default=0)


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
    status: str = ""  # solver status ("OPTIMAL", "FEASIBLE", "GREEDY", ...), "" when not planned
    extra_time_us: int = 0  # estimated time the plan adds to the step
    default_peak_bytes: int | None = None  # predicted peak of PyTorch's default partition
    tensors: tuple[TensorRow, ...] = ()  # every planned tensor
    timelines: tuple[Timeline, ...] = ()  # keep everything / PyTorch default / fxopt plan
    joint_graph: Any = field(default=None, repr=False, compare=False)  # before partitioning
    problem: Any = field(default=None, repr=False, compare=False)  # fxopt.solver.Problem

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
        from fxopt.render_text import render_text

        return render_text(self)

    def _repr_html_(self) -> str:
        from fxopt.render_html import render_html

        return render_html(self)
