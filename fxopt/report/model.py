"""What fxopt did to one graph: the `Report` (plan, predicted peaks, graphs, timings)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fxopt.config import Options, format_bytes
from fxopt.plan import Kind, LowbitFormat, Plan, Status
from fxopt.step_runs import Coupling, GraphUse, Outside, step_peak

if TYPE_CHECKING:  # the planning's record; the pipeline imports this module, not the reverse
    from fxopt.pipeline import Planned
    from fxopt.solver.problem import Problem


@dataclass(frozen=True)
class SavedTensor:
    """A tensor the forward graph saves for the backward graph."""

    name: str
    shape: tuple[str, ...]  # symbolic dimensions print as their symbol (e.g. 's0')
    dtype: str
    nbytes: int  # at the size hints when shapes are dynamic
    host: bool = False  # an offloaded tensor's host copy: holds no device memory
    parameter: bool = False  # a parameter or buffer the backward reads: not the step's memory


@dataclass(frozen=True)
class Stage:
    """One stage of a compile, how long it took and, for a pass, the program after it."""

    name: str
    seconds: float
    forward_code: str = field(default="", repr=False)
    backward_code: str = field(default="", repr=False)


@dataclass(frozen=True)
class TensorRow:
    """One planned tensor, for the report's table."""

    name: str
    shape: tuple[str, ...]
    dtype: str
    nbytes: int
    choice: Kind  # the plan's decision kind (a str: "keep", "recompute", "lowbit", ...)
    cost_us: int  # estimated time the choice adds to the step
    reason: str  # why (e.g. "cheap to recompute", "random: never recomputed")
    source: str = ""  # where in the user's code: "block.fc1: h = self.fc1(x)"; "" if unknown
    fmt: LowbitFormat | None = None  # the storage format of a low-bit choice

    def __post_init__(self) -> None:
        if type(self.choice) is not Kind:
            object.__setattr__(self, "choice", Kind(self.choice))
        if self.fmt is not None and type(self.fmt) is not LowbitFormat:
            object.__setattr__(self, "fmt", LowbitFormat.parse(self.fmt))


@dataclass(frozen=True)
class Timeline:
    """Predicted live bytes at every schedule step for one partition of the graph."""

    label: str  # KEEP_SERIES, DEFAULT_SERIES or PLAN_SERIES
    live_bytes: tuple[int, ...]
    num_fwd_steps: int  # steps [0, num_fwd_steps) are forward, the rest backward

    @property
    def peak_bytes(self) -> int:
        return max(self.live_bytes, default=0)


