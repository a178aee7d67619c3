"""Planning one rank of a distributed job without running it: `fxopt.explain` with the rank's
budget split and runs in flight, on real, fake or meta-device modules (no process group)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch.nn as nn

from fxopt.config import parse_budget
from fxopt.distributed.layout import Pipeline
from fxopt.distributed.split import split_rank_budget


def explain_rank(model: nn.Module, *example_inputs: Any, budget: Any, blocks: int = 1,
                 optimizer: Any = None, optimizer_bytes: int | None = None,
                 pipeline: Pipeline | None = None, **explain_args: Any) -> Any:
    """The plans of this rank's part of the model (a pipeline stage's module, an FSDP
    block) as `fxopt.distributed.backend` would make them, through `fxopt.explain`:
    `explain_rank(stage, x, budget="80GB", pipeline=Pipeline("1F1B", 0, 8, 16),
    optimizer_bytes=..., device="h100")` plans stage 0 of 8 for an H100 on the meta device.
    Returns the `StepReport`, whose note says how the budget was split."""
    from fxopt.explainer import explain

    parsed = parse_budget(budget)
    in_flight = blocks * (pipeline.in_flight if pipeline is not None else 1)
    if parsed is None or parsed.nbytes is None:
        return explain(model, *example_inputs, budget=parsed, in_flight=in_flight,
                       **explain_args)
    split = split_rank_budget(model, parsed, blocks=blocks, optimizer=optimizer,
                              optimizer_bytes_=optimizer_bytes, pipeline=pipeline)
    report = explain(model, *example_inputs, budget=split.budget_bytes,
                     resident=split.resident, reserved=split.reserved, in_flight=in_flight,
                     **explain_args)
    note = f"{split}; {report.note}" if report.note else str(split)
    return dataclasses.replace(report, note=note)
