"""Forced plans: one decision for every eligible saved tensor, applied by fxopt's passes without
the planner. They exercise a pass on as many tensors as a graph has (every offload, every cast)
through the FX harness in tests and through Inductor in `benchmarks.gpu_check`."""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.fx as fx

from fxopt.compat import CustomPartitionerFn
from fxopt.passes import apply_plan
from fxopt.passes.split import forward_side
from fxopt.plan import Decision, Kind, Plan


def forward_candidates(joint: fx.GraphModule, num_fwd_outputs: int) -> list[fx.Node]:
    """Forward call_function nodes that produce tensors (what a plan decides about)."""
    return [n for n in forward_side(joint, num_fwd_outputs) if n.op == "call_function"
            and isinstance(n.meta.get("val"), torch.Tensor)]


def needed_by_backward(joint: fx.GraphModule, num_fwd_outputs: int) -> list[fx.Node]:
    """Forward-side nodes that some backward node reads directly (what the split saves)."""
    fwd = forward_side(joint, num_fwd_outputs)
    side = set(fwd)
    return [n for n in fwd if any(u not in side and u.op != "output" for u in n.users)]


def storable(node: fx.Node) -> bool:
    """A dense floating-point tensor of at least 64 elements (what the passes can store)."""
    from torch._prims_common import is_non_overlapping_and_dense_or_false

    val = node.meta["val"]
    return val.dtype.is_floating_point and val.numel() >= 64 and \
        is_non_overlapping_and_dense_or_false(val)


def given_plan(decisions: tuple[Decision, ...]) -> Plan:
    """A plan with the given decisions and no predictions (for applying, not for reporting)."""
    return Plan(decisions=decisions, peak_bytes=0, budget_bytes=0, baseline_peak_bytes=0,
                extra_time_us=0, status="GIVEN", solve_seconds=0.0, problem_hash="",
                options_hash="")


def partition_forced(kind: Kind, fmt: str | None, joint: fx.GraphModule, joint_inputs: Any,
                     **kwargs: Any) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Partitions `joint` giving every eligible saved tensor `kind` (the rest is kept)."""
    kwargs.pop("compiler", None)  # Inductor passes it; the passes do not need it
    nodes = forward_candidates(joint, kwargs["num_fwd_outputs"])
    used = set(needed_by_backward(joint, kwargs["num_fwd_outputs"]))
    chosen = [n for n in nodes if storable(n) and n in used]
    decisions = tuple(Decision(n.name, Kind.KEEP) for n in nodes if n not in chosen) + \
        tuple(Decision(n.name, kind, restore_step=None if kind is Kind.KEEP else 0, fmt=fmt)
              for n in chosen)
    applied = apply_plan(joint, given_plan(decisions), **kwargs)
    return applied.fwd, applied.bwd


def forced(kind: Kind, fmt: str | None) -> Any:
    """An AOTAutograd partition function giving every eligible saved tensor `kind`."""
    return functools.partial(partition_forced, kind, fmt)


class ForcedPartitioner(CustomPartitionerFn):
    """`forced(kind, fmt)` as Inductor's custom partitioner (config `custom_partitioner_fn`)."""

    def __init__(self, kind: Kind, fmt: str | None = None) -> None:
        self.kind, self.fmt = kind, fmt

    def uuid(self) -> str:
        return f"fxopt-forced-{self.kind.value}-{self.fmt}"

    def __call__(self, gm: fx.GraphModule, joint_inputs: Any, **kwargs: Any
                 ) -> tuple[fx.GraphModule, fx.GraphModule]:
        return partition_forced(self.kind, self.fmt, gm, joint_inputs, **kwargs)


def inductor_backend(partitioner: CustomPartitionerFn) -> Any:
    """A torch.compile backend: Inductor with `partitioner` and AOTAutograd's cache off (a cache
    hit would skip the partitioner)."""
    from fxopt.compat import autograd_cache_off, compile_fx

    patches: dict[str, Any] = {"custom_partitioner_fn": partitioner}
    if isinstance(partitioner, ForcedPartitioner) and partitioner.kind.offloaded:
        patches["reorder_for_peak_memory"] = False  # NOTE [Offload invariants] (7)

    def backend(gm: fx.GraphModule, example_inputs: Any) -> Any:
        with autograd_cache_off():
            return compile_fx(gm, list(example_inputs), config_patches=patches)
    return backend