@dataclass(frozen=True)
class Report:
    """The outcome of planning and partitioning one joint graph.

    The fields describe the partition that was used (fxopt's plan, or PyTorch's partition
    where it peaks lower or planning failed); `planned` is what the planning found, whichever
    partition was then used, and owns the facts of the planning (the properties below read
    them). peak_bytes: predicted peak of the step with the chosen partition. Peaks are above
    parameters and inputs.
    """

    options: Options
    strategy: str
    fallback_reason: str | None
    plan: Plan | None  # fxopt's plan when it was used
    peak_bytes: int | None
    solve_seconds: float
    joint_ops: int
    forward_ops: int
    backward_ops: int
    saved: tuple[SavedTensor, ...]
    seconds: float
    stages: tuple[Stage, ...]
    forward_graph: Any = field(repr=False, compare=False)  # torch.fx.GraphModule
    backward_graph: Any = field(repr=False, compare=False)
    index: int = -1  # position in the process-wide list, or in the explained step
    source: str = "backend"  # "backend" (a compile) or "explain" (fxopt.explain)
    status: Status | str = ""  # how the plan was found (fxopt.plan.Status); "" if not planned
    extra_time_us: int = 0  # estimated time the plan adds to the step
    default_peak_bytes: int | None = None  # predicted peak of PyTorch's default partition
    tensors: tuple[TensorRow, ...] = ()  # every planned tensor
    timelines: tuple[Timeline, ...] = ()  # keep everything / PyTorch default / fxopt plan
    joint_graph: Any = field(default=None, repr=False, compare=False)  # before partitioning
    error: str | None = None  # the error that stopped the compile (the report is kept anyway)
    # The step this graph belongs to (NOTE [Step budgets] in fxopt/step.py): its name there
    # and what the graph holds as the step sees it with the partition used and with PyTorch's.
    step_key: str = ""
    plan_use: GraphUse | None = None
    default_use: GraphUse | None = None
    largest_output: SavedTensor | None = None  # the largest tensor the forward returns
    # What the planning found (fxopt.pipeline.Planned); None when it did not get that far.
    planned: Planned | None = field(default=None, repr=False, compare=False)

    # ---- the planning's facts (None when the graph was not planned) ----
    @property
    def baseline_peak_bytes(self) -> int | None:
        """Predicted peak when every tensor the backward needs is kept."""
        return None if self.planned is None else self.planned.baseline_peak_bytes

    @property
    def budget_bytes(self) -> int | None:
        """The budget the plan was held to."""
        return None if self.planned is None else self.planned.budget_bytes

    @property
    def problem(self) -> Problem | None:
        return None if self.planned is None else self.planned.built.problem

    @property
    def coupling(self) -> Coupling | None:
        """What the other graphs of the step hold around this one."""
        return None if self.planned is None else self.planned.share.coupling

    @property
    def step_budget_bytes(self) -> int | None:
        """The budget of the whole step."""
        return None if self.planned is None else self.planned.share.step_budget_bytes

    @property
    def keep_use(self) -> GraphUse | None:
        """What the graph holds as the step sees it with everything kept."""
        return None if self.planned is None else self.planned.keep_use

    @property
    def title(self) -> str:
        return f"fxopt.explain graph {self.index}" if self.source == "explain" else \
            f"fxopt graph {self.index}"

    @property
    def saved_bytes(self) -> int:
        return sum(s.nbytes for s in self.saved)

    @property
    def held_bytes(self) -> int:
        """Device bytes of the saved activations, held from the forward to the backward."""
        return sum(s.nbytes for s in self.saved if not (s.host or s.parameter))

    def program(self, stage: str) -> str:
        """The forward and backward graphs as Python after a stage (`"split"`, `"recompute"`,
        `"lowbit"`, `"offload"`, `"schedule"`): every pass's output can be read."""
        for s in self.stages:
            if s.name == stage and (s.forward_code or s.backward_code):
                return f"# forward after {stage}\n{s.forward_code}\n" \
                       f"# backward after {stage}\n{s.backward_code}"
        kept = [s.name for s in self.stages if s.forward_code or s.backward_code]
        raise KeyError(f"no program kept after stage {stage!r}; kept: {kept}")

    def __repr__(self) -> str:
        return f"<Report {self.summary()}>"

    def summary(self) -> str:
        if self.error:
            return f"{self.title}: error: {self.error}"
        fallback = f" (fallback: {self.fallback_reason})" if self.fallback_reason else ""
        peak = ""
        if self.peak_bytes is not None and self.baseline_peak_bytes is not None:
            peak = (f"; predicted peak {format_bytes(self.peak_bytes)} (keep-everything "
                    f"{format_bytes(self.baseline_peak_bytes)})")
        budget = (format_bytes(self.budget_bytes) if self.budget_bytes is not None else
                  f"{self.options.budget} (not planned)" if self.options.budget is not None
                  else "none")
        if self.coupling is not None and self.coupling.held_before:
            budget += f" (beside {format_bytes(self.coupling.held_before)} held by earlier graphs)"
        return (f"{self.title}: {self.strategy}{fallback}; budget {budget}{peak}; "
                f"{self.joint_ops} joint ops -> {self.forward_ops} fwd + {self.backward_ops} bwd;"
                f" {len(self.saved)} saved tensors ({format_bytes(self.saved_bytes)}); "
                f"compiled in {self.seconds * 1e3:.0f} ms")

    def __str__(self) -> str:
        from fxopt.report.text import render_text

        return render_text(self)

    def _repr_html_(self) -> str:
        from fxopt.report.html import render_html

        return render_html(self)


