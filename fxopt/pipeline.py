"""Plan one joint graph: view -> cost models -> Problem -> CP-SAT -> passes.

Each stage is timed; `partition.py` decides what to do when a stage fails.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx

from fxopt.compat import tree_leaves
from fxopt.config import Options, cache_root, format_bytes
from fxopt.cost_models.device import get_profile
from fxopt.cost_models.memory import simulate_partition
from fxopt.graph import GraphView, Side
from fxopt.op_memory import channels_last_copy, on_host
from fxopt.passes import AppliedPlan, apply_plan
from fxopt.problem_builder import BuiltProblem, build_problem
from fxopt.report.model import SavedTensor, Stage, TensorRow, Timeline
from fxopt.report.series import KEEP_SERIES, PLAN_SERIES
from fxopt.solver import (
    Candidate,
    Decision,
    InfeasibleBudgetError,
    Kind,
    Plan,
    Problem,
    SearchTimeoutError,
    SolverOptions,
    copy_done_steps,
    keep_all,
    lowest_peak,
    simulate,
    solve,
)
from fxopt.step import TOLERANCE, Agreement, Share, Step
from fxopt.step_runs import Coupling, GraphUse, own_peak
from fxopt.tensor_meta import size_hint


@dataclass(frozen=True)
class Planned:
    """What planning one joint graph found: fxopt's plan applied to the graphs, and what it
    and keeping everything hold. The graph's `Report` holds it as `report.planned`, whichever
    partition is then used, and reads the planning's facts from it."""

    fwd: fx.GraphModule
    bwd: fx.GraphModule
    plan: Plan
    built: BuiltProblem
    baseline_peak_bytes: int  # predicted with every tensor the backward needs kept
    budget_bytes: int  # the budget the plan was held to
    share: Share  # the graph's part of the step's budget
    use: GraphUse  # what the plan holds, as the step sees it
    keep_use: GraphUse  # the same, everything kept
    tensors: tuple[TensorRow, ...]
    timelines: tuple[Timeline, Timeline]  # keep everything, fxopt's plan
    stages: tuple[Stage, ...]
    # Set when the size the user gave cannot be met even with the rest of the step re-planned:
    # the plan is then the lowest one found, and the caller refuses the budget.
    refused: InfeasibleBudgetError | None = None

    @property
    def peak_bytes(self) -> int:
        """Predicted by the memory simulator on the rewritten graphs."""
        return self.timelines[1].peak_bytes


def graph_device(gm: fx.GraphModule) -> torch.device:
    for node in gm.graph.find_nodes(op="placeholder"):
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return val.device
    return torch.device("cpu")


def timeline_of(label: str, fwd: fx.GraphModule, bwd: fx.GraphModule) -> Timeline:
    sim = simulate_partition(GraphView.from_fx(fwd, side=Side.FWD),
                             GraphView.from_fx(bwd, side=Side.BWD))
    num_fwd = sum(1 for s in sim.steps if s.side is Side.FWD)
    return Timeline(label, tuple(s.live_bytes for s in sim.steps), num_fwd)


def _cost_us(cand: Candidate, decision: Decision) -> int:
    """The time the decision's own kernel or copy costs (what the report's table shows)."""
    if decision.kind is Kind.RECOMPUTE:
        return cand.recompute_us
    if decision.kind.lowbit:
        return cand.cast_us
    if decision.kind.offloaded:
        return cand.copy_us
    return 0


def _reason(decision: Decision, info_unsafe: str | None, lowbit_rule: str) -> str:
    kind = decision.kind
    if kind is Kind.KEEP:
        return (f"kept, cannot be recomputed: {info_unsafe}" if info_unsafe else
                "kept until the backward: the budget has room for it, and keeping costs no time")
    if kind is Kind.RECOMPUTE:
        return "freed after the forward, recomputed in the backward just before it is needed"
    if kind.lowbit:
        where = " in host memory" if kind.offloaded else ""
        return f"stored in {decision.fmt}{where} until the backward ({lowbit_rule})"
    return ("copied to host memory after the forward and back before the backward needs it "
            "(the copy overlaps compute where possible)")




