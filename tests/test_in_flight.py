"""Runs in flight: blocks compiled one by one share one graph, whose saved tensors are then held
once per block until the backward (NOTE [Copies in flight])."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

import fxopt


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
    backend = fxopt.backend(budget=0.7)
    with caplog.at_level(logging.WARNING, logger="fxopt"):
        blocks, grads = _train(backend, 3)
    assert "had 4 runs in flight before their backward" in caplog.text
    step = backend.step_report()
    assert step.copies == (4,) and not step.fallbacks
    (report,) = step.graphs
    # the plan holds four copies of what it keeps within the step's budget
    assert report.plan_use.held_bytes < report.keep_use.held_bytes
    assert step.peak_bytes is not None and step.baseline_peak_bytes is not None
    assert step.peak_bytes <= 0.7 * step.baseline_peak_bytes * 1.05
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
    assert explained.peak_bytes == compiled_step.peak_bytes