@dataclass(frozen=True)
class StepReport:
    """What `fxopt.explain` found for one training step: a `Report` per joint graph, in the
    order the forward runs them (a graph break gives several), and the step as a whole.

    `graph_count` counts every graph Dynamo built, including any that needs no backward (those
    have no report). `peak_bytes` estimates the step's peak: each graph's predicted peak on top
    of the saved tensors of the graphs before it, which are still held while it runs (forward
    in order, backward in reverse; `fxopt.step_runs.step_peak`)."""

    graphs: tuple[Report, ...]
    graph_count: int
    seconds: float
    # Measured while training (NOTE [Measuring the step in training]); None: not measured.
    measured_peak_bytes: int | None = None
    unplanned_bytes: int = 0  # measured above the prediction, counted once the step re-planned
    note: str = ""  # why the step was not measured, or where the unplanned memory comes from
    copies: tuple[int, ...] = ()  # runs of each graph in flight at once (NOTE [Step budgets])
    reserved_bytes: int = 0  # memory outside the graphs for the whole step (Options.reserved)
    # the training runs in forward order, as indices into `graphs` (NOTE [The step's runs]);
    # None: each graph's copies in turn
    order: tuple[int, ...] | None = None
    # memory outside the graphs along those runs, from explain's fake step (NOTE [Memory
    # outside the graphs] in fxopt/outside.py)
    outside: Outside | None = None

    def __len__(self) -> int:
        return len(self.graphs)

    def __iter__(self):
        return iter(self.graphs)

    def __getitem__(self, i: int) -> Report:
        return self.graphs[i]

    @property
    def fallbacks(self) -> tuple[Report, ...]:
        """The graphs that got PyTorch's default partition instead of a plan."""
        return tuple(r for r in self.graphs if r.fallback_reason is not None)

    def _step_peak(self, uses: list[GraphUse | None]) -> int | None:
        """The step peak of these partitions, with the measured memory no graph planned once
        that is counted (as one more graph at the end of the step)."""
        if not uses or any(u is None for u in uses):
            return None
        copies = self.copies or (1,) * len(uses)
        runs = [dataclasses.replace(u, copies=c) for u, c in zip(uses, copies)
                if u is not None]
        tail = [GraphUse(0, self.unplanned_bytes, 0, 0)] if self.unplanned_bytes else []
        return step_peak(runs + tail, self.order, self.outside) + self.reserved_bytes

    @property
    def peak_bytes(self) -> int | None:
        """Predicted peak of the step with fxopt's partitions (None if a graph was not planned),
        with the measured memory no graph planned once that is counted."""
        return self._step_peak([r.plan_use for r in self.graphs])

    @property
    def baseline_peak_bytes(self) -> int | None:
        return self._step_peak([r.keep_use for r in self.graphs])

    @property
    def default_peak_bytes(self) -> int | None:
        return self._step_peak([r.default_use for r in self.graphs])

    @property
    def outside_bytes(self) -> int:
        """The most that eager code outside the compiled graphs holds at once in explain's fake
        step, beside what the graphs hold (0: not seen; NOTE [Memory outside the graphs] in
        fxopt/outside.py)."""
        o = self.outside
        return 0 if o is None else max((*o.forward, *o.after, *o.backward, o.before, o.end))

    def summary(self) -> str:
        fb = len(self.fallbacks)
        peak = ("" if self.peak_bytes is None else
                f"; predicted step peak {format_bytes(self.peak_bytes)}")
        base = ("" if self.baseline_peak_bytes is None else
                f" (keep-everything {format_bytes(self.baseline_peak_bytes)})")
        measured = ""
        if self.measured_peak_bytes is not None:
            measured = f"; measured {format_bytes(self.measured_peak_bytes)}"
            if self.unplanned_bytes:
                measured += f", of which {format_bytes(self.unplanned_bytes)} outside the graphs"
        note = f" ({self.note})" if self.note else ""
        flight = [f"{r.step_key} x{c}" for r, c in zip(self.graphs, self.copies) if c > 1]
        if flight:
            note = f"; runs in flight: {', '.join(flight)}{note}"
        if self.reserved_bytes:
            note = f"; {format_bytes(self.reserved_bytes)} reserved outside the graphs{note}"
        if self.outside_bytes:
            note = (f"; eager code outside the graphs holds up to "
                    f"{format_bytes(self.outside_bytes)}{note}")
        source = "fxopt.explain" if any(r.source == "explain" for r in self.graphs) else \
            "fxopt step"
        return (f"{source}: {len(self.graphs)} training graph(s) of {self.graph_count} "
                f"captured, {fb} fallback(s){peak}{base}{measured}{note}; "
                f"{self.seconds:.1f} s")

    def __repr__(self) -> str:
        return f"<StepReport {self.summary()}>"

    def __str__(self) -> str:
        return "\n\n".join([self.summary(), *(str(r) for r in self.graphs)])

    def _repr_html_(self) -> str:
        import html

        parts = [f"<p><b>{html.escape(self.summary())}</b></p>"]
        parts += [r._repr_html_() for r in self.graphs]
        return "\n".join(parts)
