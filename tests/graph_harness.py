"""Run rewritten FX graphs directly (no Inductor): AOTAutograd with a given partition function
and graphs executed as plain torch.fx modules. Cheap enough to test many plans."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.fx as fx
from torch._dynamo.backends.common import aot_autograd
from torch._functorch._aot_autograd.utils import make_boxed_func

from fxopt.plan import Decision, Kind, Plan

PartitionFn = Callable[..., tuple[fx.GraphModule, fx.GraphModule]]


def fx_backend(partition: PartitionFn, graphs: dict[str, fx.GraphModule] | None = None) -> Any:
    """A torch.compile backend running the partitioned graphs eagerly; stores them in `graphs`."""
    from torch._inductor.decomposition import select_decomp_table

    store = graphs if graphs is not None else {}

    def keep(name: str) -> Callable[[fx.GraphModule, Any], Any]:
        def compiler(gm: fx.GraphModule, _inputs: Any) -> Any:
            store[name] = gm
            return make_boxed_func(gm)
        return compiler

    return aot_autograd(fw_compiler=keep("fwd"), bw_compiler=keep("bwd"), partition_fn=partition,
                        decompositions=select_decomp_table())


def test_plan(keep: list[str], recompute: list[str], other: tuple[Decision, ...] = ()) -> Plan:
    """A plan with the given decisions and no predictions (for applying, not for reporting)."""
    decisions = tuple([Decision(n, Kind.KEEP) for n in keep]
                      + [Decision(n, Kind.RECOMPUTE, restore_step=0) for n in recompute]) + other
    return Plan(decisions=decisions, peak_bytes=0, budget_bytes=0, baseline_peak_bytes=0,
                extra_time_us=0, status="GIVEN", solve_seconds=0.0, problem_hash="",
                options_hash="")


test_plan.__test__ = False  # a helper, not a pytest test


def assert_offload_invariants(fwd: fx.GraphModule, bwd: fx.GraphModule) -> None:
    """NOTE [Offload invariants] (fxopt/ops/offload.py), checked on the rewritten graphs."""
    import torch

    ops = torch.ops.fxopt
    for op in (ops.offload, ops.offload_join, ops.prefetch, ops.wait_):
        if hasattr(torch.Tag, "cudagraph_unsafe"):
            assert torch.Tag.cudagraph_unsafe in op.default.tags, op
    order = {n: i for i, n in enumerate(fwd.graph.nodes)}
    output = fwd.graph.find_nodes(op="output")[0]
    for host in fwd.graph.find_nodes(op="call_function", target=ops.offload.default):
        (x,) = host.args
        joins = [u for u in x.users if u.target is ops.offload_join.default]
        assert len(joins) == 1 and joins[0].args == (x, host), f"{x.name}: one join of its copy"
        join = joins[0]
        # (1) x is read by the join after every other forward use: its buffer outlives the copy
        assert all(order[u] < order[join] for u in x.users if u not in (join, output)), x.name
        assert order[host] < order[join]
        assert host in output.args[0], f"{host.name}: the host copy crosses the boundary"
    border = {n: i for i, n in enumerate(bwd.graph.nodes)}
    for fetched in bwd.graph.find_nodes(op="call_function", target=ops.prefetch.default):
        (host, _device) = fetched.args
        assert host.op == "placeholder" and list(host.users) == [fetched], host.name
        waits = [u for u in fetched.users if u.target is ops.wait_.default]
        assert len(waits) == 1, fetched.name
        # (4) every read of the prefetched buffer comes after its wait
        assert all(border[u] > border[waits[0]] for u in fetched.users if u is not waits[0])
