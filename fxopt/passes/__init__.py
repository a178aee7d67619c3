"""Apply a `Plan` to the joint graph: the passes run in the fixed order of `PASSES`.

A pass applies decisions and decides nothing. Anything it cannot apply safely raises
`PlanApplyError`, and the caller falls back to PyTorch's partition for that graph.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch.fx as fx

from fxopt.passes.lowbit import apply_lowbit
from fxopt.passes.meta import PlanApplyError
from fxopt.passes.offload import apply_offload
from fxopt.passes.recompute import place_recomputation
from fxopt.passes.schedule import keep_matmuls_in_place
from fxopt.passes.split import split_joint, unsafe_to_recompute
from fxopt.plan import Inserted, Kind, Plan, inserted_by

__all__ = ["PASSES", "AppliedPlan", "apply_plan", "Inserted", "PlanApplyError", "inserted_by",
           "unsafe_to_recompute"]

PASSES = ("split", "recompute", "lowbit", "offload", "schedule")


@dataclass(frozen=True)
class AppliedPlan:
    """The forward and backward graphs for Inductor, and how long each pass took."""

    fwd: fx.GraphModule
    bwd: fx.GraphModule
    recomputed: tuple[str, ...]  # forward nodes the backward graph runs again
    seconds: dict[str, float]
    # (pass, forward code, backward code) after each pass, in PASSES order: every stage's
    # program can be read (report.program("recompute"))
    programs: tuple[tuple[str, str, str], ...] = ()


def _step_name(step_names: Sequence[str], step: int | None) -> str | None:
    return step_names[step] if step is not None and step < len(step_names) else None


def _code(gm: fx.GraphModule) -> str:
    return gm.graph.python_code("self").src


def apply_plan(joint: fx.GraphModule, plan: Plan, *, num_fwd_outputs: int,
               static_lifetime_input_indices: list[int] | None = None,
               step_names: Sequence[str] = (), copy_done: Mapping[str, int] | None = None
               ) -> AppliedPlan:
    """`step_names[s]` names the joint-graph node before which an action planned for schedule
    step s runs (`BuiltProblem.step_nodes`): a recomputation or a prefetch restored at s is
    inserted there; without it, before first use. `copy_done[name]`: the step by which the
    model has offloaded tensor `name` copied out (its copy is joined there); without it, at the
    end of the forward."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    saved = [d.name for d in plan.decisions if d.kind is not Kind.RECOMPUTE]
    fwd, bwd, recomputed = split_joint(joint, saved, num_fwd_outputs=num_fwd_outputs,
                                       static_lifetime_input_indices=static_lifetime_input_indices)
    seconds["split"] = time.perf_counter() - t0
    programs = [("split", _code(fwd), _code(bwd))]
    t0 = time.perf_counter()
    restore = {d.name: at for d in plan.decisions if d.kind is Kind.RECOMPUTE
               and (at := _step_name(step_names, d.restore_step)) is not None}
    bwd = place_recomputation(bwd, recomputed, restore)
    seconds["recompute"] = time.perf_counter() - t0
    programs.append(("recompute", _code(fwd), _code(bwd)))
    t0 = time.perf_counter()
    stand_ins: dict[str, tuple[str, ...]] = {}
    for d in plan.decisions:
        if d.kind.lowbit:
            assert d.fmt is not None
            stand_ins[d.name] = apply_lowbit(fwd, bwd, d.name, d.fmt, num_fwd_outputs)
    seconds["lowbit"] = time.perf_counter() - t0
    programs.append(("lowbit", _code(fwd), _code(bwd)))
    t0 = time.perf_counter()
    done = copy_done or {}
    for d in plan.decisions:
        if d.kind.offloaded:
            at = _step_name(step_names, d.restore_step)
            join = _step_name(step_names, done.get(d.name))
            # a low-bit payload moves with its scales (NOTE [Offload invariants])
            for name in stand_ins.get(d.name, (d.name,)):
                apply_offload(fwd, bwd, name, num_fwd_outputs, at, join)
    seconds["offload"] = time.perf_counter() - t0
    programs.append(("offload", _code(fwd), _code(bwd)))
    t0 = time.perf_counter()
    for gm in (fwd, bwd):
        keep_matmuls_in_place(gm)
    seconds["schedule"] = time.perf_counter() - t0
    for gm in (fwd, bwd):
        gm.graph.lint()
        gm.recompile()
    programs.append(("schedule", fwd.code, bwd.code))
    return AppliedPlan(fwd, bwd, recomputed, seconds, tuple(programs))

