"""Keep each matmul where the schedule put it (NOTE [Matmuls that Inductor moves]).

Inductor fuses add(mm(a, b), c) into addmm(c, a, b) at the add. When kernels lie between the
mm and the add, that moves the matmul later and keeps a and b alive until then, which the
plan did not count. A multiply by one between the mm and the add keeps the pattern from
matching: the add's kernel inlines it, so the only cost is the mm's own small output living
until the add.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from fxopt.cost_models.fusion import addmm_fusions, moves_matmul
from fxopt.graph import GraphView
from fxopt.plan import tag


def keep_matmuls_in_place(gm: fx.GraphModule) -> int:
    """Blocks every addmm fusion that would move an mm; returns how many it blocked."""
    view = GraphView.from_fx(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    blocked = 0
    for mm_name, add_name in addmm_fusions(view).items():
        if not moves_matmul(view, mm_name, add_name):
            continue
        mm, add = nodes[mm_name], nodes[add_name]
        with gm.graph.inserting_after(mm):
            barrier = gm.graph.call_function(torch.ops.aten.mul.Tensor, (mm, 1))
        barrier.meta["val"] = mm.meta["val"]
        add.replace_input_with(mm, barrier)
        tag(barrier, "schedule", mm_name, "keep in place")
        blocked += 1
    return blocked