# NOTE [Closing the loop on the rewritten graphs]
# The Problem models each tensor's lifetime; the rewritten graphs, simulated the way Inductor
# runs them, can still hold more at some steps (a recomputed chain realises a buffer that is
# no candidate, a dequantised value meets a recomputed one). The simulated peak of the
# rewritten graphs is what is held to the budget. When it overshoots, the gap at each
# schedule step (rewritten minus modelled, kernels matched by name and side) is added to that
# step's fixed part, and the Problem is solved again; gaps only grow, at most three rounds.
# The best plan by simulated peak wins; more than TOLERANCE above an explicit budget, the
# budget is infeasible and the error names that plan's peak as the smallest one found.
def _step_gaps(built: BuiltProblem, plan: Plan, applied: AppliedPlan) -> list[int]:
    problem = built.problem
    model = simulate(problem, plan.decisions).memory
    index = {(name, s < problem.num_fwd_steps): s for s, name in enumerate(built.step_names)}
    sim = simulate_partition(GraphView.from_fx(applied.fwd, side=Side.FWD),
                             GraphView.from_fx(applied.bwd, side=Side.BWD))
    gaps = [0] * problem.num_steps
    since = 0  # the most held by kernels since the last matched one (recomputation, casts)
    for step in sim.steps:
        since = max(since, step.live_bytes)
        s = index.get((step.name, step.side is Side.FWD))
        if s is not None:
            gaps[s] = max(gaps[s], since - model[s])
            since = 0
    return gaps


# NOTE [Saved inputs and the timeline]
# A graph's timeline is above its inputs, so the graph inputs its backward reads (activations
# an earlier graph of the step handed on) are added to what it holds and to its boundary. Not
# to the boundary where the timeline already holds them: an input that a 2-d CPU convolution
# reads is copied channels-last at the forward's start and the backward gets the copy in its
# place (NOTE [Channels-last copies] in fxopt/op_memory.py), which the timeline counts from the
# first kernel to the last `convolution_backward`. Counting it again overstated HF ViT's step
# (its 3 MiB `pixel_values` at batch 256) by 13-14%: 20.10 MiB predicted against 17.63 MiB
# allocated without a budget (the timeline alone: 17.62), 12.19 against 10.75 at budget 0.5
# (the timeline alone: 9.68).
@dataclass(frozen=True)
class SavedInputs:
    """Bytes of the graph inputs (not parameters) that the backward reads: all of them held
    from forward to backward, `untimed_bytes` of them outside the graph's timeline (NOTE
    [Saved inputs and the timeline])."""

    held_bytes: int = 0
    untimed_bytes: int = 0


def coupled_peak(use: GraphUse, coupling: Coupling) -> int:
    """A graph's peak with what the later graphs of the step add (NOTE [Step budgets] in
    fxopt/step.py); the earlier graphs' part is taken off its budget instead."""
    return own_peak(dataclasses.replace(use, copies=coupling.copies), coupling)


def _with_coupling(built: BuiltProblem, coupling: Coupling,
                   saved_inputs: SavedInputs = SavedInputs()) -> BuiltProblem:
    """The Problem with the later graphs' need as fixed memory at its last forward step, their
    gradients on every backward step, its inputs from the run before on every forward step
    (NOTE [The step's runs] in fxopt/step_runs.py), and its own other runs in flight (NOTE
    [Copies in flight]): what they hold of its candidates is the Problem's to decide, the graph
    inputs they keep for their backward (`saved_inputs`) is fixed memory on every step."""
    others = coupling.copies - 1
    if not (coupling.later_need or coupling.grads_after or coupling.inputs or others):
        return built
    problem = built.problem
    fixed = [f + others * saved_inputs.held_bytes
             + (coupling.grads_after if s >= problem.num_fwd_steps else coupling.inputs)
             for s, f in enumerate(problem.fixed_bytes)]
    fixed[problem.num_fwd_steps - 1] += coupling.later_need
    return dataclasses.replace(built, problem=dataclasses.replace(
        problem, fixed_bytes=tuple(fixed), other_copies=others))


CLOSING_ROUNDS = 4  # solves of one Problem, each with the gaps the last one left (NOTE above)


