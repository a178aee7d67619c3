"""Offload chosen saved tensors to host memory in forward and prefetch them in backward
(invariants: NOTE [Offload invariants] in fxopt/ops/offload.py)."""

from __future__ import annotations

import torch
import torch.fx as fx

import fxopt.ops.offload  # noqa: F401 - registers torch.ops.fxopt.offload / prefetch / ...
from fxopt.passes.boundary import call, replace_saved
from fxopt.plan import tag


def apply_offload(fwd: fx.GraphModule, bwd: fx.GraphModule, name: str, num_fwd_outputs: int,
                  prefetch_before: str | None = None, join_before: str | None = None) -> None:
    """Offloads saved tensor `name`: the copy starts right after it is produced and is joined
    before forward node `join_before` (default: the end of the forward; never before the
    tensor's last forward use); the prefetch is issued before backward node `prefetch_before`
    (default: right before first use) and waited for before first use."""
    device: torch.device | None = None

    def to_host(graph: fx.Graph, x: fx.Node) -> list[fx.Node]:
        nonlocal device
        device = x.meta["val"].device
        return [call(graph, torch.ops.fxopt.offload.default, (x,), f"{name}_host")]

    def from_host(graph: fx.Graph, inputs: list[fx.Node]) -> fx.Node:
        return call(graph, torch.ops.fxopt.prefetch.default, (inputs[0], device),
                    f"{name}_prefetched")

    (host,) = replace_saved(fwd, bwd, name, num_fwd_outputs, to_host, from_host, "offload",
                            "offload")
    _join(fwd, host, join_before, name)
    prefetched = next(n for n in bwd.graph.nodes if n.op == "call_function"
                      and n.target is torch.ops.fxopt.prefetch.default
                      and n.args[0].name == _host_name(bwd, name))
    order = {n: i for i, n in enumerate(bwd.graph.nodes)}
    first_use = min(prefetched.users, key=order.__getitem__)
    early = next((n for n in bwd.graph.nodes if n.name == prefetch_before), None)
    if early is not None and order[early] < order[prefetched]:
        early.prepend(prefetched)  # issue the copy early: it overlaps with compute
    with bwd.graph.inserting_before(first_use):
        wait = bwd.graph.call_function(torch.ops.fxopt.wait_.default, (prefetched,))
        wait.meta["val"] = None
    tag(wait, "offload", name, "offload")


def _join(fwd: fx.GraphModule, host: fx.Node, before: str | None, name: str) -> None:
    """Inserts `offload_join(x, host)` before forward node `before`, or before the output when
    that node is absent or would come before x's last forward use (NOTE [Offload invariants])."""
    (x,) = host.args
    assert isinstance(x, fx.Node)
    order = {n: i for i, n in enumerate(fwd.graph.nodes)}
    output = fwd.graph.find_nodes(op="output")[0]
    last_use = max((u for u in x.users if u is not output), key=order.__getitem__)
    at = next((n for n in fwd.graph.nodes if n.name == before), output) if before else output
    if order[at] <= order[last_use]:
        at = last_use.next
    with fwd.graph.inserting_before(at):
        join = fwd.graph.call_function(torch.ops.fxopt.offload_join.default, (x, host))
        join.meta["val"] = None
    tag(join, "offload", name, "offload")


def _host_name(bwd: fx.GraphModule, name: str) -> str:
    from fxopt.plan import inserted_by

    return next(n.name for n in bwd.graph.find_nodes(op="placeholder")
                if (info := inserted_by(n)) is not None and info.tensor == name
                and info.pass_name == "offload")
