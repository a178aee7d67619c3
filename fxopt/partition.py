"""One compile's owner: partition one joint graph under the options and the step's budget,
PyTorch's partition beside it, and the `Report` of what was done (`partition_joint`).

The hook Inductor calls (`fxopt.hook.FxoptPartitioner`) and `fxopt.explain` both come here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import torch
import torch.fx as fx

from fxopt.compat import min_cut_partition, tree_leaves
from fxopt.config import Options, OptionsError, format_bytes
from fxopt.pipeline import (
    plan_joint,
    planned_use,
    saved_inputs_of,
    saved_tensors,
    timeline_of,
)
from fxopt.plan import Status
from fxopt.report.model import Report, SavedTensor, Stage
from fxopt.report.series import DEFAULT_SERIES
from fxopt.solver import InfeasibleBudgetError, SearchTimeoutError
from fxopt.step import Step
from fxopt.step_runs import Coupling, GraphUse, own_peak
from fxopt.tensor_meta import size_hint

log = logging.getLogger("fxopt")

def copy_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy with the same node names (PyTorch's partitioner rewrites the graph it is given)."""
    graph = fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    return fx.GraphModule(gm, graph)


# NOTE [Fallback]
# Planning errors the user must act on (an unreachable budget, bad options, a search stopped
# by the wall-clock safety net, whose plan could differ between ranks) propagate. Anything
# else that stops a plan from being built or applied safely gives PyTorch's own partition for
# that graph, with a warning that carries the cause: training goes on, gradients stay right.
def partition_joint(gm: fx.GraphModule, joint_inputs: Any, options: Options, *,
                    device_type: str | None = None, step: Step | None = None,
                    key: str = "graph", **kwargs: Any
                    ) -> tuple[fx.GraphModule, fx.GraphModule, Report]:
    """Partitions one joint graph under `options`; returns both halves and the report.
    `device_type`: plan as if the graph ran on that device (see `plan_joint`). `step`, `key`:
    the step this graph belongs to and its name there (default: the graph is the whole step).
    Errors the user must act on propagate with the graph's report as their `report`."""
    start = time.perf_counter()
    step = step if step is not None else Step(options)
    num_fwd_outputs = kwargs["num_fwd_outputs"]
    static = step.static_inputs(key, kwargs.get("static_lifetime_input_indices"))
    if static is not None:
        kwargs["static_lifetime_input_indices"] = static
    t0 = time.perf_counter()
    default_fwd, default_bwd = min_cut_partition(
        copy_graph(gm), joint_inputs, **kwargs)
    stages = [Stage("PyTorch partition", time.perf_counter() - t0)]
    default_timeline = None
    default_use: GraphUse | None = None  # PyTorch's partition as the step sees it

    def report(fwd: fx.GraphModule, bwd: fx.GraphModule, strategy: str, **fields: Any
               ) -> Report:
        """The one place a Report is built: what every outcome shares and the outcome's own
        `fields` (with `planned`, what the planning found, when it got that far)."""
        common: dict[str, Any] = dict(
            options=options, strategy=strategy, plan=None, fallback_reason=None,
            peak_bytes=None, solve_seconds=0.0,
            joint_ops=_count_ops(gm), forward_ops=_count_ops(fwd), backward_ops=_count_ops(bwd),
            saved=saved_tensors(bwd, static), seconds=time.perf_counter() - start,
            stages=tuple(stages), forward_graph=fwd, backward_graph=bwd, joint_graph=gm,
            default_peak_bytes=default_timeline.peak_bytes if default_timeline else None,
            timelines=(default_timeline,) if default_timeline else (), step_key=key,
            default_use=default_use, largest_output=_largest_output(fwd, num_fwd_outputs))
        return Report(**{**common, **fields})

    try:
        default_timeline = timeline_of(DEFAULT_SERIES, default_fwd, default_bwd)
        default_use = planned_use(default_timeline, default_fwd, default_bwd, static)
        planned = plan_joint(gm, options, num_fwd_outputs=num_fwd_outputs,
                             static_lifetime_input_indices=static,
                             default_use=default_use,
                             device_type=device_type,
                             share=lambda use, default: step.share(key, use, default),
                             saved_inputs=saved_inputs_of(default_fwd, default_bwd, static),
                             agree=step.agreement)
    except (InfeasibleBudgetError, SearchTimeoutError, OptionsError) as err:
        err.report = report(default_fwd, default_bwd, "error",
                            fallback_reason=f"{type(err).__name__}: {err}",
                            error=f"{type(err).__name__}: {err}")
        raise
    except Exception as err:  # noqa: BLE001 - see NOTE [Fallback]; the cause is logged in full
        log.warning("fxopt: could not plan this graph (%s: %s); using PyTorch's default partition "
                    "for it", type(err).__name__, err, exc_info=True)
        if default_use is not None:
            step.record(key, default_use, None)
        return default_fwd, default_bwd, report(
            default_fwd, default_bwd, "PyTorch default",
            fallback_reason=f"{type(err).__name__}: {err}")
    # both with the runs in flight the step holds (NOTE [Copies in flight])
    copies = step.copies(key)
    default_runs = dataclasses.replace(default_use, copies=copies)
    plan_runs = dataclasses.replace(planned.use, copies=copies)
    coupling = planned.share.coupling
    if _default_is_lower(plan_runs, default_runs, coupling, planned.share.budget_bytes):
        # NOTE [Never above PyTorch's default]: where fxopt's lowest plan stays above the budget
        # (no budget: PyTorch's own partition's peak) and PyTorch's partition peaks lower, that
        # partition is the better plan and is used, as a choice, not a fallback.
        step.record(key, default_runs, coupling)
        log.info("fxopt: PyTorch's partition peaks at %s, below fxopt's lowest plan (%s); "
                 "using it for %s", format_bytes(own_peak(default_runs, coupling)),
                 format_bytes(own_peak(plan_runs, coupling)), key)
        return default_fwd, default_bwd, report(
            default_fwd, default_bwd, "PyTorch default", planned=planned,
            peak_bytes=default_timeline.peak_bytes, status=Status.DEFAULT_LOWER,
            plan_use=default_runs, timelines=(planned.timelines[0], default_timeline))
    plan = planned.plan
    if plan.warnings:  # said once per step (the reports of the other graphs keep theirs)
        level = logging.WARNING if step.first_warning() else logging.INFO
        for warning in plan.warnings:
            log.log(level, "fxopt: %s (%s)", warning, key)
    restale = step.record(key, planned.use, planned.share.coupling)
    refused = None if planned.refused is None else step.refuse(key, planned.refused)
    if restale:
        log.log(logging.WARNING if planned.share.strict else logging.INFO,
                "fxopt: with %s planned, %s no longer fit the step's budget of %s; re-planning "
                "them at their next call", key, ", ".join(restale),
                format_bytes(planned.share.step_budget_bytes or 0))
    result = report(
        planned.fwd, planned.bwd, "fxopt plan", planned=planned, plan=plan,
        peak_bytes=planned.peak_bytes, solve_seconds=plan.solve_seconds,
        stages=tuple(stages) + planned.stages, status=plan.status,
        extra_time_us=plan.extra_time_us, tensors=planned.tensors,
        timelines=(planned.timelines[0], default_timeline, planned.timelines[1]),
        plan_use=planned.use)
    if refused is not None and not step.defer_errors:
        refused.problem = planned.built.problem
        refused.report = dataclasses.replace(
            result, error=f"{type(refused).__name__}: {refused}")
        raise refused
    return planned.fwd, planned.bwd, result


def _default_is_lower(fxopt_use: GraphUse, default_use: GraphUse, coupling: Coupling,
                      budget: int) -> bool:
    """Whether PyTorch's partition is the better plan: fxopt's misses its budget and PyTorch's
    peaks lower (NOTE [Never above PyTorch's default])."""
    mine, theirs = own_peak(fxopt_use, coupling), own_peak(default_use, coupling)
    return mine > budget and theirs < mine


def _largest_output(fwd: fx.GraphModule, num_user_outputs: int) -> SavedTensor | None:
    """The largest of the tensors the forward returns to the user's code."""
    out = next(iter(fwd.graph.find_nodes(op="output")))
    best = None
    for arg in tree_leaves(out.args[0])[:num_user_outputs]:
        val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
        if not isinstance(val, torch.Tensor):
            continue
        nbytes = math.prod(size_hint(d) for d in val.shape) * val.element_size()
        if best is None or nbytes > best.nbytes:
            best = SavedTensor(arg.name, tuple(str(d) for d in val.shape),
                               str(val.dtype).removeprefix("torch."), nbytes)
    return best


def _count_ops(gm: fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function")
