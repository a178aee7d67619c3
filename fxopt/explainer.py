"""`fxopt.explain`: plan a model's training step without running it."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch.fx as fx
import torch.nn as nn

from fxopt.capture import LossFn, capture_step, fake_device
from fxopt.config import DeviceProfile, Options
from fxopt.hook import graph_key
from fxopt.partition import partition_joint
from fxopt.report.dump import dump_report
from fxopt.report.model import Report, StepReport
from fxopt.step import MAX_REPLANS, Step

_GPU_PROFILES = (DeviceProfile.H100, DeviceProfile.H200, DeviceProfile.A100)


def explain(model: nn.Module, *example_inputs: Any, loss_fn: LossFn | None = None,
            targets: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
            **options: Any) -> StepReport:
    """Captures `loss_fn(torch.compile(model)(*example_inputs, **kwargs), *targets)` and its
    backward through Dynamo on fake tensors, exactly as `torch.compile` builds the graphs
    (graph breaks included), plans every joint graph under `options` (the fields of
    `fxopt.Options`) and returns a `StepReport`: one `Report` per graph and the step as a whole.

    No kernel of the model runs and the model is left as it was, so a model built on the `meta`
    device works. With a GPU cost profile (`device="h100"`, ...) the step is planned as it would
    run on CUDA on any machine (offload too, with `offload=True`). Without `loss_fn`, the
    output's `.loss` (Hugging Face models given labels), a scalar output, or the sum of a tensor
    output is the loss. Reports are numbered in the order the graphs were captured.
    """
    opts = Options(**options)
    step = Step(opts, defer_errors=True)
    found: dict[str, Report] = {}  # by graph key, in capture order
    joints: dict[str, tuple[fx.GraphModule, Any, dict[str, Any]]] = {}

    def plan(key: str) -> tuple[fx.GraphModule, fx.GraphModule]:
        gm, joint_inputs, kw = joints[key]
        fwd, bwd, report = partition_joint(gm, joint_inputs, opts, device_type=plan_on,
                                           step=step, key=key, **kw)
        found[key] = dataclasses.replace(report, source="explain")
        return fwd, bwd

    def partition(gm: fx.GraphModule, joint_inputs: Any, *, key: str, **kw: Any
                  ) -> tuple[fx.GraphModule, fx.GraphModule]:
        joints[key] = (gm, joint_inputs, kw)
        return plan(key)

    gpu = opts.device in _GPU_PROFILES
    device = fake_device(model, gpu)
    plan_on = "cuda" if gpu else None
    t0 = time.perf_counter()
    captured = capture_step(model, example_inputs, dict(kwargs or {}), loss_fn,
                            tuple(targets), partition, device=device, key_of=graph_key,
                            cpu_kernels=plan_on is None)
    count = captured.graphs
    # Blocks that share one compiled graph run it several times before its backward: each
    # run holds its saved tensors (NOTE [Counting runs] in fxopt/runs.py), as the backend
    # finds in the first step and re-plans for. The one step traced here runs a single
    # microbatch: runs declared in flight (`in_flight`, a pipeline's) are not lowered.
    for key, most in captured.in_flight.items():
        if most > step.copies(key) and key in joints:
            step.saw_copies(key, most)
    if captured.order is not None:  # NOTE [The step's runs] in fxopt/step_runs.py
        step.saw_order(captured.order)
    if captured.outside is not None:  # NOTE [Memory outside the graphs] in fxopt/outside.py
        step.saw_outside(captured.outside)
    # NOTE [Step budgets]: graphs that a later one left too little room are planned again,
    # as the backend recompiles them at their next call.
    for _ in range(MAX_REPLANS):
        for key in step.stale_keys():
            plan(key)
    # a size no plan meets: refused by a graph with no other left to make room, or by the
    # step once its plans have settled above it
    if (refused := step.infeasible_error() or step.over_budget_error()) is not None:
        raise refused
    reports = tuple(dataclasses.replace(r, index=i) for i, r in enumerate(found.values()))
    result = StepReport(reports, count, time.perf_counter() - t0,
                        copies=tuple(step.copies(k) for k in found),
                        order=step.run_order(list(found)),
                        outside=step.outside(list(found)),
                        reserved_bytes=opts.reserved)
    if not result.graphs:
        raise RuntimeError(f"Dynamo built {count} graph(s) for this step but none needs a "
                           "backward pass: check that the loss depends on the model's parameters")
    if opts.dump_dir:
        for report in result.graphs:
            dump_report(report, opts.dump_dir)
    return result