@dataclass(frozen=True)
class _Candidate:
    """One solve's plan, applied, its rewritten graphs' timeline and its peak in the step."""

    plan: Plan
    applied: AppliedPlan
    timeline: Timeline
    peak: int


@dataclass(frozen=True)
class _Solving:
    """What every solve of one graph shares: the graph, its coupled Problem and how to apply."""

    gm: fx.GraphModule
    built: BuiltProblem  # with the step's coupling (`_with_coupling`)
    solver_options: SolverOptions
    num_fwd_outputs: int
    static: list[int] | None
    coupling: Coupling
    agree: Agreement | None = None  # ranks that must plan alike (fxopt.distributed)

    def closing_loop(self, budget: int) -> tuple[_Candidate | None, InfeasibleBudgetError | None]:
        """The best plan by rewritten peak over CLOSING_ROUNDS solves (NOTE above; None when
        the first solve refused the budget), and the refusal that ended the rounds, if any."""
        built, problem = self.built, self.built.problem
        best: _Candidate | None = None
        gaps = [0] * problem.num_steps
        for _ in range(CLOSING_ROUNDS):
            try:
                plan = _solve(problem, budget, self.solver_options, self.agree)
            except InfeasibleBudgetError as err:
                # without its traceback: its frames would hold the compile's inputs (the
                # caller's tensors of the first step) until the garbage collector runs
                return best, err.with_traceback(None)
            applied = apply_plan(self.gm, plan, num_fwd_outputs=self.num_fwd_outputs,
                                 static_lifetime_input_indices=self.static,
                                 step_names=built.step_nodes,
                                 copy_done=copy_done_steps(problem, plan.decisions))
            planned = timeline_of(PLAN_SERIES, applied.fwd, applied.bwd)
            peak = coupled_peak(planned_use(planned, applied.fwd, applied.bwd, self.static),
                                self.coupling)
            if best is None or peak < best.peak:
                best = _Candidate(plan, applied, planned, peak)
            if peak <= budget:
                break
            new = _step_gaps(dataclasses.replace(built, problem=problem), plan, applied)
            if all(n <= 0 for n in new):
                break
            gaps = [g + max(n, 0) for g, n in zip(gaps, new)]
            problem = dataclasses.replace(built.problem, fixed_bytes=tuple(
                f + g for f, g in zip(built.problem.fixed_bytes, gaps)))
        return best, None

    def lowest(self) -> tuple[_Candidate, int]:
        """The lowest plan (NOTE [The lowest plan]), and the bound below which no plan of the
        choices searched peaks in the Problem's model."""
        low = lowest_peak(self.built.problem, self.solver_options)
        peak = low.peak_bytes
        if self.agree is not None:  # the lowest peak a search reached may differ by rank
            peak = self.agree.number(peak)
        best, _ = self.closing_loop(peak)
        assert best is not None  # solve() meets the peak its lowest-peak search found
        return best, low.bound


# NOTE [The lowest plan]
# Where a budget cannot be met, the plan used instead and the smallest peak an error names are
# one and the same: the closing loop at the smallest model peak the solver's lowest-peak search
# finds (which solve() always meets, NOTE [Solve flow]). Every step of it is deterministic, so
# it does not depend on the budget asked for: a size at or above the peak it names gets a plan,
# because the lowest plan is tried before any budget is refused.
class Refusal(InfeasibleBudgetError):
    """A size this graph cannot meet, with the lowest plan (`lowest`) it can."""

    lowest: _Candidate


def _refusal(err: InfeasibleBudgetError | None, budget: int, low: tuple[_Candidate, int],
             baseline_peak: int) -> Refusal:
    """The refusal naming the lowest plan's peak, and the work limit where the solver's own
    refusal said that the work ran out before it could tell."""
    # Only options that beat the Problem's own minimum are worth naming.
    better = {} if err is None else {
        k: v for k, v in err.alternatives.items() if v < err.min_peak_bytes}
    cand, bound = low
    out = Refusal(budget, cand.peak, False, baseline_peak, better,
                  limit=None if err is None else err.limit,
                  restricted=err is not None and err.restricted, min_peak_bound=bound)
    out.lowest = cand
    return out


