"""A rank's byte budget, split into what lives outside the compiled graphs and what they share.

NOTE [Rank budgets]
The user gives the device memory one rank may use for a training step. Before the step that
rank already holds its parameters (FSDP: its shards) and the optimizer's state; during the step
FSDP adds the unsharded parameters of the block being computed and of the block it prefetches,
the root's unsharded parameters, the all-gather's output buffer (one more block), and the
gradient shards as the backward makes them. None of
that is in a compiled graph, so it is taken off first (`resident`, then `Options.reserved`).
The rest is the step's budget for the graphs, which is shared as for any step (NOTE [Step
budgets] in fxopt/step.py) with one more fact: how many runs of the block graph hold their
saved tensors at once, blocks sharing one compiled graph x microbatches in flight on this
stage (`Options.in_flight`). Under 1F1B the first stages have the most microbatches in flight,
so the same rank budget gives them the tighter plan. Memory that eager code holds (the
embedding, a loss on the logits, the pipeline's buffers for the stage's inputs and outputs)
is not predicted: the measured step shows what is allocated between the first graph's forward
and the last backward, and the graphs are re-planned around it. What eager code allocates
before the first graph runs and holds through the step (the embedding's output, FSDP's
buffers for the root) is outside that window: keep a few percent of the budget for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from fxopt.config import OptionsError, format_bytes, parse_budget
from fxopt.distributed.layout import Pipeline

# Optimizer state kept per parameter element, in units of the parameter's size, for the
# optimizers of torch.optim (their `state` is created lazily at the first step, after the
# compile, so it is counted from the class and its settings).
_STATES = {"Adam": 2, "AdamW": 2, "NAdam": 2, "RAdam": 2, "Adamax": 2, "Adagrad": 1,
           "Adadelta": 2, "ASGD": 1, "Rprop": 2}


@dataclass(frozen=True)
class RankSplit:
    """How one rank's budget is split (NOTE [Rank budgets]); sizes in bytes."""

    budget_bytes: int
    parameters: int  # this rank's parameters (FSDP: shards), resident
    optimizer: int  # the optimizer's state, resident
    gradients: int  # this rank's gradients (FSDP: shards), made during the backward
    unsharded: int  # FSDP's unsharded parameters: root, the block computed and the one prefetched
    blocks: int  # blocks on this rank sharing one compiled graph
    microbatches: int  # microbatches in flight on this rank's stage

    @property
    def resident(self) -> int:
        return self.parameters + self.optimizer

    @property
    def reserved(self) -> int:
        return self.gradients + self.unsharded

    @property
    def in_flight(self) -> int:
        return self.blocks * self.microbatches

    @property
    def graphs_bytes(self) -> int:
        return self.budget_bytes - self.resident - self.reserved

    def __str__(self) -> str:
        return (f"rank budget {format_bytes(self.budget_bytes)} = parameters "
                f"{format_bytes(self.parameters)} + optimizer state {format_bytes(self.optimizer)}"
                f" + gradients {format_bytes(self.gradients)} + FSDP unsharded parameters "
                f"{format_bytes(self.unsharded)} + compiled graphs "
                f"{format_bytes(self.graphs_bytes)}"
                f" (each block graph's saved tensors {self.in_flight}x at once: {self.blocks} "
                f"block(s) x {self.microbatches} microbatch(es) in flight)")


def _local_bytes(t: torch.Tensor) -> int:
    local = t.to_local() if hasattr(t, "to_local") else t  # a DTensor: this rank's shard
    return local.numel() * local.element_size()


def _full_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()  # a DTensor's numel is the global one


def optimizer_bytes(optimizer: Any, params: Sequence[nn.Parameter]) -> int:
    """Bytes of the optimizer's state for these parameters: measured when it exists, else from
    the optimizer's class and settings."""
    if optimizer is None:
        return 0
    known = {id(p) for p in params}
    measured = sum(_local_bytes(v) for p, st in optimizer.state.items() if id(p) in known
                   for v in st.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
    if measured:
        return measured
    name = type(optimizer).__name__
    total = 0
    for group in optimizer.param_groups:
        if name == "SGD":
            per = 1 if group.get("momentum", 0) else 0
        elif name == "RMSprop":
            per = 1 + bool(group.get("momentum", 0)) + bool(group.get("centered", False))
        elif name in _STATES:
            per = _STATES[name] + bool(group.get("amsgrad", False))
        else:
            raise OptionsError(f"fxopt does not know how much state {name} keeps per parameter;"
                               " give optimizer_bytes= (bytes of its state on this rank)")
        total += per * sum(_local_bytes(p) for p in group["params"] if id(p) in known)
    return total


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _own_params(module: nn.Module, inner: Iterable[nn.Module]) -> list[nn.Parameter]:
    """The parameters `module` manages itself (not those of the FSDP modules inside it)."""
    inside = {id(m) for m in module.modules() if m is not module}
    skip = {id(p) for m in inner if id(m) in inside for p in m.parameters()}
    return [p for p in module.parameters() if id(p) not in skip]


def split_rank_budget(model: nn.Module, budget: Any, *, blocks: int = 1,
                      optimizer: Any = None, optimizer_bytes_: int | None = None,
                      pipeline: Pipeline | None = None) -> RankSplit:
    """Splits `budget` (bytes or a size such as '2GiB') for the part of the model on this
    rank (NOTE [Rank budgets]). `blocks`: how many blocks share the compiled graph; `optimizer`
    (or `optimizer_bytes_`): whose state is resident; `pipeline`: this rank's stage."""
    parsed = parse_budget(budget)
    if parsed is None or parsed.nbytes is None:
        raise OptionsError(f"a rank budget is a size in bytes (such as '2GiB'), got {budget!r}")
    params = [p for p in model.parameters()]
    trainable = [p for p in params if p.requires_grad]
    fsdp = _fsdp_modules(model)
    unsharded = 0
    if fsdp:
        own = {id(m): sum(_full_bytes(p) for p in _own_params(m, fsdp)) for m in fsdp}
        root = own.get(id(model), 0)
        inner = [own[id(m)] for m in fsdp if m is not model]
        # the block computed, the one prefetched, and the all-gather's output buffer that is
        # copied out into the next block's parameters
        unsharded = root + 3 * max(inner, default=0)
    opt = optimizer_bytes_ if optimizer_bytes_ is not None else \
        optimizer_bytes(optimizer, trainable)
    split = RankSplit(parsed.nbytes, sum(_local_bytes(p) for p in params), opt,
                      sum(_local_bytes(p) for p in trainable), unsharded, blocks,
                      pipeline.in_flight if pipeline is not None else 1)
    if split.graphs_bytes <= 0:
        raise OptionsError(
            f"rank budget {format_bytes(split.budget_bytes)} leaves nothing for the compiled "
            f"graphs: {split}. The parameters, gradients and optimizer state alone need "
            f"{format_bytes(split.resident + split.reserved)}; give a larger budget or shard "
            "more (more ranks)")
    return split
