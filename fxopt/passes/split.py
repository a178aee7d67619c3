"""Split the joint graph into forward and backward graphs, saving exactly what the plan keeps.

Everything the backward needs that the plan does not save is recomputed in the backward graph;
this module checks that each such recomputation is safe before it is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx

from fxopt.compat import partitioners
from fxopt.opclass import Effect, classify, refusal_for_recompute
from fxopt.passes.meta import PlanApplyError


def _is_sym(node: fx.Node) -> bool:
    return partitioners().is_sym_node(node)


def unsafe_to_recompute(node: fx.Node) -> str | None:
    """Why `node` must not run a second time in backward, or None when it may (the same
    classification the Problem was built from, fxopt.opclass)."""
    return refusal_for_recompute(node) if node.op == "call_function" else None


def forward_side(joint: fx.GraphModule, num_fwd_outputs: int,
                 static_lifetime_input_indices: list[int] | None = None) -> list[fx.Node]:
    """Joint-graph nodes that run in forward: those the forward outputs need, and those that
    depend on no tangent (PyTorch's "unclaimed" nodes), in graph order."""
    info = partitioners().classify_nodes(joint, static_lifetime_input_indices or [],
                                         num_fwd_outputs)
    side = _forward_set(info)
    return [n for n in joint.graph.nodes if n in side]


def _forward_set(info: Any) -> set[fx.Node]:
    return set(info.required_fw_nodes) | (set(info.unclaimed_nodes) - set(info.required_bw_nodes))


def _drop_dead_forward_collectives(bwd: fx.GraphModule, forward_names: set[str]) -> None:
    """The backward's extraction keeps a forward collective that nothing in backward reads
    (dead code elimination counts collectives as impure), and with it the chain that feeds it:
    they ran in forward and must not run again. The backward's own collectives stay."""
    def impure(node: fx.Node) -> bool:
        if node.name in forward_names and classify(node).effect is Effect.COLLECTIVE:
            return False
        return node.is_impure()

    bwd.graph.eliminate_dead_code(is_impure_node=impure)
    bwd.recompile()


def split_joint(joint: fx.GraphModule, saved_names: Iterable[str], *, num_fwd_outputs: int,
                static_lifetime_input_indices: list[int] | None
                ) -> tuple[fx.GraphModule, fx.GraphModule, tuple[str, ...]]:
    """Forward and backward graphs that save `saved_names` (plus the primals the backward
    reads); returns them and the names of the forward nodes the backward recomputes."""
    by_name = {n.name: n for n in joint.graph.nodes}
    unknown = sorted(set(saved_names) - by_name.keys())
    if unknown:
        raise PlanApplyError(f"the plan names tensors this graph does not have: {unknown[:5]}")
    info = partitioners().classify_nodes(joint, static_lifetime_input_indices or [],
                                         num_fwd_outputs)
    fwd_nodes = _forward_set(info)
    saved_set = set(saved_names)
    saved_values: list[fx.Node] = []
    saved_syms: list[fx.Node] = []
    for node in joint.graph.nodes:
        is_primal = node.op == "placeholder" and partitioners()._is_primal(node)
        # Symbolic sizes cross as the primals that bind them, and every integer size the
        # forward computes crosses as itself: recomputed in backward, `sym_size(t, d)` would
        # keep the whole tensor t alive just to read one dimension. Derived SymFloats (batch
        # norm's 1/N) are recomputed in backward, where Inductor handles them.
        forward_size = node in fwd_nodes and isinstance(node.meta.get("val"), torch.SymInt) \
            and node.op != "placeholder"
        if not (is_primal or node.name in saved_set or forward_size):
            continue
        (saved_syms if _is_sym(node) else saved_values).append(node)
    fwd, bwd = partitioners()._extract_fwd_bwd_modules(
        joint, saved_values, saved_sym_nodes=saved_syms, num_fwd_outputs=num_fwd_outputs,
        static_lifetime_input_nodes=info.static_lifetime_input_nodes)
    _drop_dead_forward_collectives(bwd, {n.name for n in fwd_nodes})
    recomputed = tuple(n.name for n in bwd.graph.nodes
                       if n.op == "call_function" and by_name.get(n.name) in fwd_nodes)
    for name in recomputed:
        reason = unsafe_to_recompute(by_name[name])
        if reason is not None:
            raise PlanApplyError(f"the plan leaves {name} ({by_name[name].target}) to be "
                                 f"recomputed in backward, but {reason}")
    return fwd, bwd, recomputed
