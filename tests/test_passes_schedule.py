"""The schedule pass keeps each matmul where the graph put it, and the simulator knows when
Inductor would move one (NOTE [Matmuls that Inductor moves])."""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch._inductor.fx_passes.post_grad import post_grad_passes
from torch._inductor.virtualized import V
from torch.fx.experimental.proxy_tensor import make_fx

from fxopt.cost_models.fusion import FusionRules, addmm_fusions, kernels_of, moves_matmul
from fxopt.graph import GraphView, Side
from fxopt.passes import inserted_by
from fxopt.passes.schedule import keep_matmuls_in_place


def tied_weight_backward(g, h, w, e):
    """The shape of a tied-embedding backward: the output layer's weight gradient (an mm of
    the big logits gradient `g`) is added to the embedding gradient computed at the end."""
    gw = torch.mm(g.t(), h)
    z = (torch.mm(g, w) * 2).sin()
    return gw + e * z.mean(), z


def args() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(*s, generator=gen) for s in ((64, 32), (64, 16), (32, 16), (32, 16))]


def traced() -> fx.GraphModule:
    return make_fx(tied_weight_backward, tracing_mode="fake")(*args())


def last_reader(view: GraphView, rules: FusionRules, storage: str) -> str:
    readers = [k for k in kernels_of(view, rules) if any(r[0] == storage for r in k.reads)]
    return readers[-1].name


def test_simulator_moves_the_matmul_to_its_add_unless_guarded():
    gm = traced()
    view = GraphView.from_fx(gm, side=Side.BWD)
    (mm, add), = addmm_fusions(view).items()
    assert moves_matmul(view, mm, add)
    g = gm.graph.find_nodes(op="placeholder")[0].name
    # Inductor computes the mm at the add, so the logits gradient is read there last.
    assert last_reader(view, FusionRules(), g) == add
    # With the schedule pass the mm stays put, and the second mm reads g last.
    assert last_reader(view, FusionRules(addmm_guard=True), g) != add


def test_pass_blocks_inductor_addmm_fusion_and_keeps_values():
    gm = traced()
    expected = gm(*args())
    guarded = copy.deepcopy(gm)
    assert keep_matmuls_in_place(guarded) == 1
    guarded.graph.lint()
    guarded.recompile()
    for got, want in zip(guarded(*args()), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    barrier = next(n for n in guarded.graph.nodes if inserted_by(n) is not None)
    assert inserted_by(barrier).pass_name == "schedule"
    assert barrier.meta["val"].shape == (32, 16)

    def post_grad_targets(m: fx.GraphModule) -> list[object]:
        fake_mode = m.graph.find_nodes(op="placeholder")[0].meta["val"].fake_mode
        with V.set_fake_mode(fake_mode):
            post_grad_passes(m, is_inference=False)
        return [n.target for n in m.graph.nodes if n.op == "call_function"]

    # Inductor's own post-grad passes: the unguarded graph gets an addmm, the guarded one not.
    assert torch.ops.aten.addmm.default in post_grad_targets(copy.deepcopy(gm))
    after = post_grad_targets(guarded)
    assert torch.ops.aten.addmm.default not in after
    assert after.count(torch.ops.aten.mm.default) == 2


def test_adjacent_add_is_left_alone():
    def f(a, b, c):
        return torch.mm(a, b) + c

    gm = make_fx(f, tracing_mode="fake")(torch.randn(4, 3), torch.randn(3, 5), torch.randn(5))
    view = GraphView.from_fx(gm, side=Side.FWD)
    (mm, add), = addmm_fusions(view).items()
    assert not moves_matmul(view, mm, add)
    assert keep_matmuls_in_place(gm) == 0