def _solve_and_apply(solving: _Solving, budget: int, *, strict: bool, baseline_peak: int
                     ) -> _Candidate:
    """The best plan for `budget`. Where the solver refuses the budget, or (`strict`: the user
    set it) the best plan is more than `TOLERANCE` above it, the lowest plan (NOTE [The lowest
    plan]) is tried; if that misses it too, a Refusal (an InfeasibleBudgetError) carries it.
    Without `strict` the best plan found is used, with a warning where it is above the budget.
    `baseline_peak`: the keep-everything peak the error reports."""
    best, err = solving.closing_loop(budget)
    if best is None or (strict and best.peak > budget * (1 + TOLERANCE)):
        low = solving.lowest()
        if low[0].peak <= budget * (1 + TOLERANCE):
            best = low[0] if best is None or low[0].peak < best.peak else best
        elif strict or best is None:
            raise _refusal(err, budget, low, baseline_peak)
    assert best is not None
    if best.peak > budget:
        best = dataclasses.replace(best, plan=best.plan.with_(warnings=best.plan.warnings + (
            f"the rewritten graphs simulate to {best.peak} B, above the budget of "
            f"{budget} B; no plan was found whose rewritten graphs fit",)))
    return best


def _solve(problem: Problem, budget: int, solver_options: SolverOptions,
           agree: Agreement | None) -> Plan:
    """One search; where ranks must plan alike, its outcome is the one they agree on."""
    try:
        found: Plan | Exception = solve(problem, budget, solver_options,
                                        cache_dir=cache_root() / "plans")
    except (InfeasibleBudgetError, SearchTimeoutError) as err:
        if agree is None:
            raise
        found = err
    if agree is None:
        assert isinstance(found, Plan)
        return found
    return agree.plan(problem, found)


# NOTE [Best-effort budgets]
# Only a budget the user gave as a size is a promise: it is held or the compile fails. A
# fraction is best effort: it is resolved against the step's keep-everything peak and capped,
# for each graph, at PyTorch's default partition (so fxopt never plans to hold more than plain
# torch.compile, which also honours the model's own checkpoint regions); where that is below
# the smallest peak fxopt reaches, the smallest reachable plan is used and the plan carries a
# warning. No budget at all is the default partition's peak, best effort too. How the step's
# budget is shared among its graphs: NOTE [Step budgets] in fxopt/step.py.
ShareFn = Callable[[GraphUse, "GraphUse | None"], Share]


def _timeline_use(timeline: Timeline, held: int, grads: int) -> GraphUse:
    live, f = timeline.live_bytes, timeline.num_fwd_steps
    return GraphUse(held, max(live[:f], default=0), max(live[f:], default=0),
                    live[f - 1] if f else 0, grads)


def keep_use(built: BuiltProblem, memory: tuple[int, ...] | list[int], grads: int,
             saved_inputs: SavedInputs) -> GraphUse:
    """What the graph holds when it keeps everything (its keep-all simulation given)."""
    problem = built.problem
    held = sum(c.bytes for c, d in zip(problem.candidates, keep_all(problem))
               if d.kind is Kind.KEEP and c.bwd_uses)
    use = _timeline_use(Timeline("", tuple(memory), problem.num_fwd_steps), held, grads)
    return dataclasses.replace(use, held_bytes=held + saved_inputs.held_bytes,
                               boundary_bytes=use.boundary_bytes + saved_inputs.untimed_bytes)


def saved_inputs_of(fwd: fx.GraphModule, bwd: fx.GraphModule, static: list[int] | None
                    ) -> SavedInputs:
    """The graph inputs `bwd` reads (NOTE [Saved inputs and the timeline])."""
    copied = {n.name for n in fwd.graph.find_nodes(op="placeholder") if channels_last_copy(n)}
    saved = [s for s in saved_tensors(bwd, static)
             if s.name.startswith("primals") and not (s.host or s.parameter)]
    return SavedInputs(sum(s.nbytes for s in saved),
                       sum(s.nbytes for s in saved if s.name not in copied))


