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
