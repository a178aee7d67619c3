"""The backend for one rank of a distributed job."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch.distributed as dist
import torch.nn as nn

from fxopt.compiler import FxoptBackend
from fxopt.config import Options, parse_budget
from fxopt.distributed.agree import PlanAgreement
from fxopt.distributed.layout import Pipeline
from fxopt.distributed.split import RankSplit, split_rank_budget


class RankBackend(FxoptBackend):
    """`fxopt.backend` for one rank: its graphs share the rank's budget (NOTE [Rank budgets])
    and settle their plans with the other ranks of `agreement`'s group (NOTE [One plan on
    every rank])."""

    def __init__(self, options: Options, split: RankSplit | None,
                 agreement: PlanAgreement | None) -> None:
        super().__init__(options)
        self.split = split
        self.agreement = agreement
        self.step.agreement = agreement

    def __repr__(self) -> str:
        return f"fxopt.distributed.backend({self.split or self.options})"

    def plan_hash(self) -> str:
        """One hash of every plan this rank's graphs run, in step order ('' before any)."""
        plans = [r.plan.content_hash if r.plan is not None else "default"
                 for r in self.step.ordered_reports()]
        if not plans:
            return ""
        return hashlib.sha256("|".join(plans).encode()).hexdigest()[:16]

    def step_report(self) -> Any:
        report = super().step_report()
        if self.split is None:
            return report
        note = f"{self.split}; {report.note}" if report.note else str(self.split)
        return dataclasses.replace(report, note=note)


def backend(model: nn.Module, budget: Any = None, *, blocks: int = 1, optimizer: Any = None,
            optimizer_bytes: int | None = None, pipeline: Pipeline | None = None,
            group: Any = "world", **options: Any) -> RankBackend:
    """A backend for the compiled parts of `model` on this rank:
    `block.compile(backend=be)` for each of its blocks (FSDP2's per-block layout), or
    `stage_module.compile(backend=be)` for a pipeline stage.

    budget: a size (bytes or '2GiB') is the device memory this rank may use for the step,
        split as NOTE [Rank budgets] says (`be.split`); a fraction is of the step's
        keep-everything peak, as for `fxopt.backend`.
    blocks: how many of `model`'s blocks share one compiled graph (compiled one by one).
    optimizer / optimizer_bytes: the optimizer whose state this rank holds.
    pipeline: this rank's stage (`fxopt.distributed.Pipeline`); zero-bubble schedules are
        refused.
    group: the ranks that run the same graphs and must run the same plans: 'world' (FSDP,
        every rank; a group of fxopt's own is made, so every rank must call this in the same
        order), a process group (a stage's data-parallel replicas), or None (no exchange).
    Other keyword arguments are `fxopt.Options` fields.
    """
    parsed = parse_budget(budget)
    in_flight = blocks * (pipeline.in_flight if pipeline is not None else 1)
    split = None
    if parsed is not None and parsed.nbytes is not None:
        split = split_rank_budget(model, parsed, blocks=blocks, optimizer=optimizer,
                                  optimizer_bytes_=optimizer_bytes, pipeline=pipeline)
        opts = Options(budget=split.budget_bytes, resident=split.resident,
                       reserved=split.reserved, in_flight=in_flight, **options)
    else:
        opts = Options(budget=parsed, in_flight=in_flight, **options)
    if group == "world":
        group = dist.new_group(backend="gloo") if dist.is_initialized() else None
    agreement = PlanAgreement(group) if group is not None and \
        dist.get_world_size(group) > 1 else None
    return RankBackend(opts, split, agreement)
