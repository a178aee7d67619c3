"""Change how one saved tensor crosses the forward/backward boundary.

The forward graph returns its user outputs, then the saved tensors, then saved symbols; the
backward graph takes the saved values as placeholders in the same order. A rewrite replaces the
saved tensor `x` by one or more stand-ins (a low-bit payload and its scales, a host copy) made in
forward, and rebuilds `x` in backward from them right before its first use.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from fxopt.compat import saved_for_backward_descriptor
from fxopt.passes.meta import PlanApplyError
from fxopt.plan import tag

SAVED_AS = "fxopt_saved_as"  # backward placeholder -> name of the forward value it receives

MakeStandIns = Callable[[fx.Graph, fx.Node], list[fx.Node]]
Rebuild = Callable[[fx.Graph, list[fx.Node]], fx.Node]


def fake_run(target: Any, args: Sequence[Any]) -> Any:
    """The op's output metadata, computed on the fake values of its inputs (nothing runs)."""
    vals = [a.meta["val"] if isinstance(a, fx.Node) else a for a in args]
    mode = next(v.fake_mode for v in vals if isinstance(v, torch.Tensor))
    with mode:
        return target(*vals)


def call(graph: fx.Graph, target: Any, args: tuple[Any, ...], name: str | None = None
         ) -> fx.Node:
    node = graph.create_node("call_function", target, args, name=name)
    node.meta["val"] = fake_run(target, args)
    return node


def inline(graph: fx.Graph, fn: Callable[..., Any], args: tuple[Any, ...],
           tag_as: tuple[str, str, str]) -> list[fx.Node]:
    """Traces `fn(*args)` to aten ops on the args' fake values, decomposed as Inductor expects
    its input graphs, and copies those ops into `graph` at its insertion point, so that
    Inductor can fuse them; returns the output nodes."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from fxopt.compat import select_decomp_table

    nodes = [a for a in args if isinstance(a, fx.Node)]
    vals = [n.meta["val"] for n in nodes]
    mode = next(v.fake_mode for v in vals if isinstance(v, torch.Tensor))

    def traced(*tensors: Any) -> Any:
        it = iter(tensors)
        return fn(*[next(it) if isinstance(a, fx.Node) else a for a in args])

    with mode:
        gm = make_fx(traced, decomposition_table=select_decomp_table())(*vals)
    if gm.graph.find_nodes(op="get_attr"):
        raise PlanApplyError(f"{getattr(fn, '__name__', fn)} traced to tensor constants")
    env: dict[fx.Node, fx.Node] = dict(zip(gm.graph.find_nodes(op="placeholder"), nodes))
    for node in gm.graph.nodes:
        if node.op == "call_function":
            env[node] = graph.node_copy(node, env.__getitem__)
            tag(env[node], *tag_as)
    (out,) = gm.graph.find_nodes(op="output")
    results = out.args[0]
    return [env[r] for r in (results if isinstance(results, (tuple, list)) else [results])]


def getitem(graph: fx.Graph, node: fx.Node, index: int, name: str | None = None) -> fx.Node:
    item = graph.create_node("call_function", operator.getitem, (node, index), name=name)
    item.meta["val"] = node.meta["val"][index]
    return item


def _free_name(graph: fx.Graph, base: str) -> str:
    taken = {n.name for n in graph.nodes} | {str(n.target) for n in graph.find_nodes(
        op="placeholder")}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def replace_saved(fwd: fx.GraphModule, bwd: fx.GraphModule, name: str, num_fwd_outputs: int,
                  make_stand_ins: MakeStandIns, rebuild: Rebuild, pass_name: str,
                  decision: str) -> list[fx.Node]:
    """Saves `make_stand_ins(x)` instead of `x`, and rebuilds `x` in backward by `rebuild`;
    returns the forward stand-ins."""
    output = fwd.graph.find_nodes(op="output")[0]
    outs = list(output.args[0])
    saved = outs[num_fwd_outputs:]
    position = next((i for i, n in enumerate(saved) if isinstance(n, fx.Node) and n.name == name),
                    None)
    if position is None:
        raise PlanApplyError(f"{name} is not saved for backward, so it cannot be {decision}")
    source = saved[position]
    with fwd.graph.inserting_before(source.next):  # keeps the stand-ins in creation order
        stand_ins = make_stand_ins(fwd.graph, source)
    for node in stand_ins:
        tag(node, pass_name, name, decision)
    saved[position:position + 1] = stand_ins
    output.args = (tuple(outs[:num_fwd_outputs] + saved),)
    descs = output.meta.get("desc")
    if descs is not None:  # AOTAutograd reads one descriptor per output
        output.meta["desc"] = list(descs[:num_fwd_outputs]) + [
            saved_for_backward_descriptor()(i) for i in range(len(saved))]

    placeholders = bwd.graph.find_nodes(op="placeholder")
    placeholder = next((n for n in placeholders if n.meta.get(SAVED_AS) == name),
                       None) or next(n for n in placeholders if n.name == name)
    with bwd.graph.inserting_before(placeholder):
        new_inputs = []
        for i, node in enumerate(stand_ins):
            # A fresh, distinctive target: a placeholder whose target differs from its name
            # (fx renaming a taken name) would shadow other values in the generated code.
            ph = bwd.graph.placeholder(_free_name(bwd.graph, f"{name}_{pass_name}_{i}"))
            ph.meta.update({k: v for k, v in placeholder.meta.items() if k != "val"})
            ph.meta[SAVED_AS] = node.name
            ph.meta["val"] = node.meta["val"]
            tag(ph, pass_name, name, decision)
            new_inputs.append(ph)
    order = {n: i for i, n in enumerate(bwd.graph.nodes)}
    first_user = min(placeholder.users, key=order.__getitem__)
    with bwd.graph.inserting_before(first_user):
        rebuilt = rebuild(bwd.graph, new_inputs)
    tag(rebuilt, pass_name, name, decision)
    placeholder.replace_all_uses_with(rebuilt)
    bwd.graph.erase_node(placeholder)
    return stand_ins
