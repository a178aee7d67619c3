"""Typed metadata on every node a pass inserts or moves (`node.meta[META_KEY]`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

META_KEY = "fxopt"


@dataclass(frozen=True)
class Inserted:
    """Which pass put this node here, and for which planned tensor and decision."""

    pass_name: str  # "recompute", "lowbit", "offload", "schedule"
    tensor: str  # name of the planned tensor in the joint graph
    decision: str  # the plan's decision kind ("recompute", "lowbit", ...)


def tag(node: fx.Node, pass_name: str, tensor: str, decision: str) -> None:
    node.meta[META_KEY] = Inserted(pass_name, tensor, decision)


def inserted_by(node: fx.Node) -> Inserted | None:
    value = node.meta.get(META_KEY)
    return value if isinstance(value, Inserted) else None


class PlanApplyError(RuntimeError):
    """A plan cannot be applied safely to this graph (the backend falls back, with a warning)."""