def gradient_bytes(gm: fx.GraphModule, num_fwd_outputs: int, static: list[int] | None = None
                   ) -> int:
    """Bytes of the gradients a joint (or backward) graph returns that stay alive to the end of
    the step: its outputs after the forward's (for a backward graph, `num_fwd_outputs` is 0),
    one per primal. With the static-lifetime primals known, only theirs (the parameters'
    gradients): an input's gradient is the tangent of the graph before, which holds it in its
    own backward (NOTE [Gradients the caller hands in] in fxopt/cost_models/memory.py) and is
    done with it there."""
    out = next(iter(gm.graph.find_nodes(op="output")))
    total = 0
    statics = None if static is None else set(static)
    for i, arg in enumerate(tree_leaves(out.args[0])[num_fwd_outputs:]):
        if statics is not None and i not in statics:
            continue
        val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
        if isinstance(val, torch.Tensor):
            total += math.prod(size_hint(d) for d in val.shape) * val.element_size()
    return total


def saved_tensors(bwd: fx.GraphModule, static: list[int] | None = None
                  ) -> tuple[SavedTensor, ...]:
    """The tensors the forward saves for `bwd` (its placeholders other than tangents).
    `static`: the joint graph's static-lifetime primal positions (parameters and buffers)."""
    statics = set(static or ())
    saved = []
    for node in bwd.graph.find_nodes(op="placeholder"):
        val = node.meta.get("val")
        if node.name.startswith("tangents") or not isinstance(val, torch.Tensor):
            continue
        shape = tuple(str(d) for d in val.shape)
        numel = 1
        for d in val.shape:
            numel *= size_hint(d)
        primal = re.fullmatch(r"primals_(\d+)", node.name)
        saved.append(SavedTensor(node.name, shape, str(val.dtype).removeprefix("torch."),
                                 numel * val.element_size(), host=on_host(node),
                                 parameter=primal is not None and int(primal[1]) - 1 in statics))
    return tuple(saved)


def planned_use(timeline: Timeline, fwd: fx.GraphModule, bwd: fx.GraphModule,
                static: list[int] | None) -> GraphUse:
    """What a partition holds as the step sees it: its saved activations on the device
    (parameters are there before and after the step), its peaks, its boundary and the
    gradients its backward returns. The boundary also counts the saved graph inputs that its
    timeline does not (NOTE [Saved inputs and the timeline]), so that it is never below what
    the graph holds."""
    held = sum(s.nbytes for s in saved_tensors(bwd, static) if not (s.host or s.parameter))
    use = _timeline_use(timeline, held, gradient_bytes(bwd, 0, static))
    return dataclasses.replace(use, boundary_bytes=use.boundary_bytes
                               + saved_inputs_of(fwd, bwd, static).untimed_bytes)


def _step_error(err: InfeasibleBudgetError, share: Share) -> InfeasibleBudgetError:
    """The error for the whole step: what the other graphs hold is added back."""
    c = share.coupling
    if share.step_budget_bytes is None or not (c.held_before or c.later_need or c.grads_after
                                                or c.inputs):
        return err
    around = []
    if c.held_before:
        around.append(f"beside {format_bytes(c.held_before)} that the graphs before it hold")
    if c.inputs:
        around.append(f"with its {format_bytes(c.inputs)} of inputs from the graph before it "
                      "alive during its forward")
    if c.later_need:
        around.append(f"with {format_bytes(c.later_need)} more that the graphs after it need "
                      "while it holds its saved tensors")
    if c.grads_after:
        around.append(f"with the {format_bytes(c.grads_after)} of gradients the graphs after "
                      "it return alive during its backward")
    return err.shifted(c.held_before, share.step_budget_bytes,
                       "for the training step: one of its graphs must fit " + " and ".join(around))


