"""Helpers to compare a compiled training step with eager (loss and every gradient)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn

LossFn = Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]


def step(model: nn.Module, loss_fn: LossFn, batch: tuple[torch.Tensor, ...], seed: int
         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward + backward from grads set to None; returns the loss and the gradients."""
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(seed)
    loss = loss_fn(model, batch)
    loss.backward()
    grads = {name.replace("_orig_mod.", ""): p.grad.detach().clone()
             for name, p in model.named_parameters()
             if p.grad is not None}
    return loss.detach(), grads


def assert_step_matches(eager: nn.Module, compiled: nn.Module, loss_fn: LossFn,
                        batch: tuple[torch.Tensor, ...], seed: int = 0,
                        rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """The compiled module (built over a copy of `eager`'s weights) matches eager exactly."""
    loss_e, grads_e = step(eager, loss_fn, batch, seed)
    loss_c, grads_c = step(compiled, loss_fn, batch, seed)
    torch.testing.assert_close(loss_c, loss_e, rtol=rtol, atol=atol)
    assert grads_c.keys() == grads_e.keys(), "compiled step produced other gradients"
    assert len(grads_e) > 0
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[name], g, rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


def twin(model: nn.Module) -> nn.Module:
    """An independent copy with the same weights and buffers."""
    return copy.deepcopy(model)
