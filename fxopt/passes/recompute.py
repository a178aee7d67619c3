"""Place every recomputed forward node in the backward graph right before its first use."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch.fx as fx

from fxopt.plan import tag


# NOTE [Recompute placement]
# Extraction leaves recomputed forward nodes where they sat in the joint graph: before every
# backward node, so all of them would be alive at once at the start of backward and recompute
# would save nothing. Walking the backward nodes in order and emitting each one's not yet
# emitted recompute inputs just before it gives every recomputed tensor the shortest life, the
# same order PyTorch's autograd engine would give a checkpointed region.
def place_recomputation(bwd: fx.GraphModule, recomputed: Collection[str],
                        restore_before: Mapping[str, str] | None = None) -> fx.GraphModule:
    """`restore_before[t] = n`: the plan recomputes tensor t right before backward node n (its
    restore step); every other recomputed node comes right before its first use."""
    recomputed_set = set(recomputed)
    scheduled: dict[str, list[fx.Node]] = {}
    by_name = {n.name: n for n in bwd.graph.nodes}
    for tensor, before in (restore_before or {}).items():
        if tensor in by_name and before in by_name and tensor in recomputed_set:
            scheduled.setdefault(before, []).append(by_name[tensor])
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    order = {node: i for i, node in enumerate(bwd.graph.nodes)}

    def emit(root: fx.Node) -> None:
        pending, needed = [root], set()
        while pending:
            node = pending.pop()
            if node in env or node in needed:
                continue
            needed.add(node)
            pending.extend(node.all_input_nodes)
        for node in sorted(needed, key=order.__getitem__):
            env[node] = graph.node_copy(node, env.__getitem__)
            if node.name in recomputed_set:
                tag(env[node], "recompute", node.name, "recompute")

    for node in bwd.graph.nodes:
        if node.op == "placeholder":
            env[node] = graph.node_copy(node, env.__getitem__)
    for node in bwd.graph.nodes:
        if node.name not in recomputed_set:
            for early in sorted(scheduled.get(node.name, ()), key=order.__getitem__):
                emit(early)
            emit(node)
    out = fx.GraphModule(bwd, graph)
    out.graph.lint()
    return out
