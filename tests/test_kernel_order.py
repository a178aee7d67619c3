"""Inductor's scheduler keeps the kernel order of fxopt's graphs (NOTE [Inductor keeps fxopt's
kernel order]): lowering and scheduling only, no code generation (about 2 s)."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch._inductor.debug import DebugContext
from torch._inductor.decomposition import select_decomp_table
from torch._inductor.graph import GraphLowering
from torch._inductor.scheduler import Scheduler
from torch._inductor.virtualized import V
from torch.fx.experimental.proxy_tensor import make_fx

from fxopt.kernel_order import KernelOrderChoices, moves_a_node


def mlp_backward(g, gate, up, w_down):
    """The shape of HF Llama's MLP backward with the activation recomputed: the recomputation
    (for the down projection's weight gradient) and the SiLU backward both read gate and up,
    and the SiLU backward also reads the matmul between them."""
    act = F.silu(gate) * up
    grad_w_down = torch.mm(act.t(), g)
    grad_act = torch.mm(g, w_down)
    sig = torch.sigmoid(gate)
    grad_up = grad_act * gate * sig
    grad_gate = grad_act * up * sig * (1 + gate * (1 - sig))
    return grad_w_down, grad_up, grad_gate


def traced() -> fx.GraphModule:
    args = [torch.randn(64, 8), torch.randn(64, 16), torch.randn(64, 16), torch.randn(8, 16)]
    return make_fx(mlp_backward, decomposition_table=select_decomp_table(),
                   tracing_mode="fake")(*args)


def scheduled_positions(gm: fx.GraphModule, keep_order: bool) -> list[list[int]]:
    """For each node Inductor runs, in its order, the positions its ops had before fusion."""
    inputs = [n.meta["val"] for n in gm.graph.find_nodes(op="placeholder")]
    graph = GraphLowering(gm, example_inputs=inputs)
    with V.set_fake_mode(inputs[0].fake_mode), V.set_graph_handler(graph), DebugContext():
        graph.run(*inputs)
        if keep_order:
            with V.set_choices_handler(KernelOrderChoices(V.choices)):
                scheduler = Scheduler(graph.operations)
        else:
            scheduler = Scheduler(graph.operations)
    return [sorted(op.min_order for op in node.get_nodes()) for node in scheduler.nodes]


def test_inductor_moves_the_matmul_ahead_of_a_fused_kernel():
    positions = scheduled_positions(traced(), keep_order=False)
    flat = [p for node in positions for p in node]
    assert flat != sorted(flat), positions  # the second matmul (position 2) runs first


def test_kernels_keep_their_order_and_neighbours_still_fuse():
    positions = scheduled_positions(traced(), keep_order=True)
    flat = [p for node in positions for p in node]
    assert flat == sorted(flat), positions
    assert any(len(node) > 1 for node in positions)  # the SiLU backward's nodes fuse


def test_a_fusion_moves_a_node_that_starts_between():
    assert moves_a_node(3, 7, [5])
    assert moves_a_node(7, 3, [5])
    assert not moves_a_node(3, 4, [1, 5, 9])
    assert not moves_a_node(3, 7, [2, 7, 8])
