"""Memory outside the compiled graphs, seen by explain's fake step (NOTE [Memory outside the
graphs] in fxopt/outside.py) and counted run by run (NOTE [The step's runs])."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

import fxopt
from fxopt.step_runs import GraphUse, Outside, couplings, own_peak, step_peak

MiB = 2**20
BATCH, WIDTH = 1024, 256  # one activation: 1 MiB


def test_outside_memory_by_hand():
    a, b = GraphUse(10, 12, 14, 11, 3), GraphUse(5, 8, 6, 7, 2)
    out = Outside(forward=(0, 4), after=(6, 1), backward=(2, 9), before=3, end=40)
    peak = step_peak([a, b], outside=out)
    # a: forward 12, boundary 11 + 6 after it, backward 14 + b's grads 2 + 2
    # b: beside a's 10, forward 1 (a's output) + 4 + 8, boundary 7 + 1, backward 6 + 9
    # before: 3; after the last backward: 40 beside every gradient (5)
    assert peak == max(max(12, 11 + 6, 14 + 2 + 2), 10 + max(1 + 4 + 8, 7 + 1, 6 + 9), 3,
                       40 + 5)
    assert step_peak([a, b]) < step_peak([a, b], outside=dataclasses.replace(out, end=0))
    ca, cb = couplings([a, b], outside=out)
    # the outside memory joins the inputs on the forward and the gradients on the backward
    assert (ca.inputs, cb.inputs) == (0, 1 + 4)
    assert (ca.grads_after, cb.grads_after) == (2 + 2, 9)
    # on top of a's boundary (its saved bytes in it): b's run, 15; on b's: 1 after it
    assert (ca.later_need, cb.later_need) == (15, 1)
    # each bound holds its runs (a's charges b's run with its whole boundary: safe by a's
    # 1-byte output)
    assert ca.held_before + own_peak(a, ca) == 11 + 15 == peak_inner(a, b, out) + 1
    assert cb.held_before + own_peak(b, cb) == 10 + max(8 + 5, 6 + 9, 7 + 1) == 25


def peak_inner(a: GraphUse, b: GraphUse, out: Outside) -> int:
    return step_peak([a, b], outside=dataclasses.replace(out, before=0, end=0))


@torch.compiler.disable
def _eager_exp(h: torch.Tensor) -> torch.Tensor:
    # exp keeps its result for its backward: 1 MiB that no compiled graph plans, alive from
    # here to the backward; the product is the next graph's input
    return h.exp() * 0.5


class _EagerBetween(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        block = lambda: nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(),  # noqa: E731
                                      nn.Linear(WIDTH, WIDTH), nn.Tanh())
        self.a, self.b = block(), block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(_eager_exp(self.a(x))).square()


def _explain(**options) -> fxopt.StepReport:
    torch.manual_seed(0)
    return fxopt.explain(_EagerBetween(), torch.randn(BATCH, WIDTH), **options)


def test_eager_memory_between_graphs_is_counted():
    step = _explain()
    assert len(step.graphs) == 2 and step.order == (0, 1)
    out = step.outside
    assert out is not None
    # during the second graph's forward: exp's kept result and the product (its input, which
    # the model's inputs do not count: they are the first graph's output)
    assert out.forward[1] >= 2 * MiB
    # after the second forward exp's result is still held, to its backward
    assert out.after[1] >= MiB
    uses = [r.plan_use for r in step.graphs]
    without = step_peak(uses, step.order)
    assert step.peak_bytes == step_peak(uses, step.order, out) >= without + MiB


def test_outside_memory_does_not_change_with_the_plan():
    """The saved tensors are counted by the plan, the eager memory by the fake step: a plan
    that saves other tensors leaves the outside memory as it was (NOTE [Memory outside the
    graphs]), and a fraction is planned as the backend plans it, without it."""
    full, half = _explain(), _explain(budget=0.5)
    assert full.outside is not None and half.outside is not None
    assert (full.outside.forward, full.outside.after) == (half.outside.forward,
                                                          half.outside.after)
    assert half.peak_bytes < full.peak_bytes


def test_a_size_is_planned_with_the_outside_memory():
    """Under a size the plans make room for the eager memory: the step's prediction, with it,
    holds the size."""
    reachable = _explain(budget=0.5).peak_bytes  # planned without it, predicted with it
    size = int(reachable * 1.02)
    assert size < _explain().baseline_peak_bytes
    step = _explain(budget=size)
    assert step.outside is not None
    assert step.peak_bytes <= size * 1.01


def test_a_cpu_loss_holds_its_elementwise_buffer():
    """NOTE [CPU losses keep their elementwise buffer]: CPU mse_loss returns its mean on a
    storage the size of its input, which the loss holds to the end of the step; the fake
    kernel's 4 bytes are counted as that buffer on a CPU step, not on a CUDA one."""
    x, y = torch.randn(BATCH, WIDTH), torch.randn(BATCH, WIDTH)
    real = nn.functional.mse_loss(x, y)
    assert real.untyped_storage().nbytes() == x.nbytes  # what the rule stands for
    model = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh())
    mse = nn.functional.mse_loss
    cpu = fxopt.explain(model, x, loss_fn=mse, targets=(y,))
    assert cpu.outside is not None and cpu.outside.end >= x.nbytes
    cuda = fxopt.explain(model, x, loss_fn=mse, targets=(y,), device="h100")
    assert cuda.outside is not None and cuda.outside.end < x.nbytes
