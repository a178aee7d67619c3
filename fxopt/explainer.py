"""`fxopt.explain`: plan a model's training step without running it."""

from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.nn as nn

from fxopt.config import Options
from fxopt.dump import dump_report
from fxopt.partition import partition_joint
from fxopt.report import Report
from fxopt.trace import LossFn, trace_training_step


def explain(model: nn.Module, *example_inputs: Any, loss_fn: LossFn | None = None,
            targets: tuple[Any, ...] = (), **options: Any) -> Report:
    """Traces `loss_fn(model(*example_inputs), *targets)` and its backward with fake tensors,
    plans it under `options` (the fields of `fxopt.Options`) and returns the report.

    The model's kernels never run, so a model built on the `meta` device works. Without
    `loss_fn`, a scalar output is the loss and any other tensor output is summed.
    """
    opts = Options(**options)
    found: list[Report] = []

    def partition(gm: fx.GraphModule, joint_inputs: Any, **kwargs: Any
                  ) -> tuple[fx.GraphModule, fx.GraphModule]:
        fwd, bwd, report = partition_joint(gm, joint_inputs, opts, **kwargs)
        found.append(report)
        return fwd, bwd

    trace_training_step(model, example_inputs, loss_fn, partition, targets=tuple(targets))
    if len(found) != 1:
        raise RuntimeError(f"expected one joint graph from the traced step, got {len(found)}")
    if opts.dump_dir:
        dump_report(found[0], opts.dump_dir)
    return found[0]
