"""Turning a joint graph plus a saved set into forward and backward views (pure data).

This mirrors what a partitioner does with FX graphs (``_extract_fwd_bwd_modules`` in
``torch/_functorch/partitioners.py``) so that the memory simulator can evaluate a plan before
any graph is rewritten.  Values the backward needs but the forward does not save are
recomputed in the backward, each just before its first backward use, which is where
PyTorch's ``reordering_to_mimic_autograd_engine`` and fxopt's recompute pass put them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from fxopt.graph import GraphView, Node, OpKind, Role, Side, closure

__all__ = ["split_view", "keep_everything", "saved_names", "needed_by_backward",
           "forward_required"]


def needed_by_backward(joint: GraphView) -> frozenset[str]:
    """Forward nodes (not parameters or inputs) that some backward node reads directly."""
    out = set()
    for n in joint.bwd_nodes:
        for i in n.inputs:
            src = joint[i]
            if src.side is Side.FWD and not src.is_fixed and src.outputs:
                out.add(i)
    return frozenset(out)


def forward_required(joint: GraphView) -> frozenset[str]:
    """Nodes the user-visible forward outputs depend on (what must run in the forward)."""
    roots = [o for o in joint.output_names[:joint.num_fwd_outputs] if o is not None]
    return frozenset(_ancestors_in_fwd(joint, roots))


def keep_everything(joint: GraphView) -> frozenset[str]:
    """The plan that saves every value the forward computes and the backward reads, as
    PyTorch's ``default_partition`` does; values only the backward needs are computed there."""
    required = forward_required(joint)
    grads = [o for o in joint.output_names[joint.num_fwd_outputs:] if o is not None]
    backward = _ancestors_in_fwd(joint, grads) - required
    out = set()
    for n in joint.nodes:
        if n.name not in backward:
            continue
        for i in n.inputs:
            src = joint[i]
            if i in required and not src.is_fixed and src.outputs:
                out.add(i)
    return frozenset(out)


def saved_names(bwd: GraphView) -> frozenset[str]:
    """The saved set of a partition: the backward placeholders that carry forward values."""
    return frozenset(n.name for n in bwd.nodes if n.role is Role.SAVED)


def _ancestors_in_fwd(joint: GraphView, roots: Iterable[str]) -> set[str]:
    return closure(roots, lambda name: joint[name].inputs)


def _rebuild(nodes: list[Node], outputs: list[str], side: Side) -> GraphView:
    names = {n.name for n in nodes}
    users: dict[str, list[str]] = {n.name: [] for n in nodes}
    for n in nodes:
        for i in n.inputs:
            users[i].append(n.name)
    out_node = Node("output", len(nodes), "output", OpKind.OUTPUT, Role.COMPUTED, side,
                    tuple(dict.fromkeys(outputs)), (), ())
    for o in dict.fromkeys(outputs):
        users[o].append("output")
    rebuilt = [replace(n, index=k, side=side, users=tuple(users[n.name]),
                       inputs=tuple(i for i in n.inputs if i in names),
                       is_output=n.name in set(outputs))
               for k, n in enumerate(nodes)]
    return GraphView(tuple(rebuilt + [out_node]), 0, tuple(outputs))


def split_view(joint: GraphView, saved: Iterable[str]) -> tuple[GraphView, GraphView]:
    """Forward and backward views for the plan that saves exactly ``saved``.

    The forward computes the user outputs and the saved values; the backward starts from the
    primals it reads, the saved values and the tangents, and recomputes every other forward
    value it needs, depth first, right before its first use.
    """
    saved = set(saved)
    bad = [s for s in saved if s not in joint.by_name or joint[s].side is not Side.FWD]
    if bad:
        raise ValueError(f"saved names {sorted(bad)[:5]} are not forward nodes of the joint "
                         "graph; a plan may only save forward values")
    n_user = joint.num_fwd_outputs
    user_outs = [o for o in joint.output_names[:n_user] if o is not None]
    grad_outs = [o for o in joint.output_names[n_user:] if o is not None]
    fwd_needed = _ancestors_in_fwd(joint, user_outs + sorted(saved))
    fwd_nodes = [n for n in joint.nodes if n.name in fwd_needed and n.kind is not OpKind.OUTPUT]
    saved_in_order = [n.name for n in joint.nodes if n.name in saved]
    fwd = _rebuild(fwd_nodes, user_outs + saved_in_order, Side.FWD)

    emitted: set[str] = set()
    bwd_nodes: list[Node] = []

    def emit(name: str) -> None:
        if name in emitted:
            return
        node = joint[name]
        if node.kind is OpKind.PLACEHOLDER or name in saved:
            role = node.role if node.kind is OpKind.PLACEHOLDER else Role.SAVED
            bwd_nodes.append(replace(node, kind=OpKind.PLACEHOLDER, role=role, op="placeholder",
                                     inputs=(), alias_of=None, alias_index=0, flops=0))
            emitted.add(name)
            return
        for i in node.inputs:
            emit(i)
        bwd_nodes.append(node)
        emitted.add(name)

    for node in joint.bwd_nodes:
        if node.kind is not OpKind.OUTPUT:
            emit(node.name)
    for o in grad_outs:
        emit(o)
    # Placeholders first, as in an FX graph.
    ph = [n for n in bwd_nodes if n.kind is OpKind.PLACEHOLDER]
    rest = [n for n in bwd_nodes if n.kind is not OpKind.PLACEHOLDER]
    bwd = _rebuild(ph + rest, grad_outs, Side.BWD)
    return fwd, bwd