def plan_joint(gm: fx.GraphModule, options: Options, *, num_fwd_outputs: int,
               static_lifetime_input_indices: list[int] | None,
               default_use: GraphUse | None, device_type: str | None = None,
               share: ShareFn | None = None, saved_inputs: SavedInputs = SavedInputs(),
               agree: Agreement | None = None) -> Planned:
    """Plans `gm` under `options`; `default_use` (PyTorch's partition, predicted) is the
    budget when the options give none. `device_type` plans the graph as if it ran there
    (`fxopt.explain` with a GPU profile on a machine without CUDA); default: where it runs.
    `share` gives the graph's part of the step's budget from its keep-everything use (default:
    the graph is the whole step). `saved_inputs`: the graph inputs the backward reads (from
    PyTorch's partition), held by any partition."""
    stages: list[Stage] = []
    t0 = time.perf_counter()
    joint = GraphView.from_fx(gm, num_fwd_outputs=num_fwd_outputs,
                              static_lifetime_input_indices=static_lifetime_input_indices)
    device = torch.device(device_type) if device_type else graph_device(gm)
    offload = bool(options.offload)  # opt-in: NOTE [Offload is opt-in]
    profile = get_profile(options.device.value)
    built = build_problem(joint, profile, host_is_device=device.type == "cpu")
    baseline = simulate(built.problem, keep_all(built.problem))
    stages.append(Stage("cost models", time.perf_counter() - t0))

    t0 = time.perf_counter()
    share_fn = share or (lambda use, default: Step(options).share("graph", use, default))
    keep = keep_use(built, baseline.memory,
                    gradient_bytes(gm, num_fwd_outputs, static_lifetime_input_indices),
                    saved_inputs)
    mine = share_fn(keep, default_use)
    budget, strict = mine.budget_bytes, mine.strict
    solver_options = SolverOptions(work_limit=options.work_limit,
                                   time_limit_s=options.time_limit_s, allow_offload=offload,
                                   allow_lowbit=options.lowbit,
                                   offload_available=device.type == "cuda")
    solving = _Solving(gm, _with_coupling(built, mine.coupling, saved_inputs), solver_options,
                       num_fwd_outputs, static_lifetime_input_indices, mine.coupling, agree)
    refused: InfeasibleBudgetError | None = None
    try:
        if budget <= 0:  # the other graphs of the step leave this one nothing
            raise _refusal(None, budget, solving.lowest(), baseline.peak_bytes)
        cand = _solve_and_apply(solving, budget, strict=strict, baseline_peak=baseline.peak_bytes)
    except Refusal as err:
        # NOTE [Best-effort budgets]: a fraction (or no budget) never stops a run. An absolute
        # budget that other graphs of the step can still make room for is met from the next
        # step on (NOTE [Step budgets]); one that nothing can make room for is refused by the
        # caller, which knows the step, with the lowest plan as the evidence (NOTE [The lowest
        # plan]): the peak the error names is the peak of the plan used.
        if strict and not mine.room_elsewhere:
            refused = _step_error(err, mine)
        asked, cand = budget, err.lowest
        budget = cand.plan.budget_bytes
        what = f"budget {options.budget}" if options.budget is not None else \
            "PyTorch's default partition"
        if mine.coupling.held_before and options.budget is not None:
            what = (f"{what}, less the {format_bytes(mine.coupling.held_before)} that the "
                    "earlier graphs of the step hold,")
        then = (" (a size as budget makes this an error)" if not strict else "" if refused else
                "; the other graphs are re-planned to make room from the next step on")
        cand = dataclasses.replace(cand, plan=cand.plan.with_(warnings=cand.plan.warnings + (
            f"{what} leaves this graph {format_bytes(max(asked, 0))}, below the smallest peak "
            f"fxopt reaches for it; planned for that, {format_bytes(cand.peak)}{then}",)))
    plan, applied, planned = cand.plan, cand.applied, cand.timeline
    stages.append(Stage("solve, passes and check", time.perf_counter() - t0))
    stages += [Stage(name, applied.seconds.get(name, 0.0), fwd_code, bwd_code)
               for name, fwd_code, bwd_code in applied.programs]
    keep_line = Timeline(KEEP_SERIES, baseline.memory, built.problem.num_fwd_steps)
    tensors = tuple(
        TensorRow(info.name, info.shape, info.dtype, cand.bytes, d.kind, _cost_us(cand, d),
                  _reason(d, info.not_recomputable, info.lowbit_rule), info.source, d.fmt)
        for cand, info, d in zip(built.problem.candidates, built.info, plan.decisions))
    use = planned_use(planned, applied.fwd, applied.bwd, static_lifetime_input_indices)
    return Planned(applied.fwd, applied.bwd, plan, built, baseline.peak_bytes, budget, mine, use,
                   keep, tensors, (keep_line, planned), tuple(stages), refused)
