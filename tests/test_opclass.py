"""The one op classification: what may run again in backward, from torch's tags and schemas."""

from __future__ import annotations

import pytest
import torch
import torch._inductor.inductor_prims  # noqa: F401 - registers prims.inductor_*
import torch.fx as fx

from fxopt.opclass import Effect, classify

aten, prims = torch.ops.aten, torch.ops.prims


def node(target, *args, **kwargs) -> fx.Node:
    graph = fx.Graph()
    x = graph.placeholder("x")
    return graph.call_function(target, tuple(x if a is ... else a for a in args), kwargs)


SDPA = [aten._scaled_dot_product_flash_attention_for_cpu.default,
        aten._scaled_dot_product_flash_attention.default,
        aten._scaled_dot_product_efficient_attention.default,
        aten._scaled_dot_product_cudnn_attention.default,
        aten._scaled_dot_product_attention_math.default,
        aten._scaled_dot_product_fused_attention_overrideable.default]


def sdpa_call(op, dropout_p: float) -> fx.Node:
    names = [a.name for a in op._schema.arguments]
    args = [..., ..., ...] + [None] * (names.index("dropout_p") - 3) + [dropout_p]
    if op is aten._scaled_dot_product_efficient_attention.default:
        args[4] = True  # compute_log_sumexp is a bool
    return node(op, *args)


@pytest.mark.parametrize("op", SDPA, ids=lambda op: op.__name__)
def test_attention_without_dropout_is_deterministic(op):
    assert classify(sdpa_call(op, 0.0)).recomputable
    assert classify(sdpa_call(op, 0.1)).effect is Effect.RANDOM
    assert classify(node(op, ..., ..., ..., dropout_p=0.0)).recomputable


def test_dropout_is_random_only_when_it_drops():
    assert classify(node(aten.native_dropout.default, ..., 0.1, True)).effect is Effect.RANDOM
    assert classify(node(aten.native_dropout.default, ..., 0.0, True)).recomputable
    assert classify(node(aten.native_dropout.default, ..., 0.5, False)).recomputable
    assert classify(node(aten.bernoulli.p, ..., 0.0)).effect is Effect.RANDOM


def test_inductor_random_replays_from_its_seed():
    assert classify(node(prims.inductor_seeds.default, 2, torch.device("cpu"))).effect \
        is Effect.RANDOM
    assert classify(node(prims.inductor_lookup_seed.default, ..., 0)).recomputable
    assert classify(node(prims.inductor_random.default, [4], ..., "rand")).recomputable


def test_mutation_collectives_and_effects_never_run_twice():
    assert classify(node(aten.add_.Tensor, ..., ...)).effect is Effect.MUTATING
    assert classify(node(torch.ops._c10d_functional.wait_tensor.default, ...)).effect \
        is Effect.COLLECTIVE
    assert classify(node(aten._assert_async.msg, ..., "x")).effect is Effect.EFFECTFUL
    assert classify(node(aten.mm.default, ..., ...)).recomputable
    assert classify(node(aten.mm.default, ..., ...)).refusal is None
    assert "random" in classify(sdpa_call(SDPA[0], 0.2)).refusal
