"""Inductor runs fxopt's graphs in the kernel order the plan assumed: its scheduler fuses two
nodes only when no other node lies between them (NOTE [Inductor keeps fxopt's kernel order]).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from fxopt.compat import inductor_choices

__all__ = ["KernelOrderChoices", "keeping_kernel_order", "moves_a_node"]


# NOTE [Inductor keeps fxopt's kernel order]
# fxopt plans on the kernels of `kernels_of` (fxopt/cost_models/fusion.py) in the graph's order:
# the memory simulator, the Problem's anchors and the rewriting passes all assume that order.
# Inductor's scheduler then fuses nodes that share a buffer (Scheduler.fuse_nodes: horizontally,
# or a consumer into its producer), best score first; a fused node runs where its earliest
# member was (`min_order`), and a topological sort then pulls ahead whatever a later member
# reads. Fusing two nodes with others between them moves those others. In the MLP backward of
# HF Llama, the recomputed silu(gate) * up that the down projection's weight gradient reads
# shares gate and up with the SiLU backward, which also reads the matmul grad @ W_down: fused,
# that matmul runs before the recomputation, and its output, the recomputation's and the SiLU
# backward's two gradients (1 MiB each) are live at once. Measured (CPU, allocator's peak, one
# step): the checkpointed Llama 10.49 MiB where the plan predicted 9.55 (at budget 0.5 and
# without one), Llama at 0.5 12.45 for 12.02, Qwen2 at 0.5 12.20 for 11.77. Refusing such
# fusions, each peak is the predicted one to 0.01 MiB.
# The fusions that move nothing are kept: fxopt's compiles refuse a fusion only when another
# node of the schedule starts between the two (a wrapper of Inductor's own heuristics, installed
# for each of fxopt's forward and backward compiles). Losing the others is cheap on CPU:
# backward kernels of hf_bert at 0.5 39 -> 53, hf_llama 24 -> 34, and the step time
# the same within noise (at 0.5, both compiled in one process, steps interleaved; median ms
# without -> with: hf_llama 23.70 -> 23.80 and hf_llama_checkpointing 25.33 -> 25.33 over 200,
# hf_bert 54.1 -> 54.5 over 150; thread CPU time: hf_gpt2 28.9 -> 29.2 over 150, fno 90.8 ->
# 87.3 over 30).
# Emulating the fusions instead would need Inductor's loop-level analysis (its shared-data score
# of index expressions, loop orders, the C++ backend's limits), which the FX view does not have.
# Refusing only the fusions that pull a node ahead (and letting a later member move up to the
# earlier one) predicted the same peaks on these models, but a member moved up holds its output
# across the kernels it passes, which the plan does not see either.
# Inductor's reorder_for_peak_memory stays on: it keeps the order unless its own estimate finds
# a lower peak (it reordered fno's backward without a budget: predicted/allocated 0.995).
def moves_a_node(first: int, second: int, starts: Iterable[int]) -> bool:
    """Whether fusing the nodes that start at schedule positions ``first`` and ``second``
    moves another node: ``starts`` are the other nodes' positions (a fused node starts at its
    earliest member's)."""
    lo, hi = sorted((first, second))
    return any(lo < s < hi for s in starts)


class KernelOrderChoices:
    """Inductor's fusion heuristics (the handler it wraps, an `InductorChoices`), refusing the
    fusions that would move a node (NOTE [Inductor keeps fxopt's kernel order])."""

    def __init__(self, base: Any) -> None:
        self._base = base
        self._ops: weakref.WeakKeyDictionary[Any, list[str | None]] = weakref.WeakKeyDictionary()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def can_fuse(self, scheduler: Any, node1: Any, node2: Any, shared_data_score: int) -> bool:
        if not self._base.can_fuse(scheduler, node1, node2, shared_data_score):
            return False
        first, second = getattr(node1, "min_order", None), getattr(node2, "min_order", None)
        if first is None or second is None:
            return True
        return not moves_a_node(first, second, self._starts_between(scheduler, node1, node2))

    def _starts_between(self, scheduler: Any, node1: Any, node2: Any) -> list[int]:
        """Where the nodes start that hold an op placed between ``node1`` and ``node2``."""
        lo, hi = sorted((node1.min_order, node2.min_order))
        out = []
        for op in self._ops_by_position(scheduler)[lo + 1:hi]:
            node = scheduler.name_to_fused_node.get(op) if op is not None else None
            if node is not None and node is not node1 and node is not node2:
                out.append(node.min_order)
        return out

    def _ops_by_position(self, scheduler: Any) -> list[str | None]:
        """The scheduler's ops by their place before fusion (each op's own `min_order`)."""
        ops = self._ops.get(scheduler)
        if ops is None:
            placed = [n for n in scheduler.name_to_node.values() if hasattr(n, "min_order")]
            ops = [None] * (max((n.min_order for n in placed), default=-1) + 1)
            for n in placed:
                ops[n.min_order] = n.get_name()
            self._ops[scheduler] = ops
        return ops


def keeping_kernel_order(inner_compile: Callable[..., Any]) -> Callable[..., Any]:
    """``inner_compile`` (Inductor's compile of one forward or backward graph) with the
    scheduler refusing the fusions that move a node."""

    @functools.wraps(inner_compile)
    def compile_in_order(*args: Any, **kwargs: Any) -> Any:
        current, set_handler = inductor_choices()
        with set_handler(KernelOrderChoices(current)):
            return inner_compile(*args, **kwargs)

    return compile_in_order
