"""The split and recompute passes on real joint graphs, run without Inductor."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F

from examples import cnn, fno, gpt
from fxopt.passes import PlanApplyError, apply_plan, inserted_by, unsafe_to_recompute
from fxopt.passes.split import forward_side
from tests.graph_harness import fx_backend, test_plan
from tests.training import assert_step_matches, twin


def forward_candidates(joint: fx.GraphModule, num_fwd_outputs: int) -> list[fx.Node]:
    """Forward call_function nodes that produce tensors (what a plan decides about)."""
    return [n for n in forward_side(joint, num_fwd_outputs) if n.op == "call_function"
            and isinstance(n.meta.get("val"), torch.Tensor)]


def recompute_everything(joint, joint_inputs, **kwargs):
    """Saves only what is unsafe to recompute; the backward recomputes the rest."""
    kwargs.pop("compiler", None)  # Inductor passes it; the passes do not need it
    nodes = forward_candidates(joint, kwargs["num_fwd_outputs"])
    keep = [n.name for n in nodes if unsafe_to_recompute(n)]
    recompute = [n.name for n in nodes if not unsafe_to_recompute(n)]
    applied = apply_plan(joint, test_plan(keep, recompute), **kwargs)
    return applied.fwd, applied.bwd


def keep_everything(joint, joint_inputs, **kwargs):
    kwargs.pop("compiler", None)  # Inductor passes it; the passes do not need it
    nodes = forward_candidates(joint, kwargs["num_fwd_outputs"])
    applied = apply_plan(joint, test_plan([n.name for n in nodes], []), **kwargs)
    assert applied.recomputed == ()
    return applied.fwd, applied.bwd


MODELS = {
    "gpt": (lambda: gpt.GPT(gpt.GPTConfig(dropout=0.0, n_layer=2)),
            lambda: gpt.synthetic_batch(gpt.GPTConfig(), 3, torch.Generator().manual_seed(0)),
            lambda m, b: m(*b)),
    "fno": (lambda: fno.FNO2d(fno.FNOConfig(width=8, modes1=4, modes2=4, n_layers=2)),
            lambda: fno.synthetic_batch(2, 16, torch.Generator().manual_seed(0)),
            lambda m, b: F.mse_loss(m(b[0]), b[1])),
    "cnn": (lambda: cnn.SmallCNN(cnn.CNNConfig(width=4, image_size=8)),
            lambda: cnn.synthetic_batch(cnn.CNNConfig(width=4, image_size=8), 4,
                                        torch.Generator().manual_seed(0)),
            lambda m, b: F.cross_entropy(m(b[0]), b[1])),
}


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("partition", [keep_everything, recompute_everything])
def test_forced_plans_match_eager(model_name, partition):
    make, batch, loss = MODELS[model_name]
    torch.manual_seed(0)
    model = make()
    graphs: dict[str, fx.GraphModule] = {}
    compiled = torch.compile(twin(model), backend=fx_backend(partition, graphs))
    assert_step_matches(model, compiled, loss, batch())
    bwd = graphs["bwd"]
    bwd.graph.lint()
    tagged = [n for n in bwd.graph.nodes if inserted_by(n) is not None]
    if partition is recompute_everything:
        assert tagged and all(inserted_by(n).pass_name == "recompute" for n in tagged)
    else:
        assert not tagged


def test_recomputation_sits_right_before_first_use():
    torch.manual_seed(0)
    model = MODELS["gpt"][0]()
    graphs: dict[str, fx.GraphModule] = {}
    compiled = torch.compile(twin(model), backend=fx_backend(recompute_everything, graphs))
    MODELS["gpt"][2](compiled, MODELS["gpt"][1]()).backward()
    nodes = list(graphs["bwd"].graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    for node in nodes:
        if inserted_by(node) is None:
            continue
        first_use = min(position[u] for u in node.users)
        # Between a recomputed node and its first use lie only other recomputations it feeds.
        between = nodes[position[node] + 1:first_use]
        assert all(inserted_by(n) is not None for n in between), node.name


def test_dropout_mask_is_never_recomputed():
    cfg = gpt.GPTConfig(dropout=0.3, n_layer=1)

    def recompute_the_random_op(joint, joint_inputs, **kwargs):
        kwargs.pop("compiler", None)
        nodes = forward_candidates(joint, kwargs["num_fwd_outputs"])
        with pytest.raises(PlanApplyError, match="random"):
            apply_plan(joint, test_plan([], [n.name for n in nodes]), **kwargs)
        return recompute_everything(joint, joint_inputs, **kwargs)

    torch.manual_seed(0)
    model = gpt.GPT(cfg)
    batch = gpt.synthetic_batch(cfg, 2, torch.Generator().manual_seed(0))
    reference = torch.compile(twin(model), backend=fx_backend(keep_everything))
    ours = torch.compile(twin(model), backend=fx_backend(recompute_the_random_op))
    # Same seed, same random draws in forward; backward must reuse the forward's masks.
    assert_step_matches(reference, ours, lambda m, b: m(*b), batch, seed=3, rtol=1e-5, atol=1e-6)


def test_unknown_tensor_in_plan_is_refused():
    def partition(joint, joint_inputs, **kwargs):
        with pytest.raises(PlanApplyError, match="does not have"):
            apply_plan(joint, test_plan(["no_such_node"], []), **kwargs)
        return keep_everything(joint, joint_inputs, **kwargs)

    model = torch.nn.Linear(3, 2)
    torch.compile(model, backend=fx_backend(partition))(torch.randn(4, 3)).sum().backward()
