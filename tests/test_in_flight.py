"""Runs in flight: blocks compiled one by one share one graph, whose saved tensors are then held
once per block until the backward (NOTE [Copies in flight])."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import torch.nn as nn

import fxopt
from fxopt.step_runs import step_peak


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(64, 256), nn.Linear(256, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.tanh(self.up(x)))


def _train(backend: fxopt.FxoptBackend, steps: int) -> tuple[nn.ModuleList, list[torch.Tensor]]:
    torch.manual_seed(0)
    blocks = nn.ModuleList(Block() for _ in range(4))
    for block in blocks:
        block.compile(backend=backend)
    x = torch.randn(128, 64)
    for _ in range(steps):
        blocks.zero_grad(set_to_none=True)
        h = x
        for block in blocks:
            h = block(h)
        h.pow(2).mean().backward()
    return blocks, [p.grad for p in blocks.parameters()]


def test_blocks_sharing_a_graph_are_counted_and_replanned(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    torch._dynamo.reset()
    # The first block's backward runs beside the other three blocks' parameter gradients,
    # whatever the plan: 0.89 of keeping everything here; 0.9 asks for less saved
    backend = fxopt.backend(budget=0.9)
    with caplog.at_level(logging.WARNING, logger="fxopt"):
        blocks, grads = _train(backend, 3)
    assert "had 4 runs in flight before their backward" in caplog.text
    step = backend.step_report()
    assert step.copies == (4,) and not step.fallbacks
    (report,) = step.graphs
    # the plan holds four copies of what it keeps within the step's budget
    assert report.plan_use.held_bytes < report.keep_use.held_bytes
    assert step.peak_bytes is not None and step.baseline_peak_bytes is not None
    assert step.peak_bytes <= 0.9 * step.baseline_peak_bytes * 1.05
    # and trains as eager does
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = nn.ModuleList(Block() for _ in range(4))
    h = torch.randn(128, 64)
    for block in eager:
        h = block(h)
    h.pow(2).mean().backward()
    for g, p in zip(grads, eager.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)


def test_declared_runs_in_flight_plan_the_first_step() -> None:
    torch._dynamo.reset()
    backend = fxopt.backend(budget=0.5, in_flight=4)
    _train(backend, 1)
    step = backend.step_report()
    assert step.copies == (4,) and len(step.graphs) == 1
    assert all(not getattr(r, "recompiles", 0) for r in step.graphs)


class Blocks(nn.Module):
    """Four blocks whose frame Dynamo compiles once: a graph break after each block."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
            torch._dynamo.graph_break()
        return x


def test_explain_counts_the_runs_its_step_holds_as_the_backend_does() -> None:
    torch.manual_seed(0)
    model, x = Blocks(), torch.randn(128, 64)
    explained = fxopt.explain(model, x, loss_fn=lambda o: o.pow(2).mean(), budget=0.7)
    backend = fxopt.backend(budget=0.7)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        compiled(x).pow(2).mean().backward()
    compiled_step = backend.step_report()
    assert explained.copies == compiled_step.copies
    assert 4 in explained.copies, "the blocks' graph runs four times before its backward"
    # the same plans; explain also counts the eager loss's memory, which the backend sees only
    # once it measures a step (NOTE [Memory outside the graphs] in fxopt/outside.py)
    uses = [dataclasses.replace(r.plan_use, copies=c)
            for r, c in zip(explained.graphs, explained.copies)]
    assert step_peak(uses, explained.order) == compiled_step.peak_bytes
    assert explained.peak_bytes > compiled_step.peak_bytes


class InOut(nn.Module):
    """One function (`mlp`) called twice per step with other shapes, as neuraloperator's FNO
    runs its lifting and projection: two graphs of one frame, with a block between."""

    def __init__(self) -> None:
        super().__init__()
        self.lift, self.block, self.proj = nn.Linear(8, 64), Block(), nn.Linear(64, 8)

    @staticmethod
    def mlp(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        h = layer(x)
        torch._dynamo.graph_break()  # Dynamo compiles this function's frames on their own
        return torch.tanh(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.proj, self.block(self.mlp(self.lift, x)))


def test_one_function_with_other_shapes_is_two_graphs_of_the_step() -> None:
    """NOTE [Graphs of one frame] and NOTE [The step's runs]: the backend and explain see the
    projection's graphs beside the lifting's, in the order the step runs them."""
    torch.manual_seed(0)
    model, x = InOut(), torch.randn(128, 8)
    explained = fxopt.explain(model, x, loss_fn=lambda o: o.pow(2).mean(), budget=0.7)
    torch._dynamo.reset()
    backend = fxopt.backend(budget=0.7)
    compiled = torch.compile(model, backend=backend)
    for _ in range(3):
        model.zero_grad(set_to_none=True)
        compiled(x).pow(2).mean().backward()
    step = backend.step_report()
    keys = [r.step_key for r in step.graphs]
    assert any(k.endswith("/1") and k[:-2] in keys for k in keys), keys
    # every run counted once, in the order the step ran them: the projection's first graph
    # after the block's; Dynamo's second graph of the function's tail (dynamic sizes) runs
    # for both calls from the second step on, and replaced the first in the step
    assert step.order is not None and len(step.order) == sum(step.copies) == 5
    head, tail, block, head2, tail2 = (keys[i] for i in step.order)
    assert head2 == f"{head}/1" and tail == tail2 and block not in (head, tail)
    explained_keys = [r.step_key for r in explained.graphs]
    assert any(k.endswith("/1") for k in explained_keys), explained_keys
    assert explained.order == tuple(range(len(explained_keys)))
    torch.manual_seed(0)
    eager = InOut()
    eager(x).pow(2).mean().backward()
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
