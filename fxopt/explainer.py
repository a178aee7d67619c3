"""`fxopt.explain`: plan a model's training step without running it."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch.fx as fx
import torch.nn as nn

from fxopt.capture import LossFn, capture_step, fake_device
from fxopt.config import DeviceProfile, Options
from fxopt.dump import dump_report
from fxopt.partition import partition_joint
from fxopt.report import Report, StepReport

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
    run on CUDA, offload included, on any machine. Without `loss_fn`, the output's `.loss`
    (Hugging Face models given labels), a scalar output, or the sum of a tensor output is the
    loss. Reports are numbered in the order the graphs were captured.
    """
    opts = Options(**options)
    found: list[Report] = []

    def partition(gm: fx.GraphModule, joint_inputs: Any, **kw: Any
                  ) -> tuple[fx.GraphModule, fx.GraphModule]:
        fwd, bwd, report = partition_joint(gm, joint_inputs, opts, device_type=plan_on, **kw)
        found.append(dataclasses.replace(report, index=len(found), source="explain"))
        return fwd, bwd

    gpu = opts.device in _GPU_PROFILES
    device = fake_device(model, gpu)
    plan_on = "cuda" if gpu else None
    t0 = time.perf_counter()
    count = capture_step(model, example_inputs, dict(kwargs or {}), loss_fn, tuple(targets),
                         partition, device=device)
    step = StepReport(tuple(found), count, time.perf_counter() - t0)
    if not step.graphs:
        raise RuntimeError(f"Dynamo built {count} graph(s) for this step but none needs a "
                           "backward pass: check that the loss depends on the model's parameters")
    if opts.dump_dir:
        for report in step.graphs:
            dump_report(report, opts.dump_dir)
    return step
